"""CLI command that turns a round's checkpoint into a deployable file: `sslall export` (ONNX or
TorchScript, calibrated probabilities out; see `sslall.model._export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sslall.cli._console import (
    JsonFlag,
    WorkspaceOption,
    cli_errors,
    open_workspace,
    print_json,
    say,
    warn,
)
from sslall.errors import UsageError

FORMATS = ("onnx", "torchscript")  # `sslall.model._export.EXPORT_FORMATS`; that module imports torch


def export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="onnx (onnxruntime, Triton, ...) or "
                   "torchscript (torch.jit.load).")],
    out: Annotated[Path, typer.Option("--out", help="The file to write (e.g. model.onnx).")],
    round_no: Annotated[int | None, typer.Option("--round", help="Export this round's model "
                        "(default: the model in use: promoted, else best holdout macro-F1, "
                        "else latest).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Export this round folder or "
                          "model.safetensors instead.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] =
        False,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False,
) -> None:
    """Write a model that runs without sslall: input uint8 [N, S, S, 3] RGB images (resized and
    cropped as README "Deploying a model" says), output calibrated probabilities; classes,
    temperature, image size, normalisation and preprocessing in its metadata.

    \b
    Example:
      sslall export --format onnx --out ward7.onnx
      sslall export --round 3 --format torchscript --out ward7-r3.pt
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if round_no is not None and checkpoint is not None:
        raise UsageError("give --round or --checkpoint, not both")
    if out.exists() and not out.is_dir() and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if checkpoint is None:
        from sslall.model._choice import chosen_checkpoint, round_checkpoint

        ws, _ = open_workspace(workspace)
        checkpoint = chosen_checkpoint(ws) if round_no is None else round_checkpoint(ws, round_no)
    from sslall.model._export import export_checkpoint

    result = export_checkpoint(checkpoint, fmt, out, force=force)
    data = result.as_dict()
    if json_out:
        print_json(data)
        return
    say(f"wrote {result.path} ({fmt}, {result.bytes / 1e6:.1f} MB) from round {data['round']}: "
        f"uint8 [N, {result.metadata['image_size']}, {result.metadata['image_size']}, 3] RGB -> "
        f"probabilities of {', '.join(data['classes'])}")
    if data["preprocess"] != "none":
        warn(f"this model was trained with preprocessing ({data['preprocess']}); the exported "
             "graph does not apply it: apply it to each image before resizing (the spec is in "
             "the file's metadata, `preprocess`)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("export")(cli_errors(export_cmd))
