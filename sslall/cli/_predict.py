"""CLI commands that use a saved round: predict (images, folders, manifests) and evaluate (a
class-per-folder set, with the images it shares with the workspace)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sslall.cli._console import JsonFlag, WorkspaceOption, console, open_workspace, print_json
from sslall.errors import UsageError


def predict_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files, folders (every image under "
                     "them, sorted) or CSV manifests (.csv, a path column as `sslall add` reads).")],
    checkpoint: Annotated[Path | None, typer.Option(help="A round folder or model.safetensors "
                          "(default: the promoted round, else the best by holdout macro-F1).")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False,
) -> None:
    """Classify images with a checkpoint: class, confidence and per-class probabilities.

    \b
    Example:
      sslall predict cell1.png cell2.png --json
      sslall predict ./new-cells manifest.csv --csv
    """
    from sslall.model._choice import chosen_checkpoint
    from sslall.model._inference import Predictor

    if checkpoint is None:
        ws, _ = open_workspace(workspace)
        checkpoint = chosen_checkpoint(ws)
    predictor = Predictor(checkpoint)
    preds = predictor.predict(_predict_inputs(paths, predictor.classes))
    rows = []
    for p in preds:
        if p.probs is None:
            rows.append({"path": p.path, "error": p.error})
            continue
        k = int(p.probs.argmax())
        rows.append({"path": p.path, "class": predictor.classes[k],
                     "confidence": round(float(p.probs[k]), 5),
                     "probabilities": {c: round(float(v), 5)
                                       for c, v in zip(predictor.classes, p.probs, strict=True)}})
    if json_out:
        print_json(rows)
    elif csv_out:
        import csv
        import sys

        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "class", "confidence", *predictor.classes, "error"])
        for r in rows:
            probs = r.get("probabilities", {})
            writer.writerow([r["path"], r.get("class", ""), r.get("confidence", ""),
                             *[probs.get(c, "") for c in predictor.classes], r.get("error", "")])
    else:
        table = Table()
        for col in ("path", "class", "confidence"):
            table.add_column(col)
        for c in predictor.classes:
            table.add_column(c, justify="right")
        for r in rows:
            probs = r.get("probabilities", {})
            table.add_row(r["path"], r.get("class", "error"),
                          str(r.get("confidence", r.get("error"))),
                          *[str(probs[c]) if c in probs else "" for c in predictor.classes])
        console.print(table)
    if all("error" in r for r in rows):
        raise UsageError("no image could be read")


def _predict_inputs(paths: list[Path], classes: list[str]) -> list[str]:
    """The images `predict` was given: a folder stands for every image under it (sorted), a
    `.csv` file for the paths its manifest lists; any other path is an image as given."""
    from sslall.store._sources import list_images

    images: list[str] = []
    for p in paths:
        if p.is_dir() or (p.suffix.lower() == ".csv" and p.is_file()):
            images.extend(list_images(p, classes))
        else:
            images.append(str(p))
    return images


def evaluate_cmd(
    folder: Annotated[Path, typer.Argument(help="A class-per-folder image set.")],
    checkpoint: Annotated[Path | None, typer.Option(help="A round folder (default: the promoted round, "
                          "else the best by holdout macro-F1).")]
    = None,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False,
) -> None:
    """Score a checkpoint on a class-per-folder set: accuracy, macro-F1, per class, ECE, and how
    many of its images are already in the workspace's pools (they inflate the score).

    \b
    Example:
      sslall evaluate ./test-cells --json
    """
    from sslall.model._choice import chosen_checkpoint
    from sslall.model._inference import Predictor, evaluate_folder

    ws = _evaluated_against(workspace, checkpoint)
    if checkpoint is None:
        checkpoint = chosen_checkpoint(ws)
    predictor = Predictor(checkpoint)
    metrics = evaluate_folder(predictor, folder, ws)
    if json_out:
        print_json(metrics)
        return
    table = Table(title=f"{folder} ({metrics['images']} images)")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="right")
    for c, m in metrics["per_class"].items():
        table.add_row(c, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]),
                      str(m["support"]))
    console.print(table)
    console.print(f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
                  f"ECE {metrics['ece']:.4f}")
    console.print(_overlap_line(metrics["in_workspace"], metrics["images"]))


def _evaluated_against(option: Path | None, checkpoint: Path | None):
    """The workspace `evaluate` reads its checkpoint from and compares the images with: found as
    for every command; with --checkpoint and no workspace found, None (nothing to compare)."""
    import os

    from sslall.errors import WorkspaceNotFound
    from sslall.workspace import ENV_WORKSPACE

    try:
        return open_workspace(option)[0]
    except WorkspaceNotFound:
        if checkpoint is None or option is not None or os.environ.get(ENV_WORKSPACE):
            raise
        return None


def _overlap_line(overlap: dict | None, images: int) -> str:
    if overlap is None:
        return "no workspace found: not checked whether these images are in its pools"
    if not overlap["images"]:
        return f"none of the {images} images is in the workspace's pools"
    pools = ", ".join(f"{p} {n}" for p, n in overlap["pools"].items() if n)
    verb = "is" if overlap["images"] == 1 else "are"
    return (f"{overlap['images']} of the {images} images {verb} already in the workspace's pools "
            f"({pools}): the score above is inflated by them")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
