"""``slimmer verify MODEL EXPORTED.onnx``: compare an ONNX graph with the model it was exported from."""

from __future__ import annotations

from pathlib import Path

import typer

from slimmer.cli.render import err_console, run_guarded, write_json


def verify_command(
    model: Path = typer.Argument(..., help="the checkpoint the graph was exported from"),
    exported: Path = typer.Argument(..., help="the ONNX file"),
    arch: str | None = typer.Option(None, "--arch", help="architecture for a state_dict"),
    input_shape: str | None = typer.Option(None, "--input-shape", help="e.g. 1,3,224,224"),
    atol: float = typer.Option(1e-4, "--atol"),
    rtol: float = typer.Option(1e-3, "--rtol"),
    seed: int = typer.Option(0, "--seed"),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="allow formats that run code when loaded"
    ),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Run EXPORTED in onnxruntime and compare every output with MODEL (exit 5 when they differ)."""

    def go():
        from slimmer.inspection import verify_exported

        return verify_exported(
            model,
            exported,
            arch=arch,
            input_shape=input_shape,
            atol=atol,
            rtol=rtol,
            seed=seed,
            trust_remote_code=trust_remote_code,
        )

    result = run_guarded(go, debug=debug, json_mode=json_output)
    if json_output:
        write_json(result.to_dict())
    verdict = "[green]passed[/green]" if result.passed else "[bold red]FAILED[/bold red]"
    err_console.print(
        f"verification {verdict}: max abs diff {result.max_abs_diff:.3g}, max rel diff {result.max_rel_diff:.3g} "
        f"(atol {atol:g}, rtol {rtol:g}, {result.provider})"
    )
    if not result.passed:
        err_console.print(result.failure_summary(), markup=False)
        for note in result.warnings:
            err_console.print(f"hint: {note}", markup=False)
    raise typer.Exit(0 if result.passed else 5)
