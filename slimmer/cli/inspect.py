"""``slimmer inspect MODEL``: parameters, MACs and the prunable layers of a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from slimmer.cli.render import err_console, run_guarded, stage_printer, write_json


def inspect_command(
    model: Path = typer.Argument(..., help="checkpoint to inspect"),
    arch: str | None = typer.Option(None, "--arch", help="architecture for a state_dict"),
    input_shape: str | None = typer.Option(None, "--input-shape", help="one float input, e.g. 1,3,224,224"),
    input_spec: list[str] | None = typer.Option(
        None, "--input", help="NAME:DTYPE[SHAPE][:LOW..HIGH|:CONSTANT], repeatable (as for compress)"
    ),
    example_inputs: Path | None = typer.Option(
        None, "--example-inputs", help=".npz or .safetensors of named arrays: the inputs of forward()"
    ),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="allow formats that run code when loaded"
    ),
    limit: bool = typer.Option(False, "--limit", help="predict the global magnitude pruning limit (needs --data)"),
    data: str | None = typer.Option(None, "--data", help="labelled training data for --limit"),
    lanczos_steps: int = typer.Option(100, "--lanczos-steps", help="--limit: Lanczos steps per probe"),
    probes: int = typer.Option(1, "--probes", help="--limit: random probe vectors"),
    batch_size: int = typer.Option(128, "--batch-size", help="--limit: batch size"),
    hessian_samples: int = typer.Option(128, "--hessian-samples", help="--limit: samples the Hessian is taken on"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Show parameters, MACs and the prunable Conv/Linear layers of MODEL; with --limit, how far global
    magnitude pruning can go (Zhang et al., NeurIPS 2024)."""

    def go() -> dict:
        from slimmer.inspection import inspect_model
        from slimmer.limit import LimitConfig

        cfg = (
            LimitConfig(
                lanczos_steps=lanczos_steps, probes=probes, batch_size=batch_size, hessian_samples=hessian_samples
            )
            if limit
            else None
        )
        with stage_printer(json_output) as say:
            return inspect_model(
                model,
                arch=arch,
                input_shape=input_shape,
                trust_remote_code=trust_remote_code,
                inputs=tuple(input_spec or ()),
                example_inputs=example_inputs,
                limit=cfg,
                data=data,
                progress=lambda message: say("limit", message),
            )

    info = run_guarded(go, debug=debug, json_mode=json_output)
    if json_output:
        write_json(info)
    table = Table(title=f"{info['input']['path']} ({info['input']['format']}, {info['input']['arch']})")
    table.add_column("layer")
    table.add_column("shape")
    table.add_column("weights", justify="right")
    table.add_column("zeros", justify="right")
    for layer in info["layers"]:
        table.add_row(
            layer["name"], "×".join(map(str, layer["shape"])), f"{layer['numel']:,}", f"{layer['sparsity']:.1%}"
        )
    err_console.print(table)
    groups = Table(title="channel groups")
    groups.add_column("group")
    groups.add_column("channels", justify="right")
    groups.add_column("layers")
    groups.add_column("prunable")
    for g in info["groups"]:
        layers = ", ".join(g["layers"][:4]) + (f" (+{len(g['layers']) - 4})" if len(g["layers"]) > 4 else "")
        groups.add_row(g["id"], str(g["channels"]), layers, "yes" if g["prunable"] else f"no: {g['blocked_by']}")
    err_console.print(groups)
    blocked = sum(not g["prunable"] for g in info["groups"])
    err_console.print(f"{len(info['groups']) - blocked} prunable channel groups, {blocked} blocked")
    given = info["input_shape"] or ", ".join(i["name"] for i in info["inputs"])
    err_console.print(f"parameters {info['params']:,}   MACs {info['macs']:,}   input {given}")
    if "limit" in info:
        render_limit(info["limit"])


def render_limit(res: dict) -> None:
    """The curve (ratio, R, gw) and the predicted limit, on stderr."""
    table = Table(title="pruning limit: gw(R(ρ)) against ρ (global magnitude pruning)")
    table.add_column("ratio ρ", justify="right")
    table.add_column("R = ‖w − w_ρ‖", justify="right")
    table.add_column("gw(R)", justify="right")
    table.add_column("")
    for p in res["curve"]:
        feasible = "feasible" if p["gw"] >= p["ratio"] else ""
        table.add_row(f"{p['ratio']:.2f}", f"{p['R']:.4g}", f"{p['gw']:.4f}", feasible)
    err_console.print(table)
    err_console.print(
        f"predicted limit: {res['limit']:.1%} of the {res['weights']:,} Conv/Linear weights can be pruned "
        f"(ε = {res['epsilon']:.4g}, mean loss {res['loss_mean']:.4g}, Tr(H)/D ≈ {res['trace_per_weight']:.4g})"
    )
