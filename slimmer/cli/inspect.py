"""``slimmer inspect MODEL``: parameters, MACs and the prunable layers of a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from slimmer.cli.render import err_console, run_guarded, write_json


def inspect_command(
    model: Path = typer.Argument(..., help="checkpoint to inspect"),
    arch: str | None = typer.Option(None, "--arch", help="architecture for a state_dict"),
    input_shape: str | None = typer.Option(None, "--input-shape", help="e.g. 1,3,224,224"),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="allow formats that run code when loaded"
    ),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Show parameters, MACs and the prunable Conv/Linear layers of MODEL."""

    def go() -> dict:
        from slimmer.inspection import inspect_model

        return inspect_model(model, arch=arch, input_shape=input_shape, trust_remote_code=trust_remote_code)

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
    err_console.print(f"parameters {info['params']:,}   MACs {info['macs']:,}   input {info['input_shape']}")
