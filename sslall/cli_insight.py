"""CLI commands that show what the model sees: explain (Grad-CAM), report (HTML), compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sslall.console import JsonFlag, WorkspaceOption, cli_errors, console, open_workspace, print_json, say
from sslall.errors import InputError

Checkpoint = Annotated[Path | None, typer.Option(help="A round folder or model.safetensors "
                       "(default: the latest round).")]


def resolve_checkpoint(checkpoint: Path | None, workspace: Path | None) -> Path:
    """The checkpoint asked for, else the workspace's latest round (as `sslall predict`)."""
    if checkpoint is not None:
        return checkpoint
    from sslall.inference import latest_checkpoint

    ws, _ = open_workspace(workspace)
    return latest_checkpoint(ws)


def explain_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    out: Annotated[Path, typer.Option(help="Folder for the overlays (<stem>.cam.png).")],
    checkpoint: Checkpoint = None,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False,
) -> None:
    """Grad-CAM overlays: where the model looked, with its class and calibrated confidence.

    \b
    Example:
      sslall explain cell1.png cell2.png --out cams/
    """
    from sslall.explain import Explainer

    explainer = Explainer(resolve_checkpoint(checkpoint, workspace))
    done = explainer.explain(images, out)
    if json_out:
        print_json([e.as_dict() for e in done])
    else:
        table = Table()
        for col in ("image", "class", "confidence", "overlay"):
            table.add_column(col)
        for e in done:
            table.add_row(e.path, e.label or "error", f"{e.confidence:.3f}" if e.out else
                          str(e.error), str(e.out or ""))
        console.print(table)
    if not any(e.out for e in done):
        raise InputError("no image could be read; nothing was written")
    say(f"wrote {sum(1 for e in done if e.out)} overlay(s) to {out}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("explain")(cli_errors(explain_cmd))
