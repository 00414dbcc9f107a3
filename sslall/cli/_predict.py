"""CLI commands that use a saved round: predict (images, folders, manifests) and evaluate (a
class-per-folder set, with the images it shares with the workspace)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from sslall.cli._console import (
    JsonFlag,
    OutOption,
    WorkspaceOption,
    console,
    open_workspace,
    print_json,
    warn,
    write_output,
)
from sslall.config import Config
from sslall.errors import UsageError
from sslall.workspace import Workspace

RoundOption = Annotated[int | None, typer.Option("--round", help="Use this round's model "
                        "(default: the promoted round, else the best by holdout macro-F1).")]


def predict_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files, folders (every image under "
                     "them, sorted) or CSV manifests (.csv, a path column as `sslall add` reads).")],
    checkpoint: Annotated[Path | None, typer.Option(help="A round folder or model.safetensors "
                          "(default: the promoted round, else the best by holdout macro-F1).")] = None,
    round_no: RoundOption = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV (to stdout, or to the --out "
                       "file).")] = False,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Classify images with a checkpoint: class, confidence and per-class probabilities, and
    an out-of-distribution score: a cell farther from the training cells than the round's
    threshold (`ood.quantile` of the holdout's scores) gets the verdict "unknown".

    \b
    Example:
      sslall predict cell1.png cell2.png --json
      sslall predict ./new-cells manifest.csv --csv
      sslall predict ./new-cells --out predictions.csv
    """
    if json_out and csv_out:
        raise UsageError("give --json or --csv, not both")
    csv_out = csv_out or (out is not None and not json_out)  # `--out x.csv`: see JsonFlag
    checkpoint, _, config = _checkpoint_to_use(workspace, checkpoint, round_no)
    from sslall.model._inference import Predictor

    predictor = Predictor(checkpoint, ood_quantile=config.ood.quantile if config else None)
    preds = predictor.predict(_predict_inputs(paths, predictor.classes))
    rows = []
    for p in preds:
        if p.probs is None:
            rows.append({"path": p.path, "error": p.error})
            continue
        k = int(p.probs.argmax())
        rows.append({"path": p.path, "verdict": "unknown" if p.ood else predictor.classes[k],
                     "class": predictor.classes[k], "confidence": round(float(p.probs[k]), 5),
                     "ood": p.ood, "ood_score": None if p.ood_score is None else round(p.ood_score, 5),
                     "probabilities": {c: round(float(v), 5)
                                       for c, v in zip(predictor.classes, p.probs, strict=True)}})
    if json_out:
        print_json(rows)
    elif csv_out:
        _print_csv(rows, predictor.classes)
    else:
        _print_table(rows, predictor)
    if all("error" in r for r in rows):
        raise UsageError("no image could be read")


def _print_csv(rows: list[dict], classes: list[str]) -> None:
    import csv
    import io

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "class", "confidence", *classes, "error", "verdict", "ood",
                     "ood_score"])
    for r in rows:
        probs = r.get("probabilities", {})
        ood = "" if r.get("ood") is None else str(r["ood"]).lower()
        writer.writerow([r["path"], r.get("class", ""), r.get("confidence", ""),
                         *[probs.get(c, "") for c in classes], r.get("error", ""),
                         r.get("verdict", ""), ood, _blank(r.get("ood_score"))])
    write_output(text.getvalue())


def _print_table(rows: list[dict], predictor) -> None:
    """The table: the class, or for an OOD cell "unknown" with the model's guess after it, the
    confidence, the OOD score and one column per class."""
    table = Table()
    for col in ("path", "class", "confidence", "ood"):
        table.add_column(col)
    for c in predictor.classes:
        table.add_column(c, justify="right")
    for r in rows:
        probs = r.get("probabilities", {})
        verdict = r.get("verdict", "error")
        if r.get("ood"):
            verdict = Text.assemble("unknown ", (f"(guess {r['class']})", "dim"))
        table.add_row(r["path"], verdict, str(r.get("confidence", r.get("error"))),
                      "-" if r.get("ood_score") is None else str(r["ood_score"]),
                      *[str(probs[c]) if c in probs else "" for c in predictor.classes])
    console.print(table)
    if predictor.ood is None:
        console.print("no OOD calibration in this round's folder (a round from an older sslall): "
                      "out-of-distribution cells are not flagged")
    elif any(r.get("ood") for r in rows):
        console.print(f"unknown: farther from the training cells than {predictor.ood.quantile:.0%} "
                      f"of the holdout (OOD score > {predictor.ood.threshold:.4f}); the guess is "
                      "the model's class, not to be trusted")


def _blank(x: object) -> object:
    return "" if x is None else x


def _predict_inputs(paths: list[Path], classes: list[str]) -> list[str]:
    """The images `predict` was given: a folder stands for every image under it (sorted), a
    `.csv` file for the paths its manifest lists; any other path is an image as given."""
    from sslall.store._sources import list_images

    images: list[str] = []
    warnings: list[str] = []
    for p in paths:
        if p.is_dir() or (p.suffix.lower() == ".csv" and p.is_file()):
            images.extend(list_images(p, classes, warnings))
        else:
            images.append(str(p))
    for line in warnings:
        warn(line)
    return images


def evaluate_cmd(
    folder: Annotated[Path, typer.Argument(help="A class-per-folder image set.")],
    checkpoint: Annotated[Path | None, typer.Option(help="A round folder (default: the promoted round, "
                          "else the best by holdout macro-F1).")]
    = None,
    round_no: RoundOption = None,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Score a checkpoint on a class-per-folder set: accuracy, macro-F1, per class, ECE, and how
    many of its images are already in the workspace's pools (they inflate the score).

    \b
    Example:
      sslall evaluate ./test-cells --json
    """
    checkpoint, ws, config = _checkpoint_to_use(workspace, checkpoint, round_no)
    from sslall.model._inference import Predictor, evaluate_folder

    predictor = Predictor(checkpoint, ood_quantile=config.ood.quantile if config else None)
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
    console.print(_ood_line(metrics["ood"], metrics["images"]))
    console.print(_overlap_line(metrics["in_workspace"], metrics["images"]))


def _checkpoint_to_use(workspace: Path | None, checkpoint: Path | None, round_no: int | None
                       ) -> tuple[Path, Workspace | None, Config | None]:
    """(the checkpoint predict/evaluate load, the workspace and its config or None, None without
    one), found and checked before torch is imported: a wrong option, workspace, round or
    checkpoint path is answered at once, not after seconds of loading the model."""
    from sslall.model._choice import chosen_checkpoint, round_checkpoint
    from sslall.model._paths import check_checkpoint_files

    if round_no is not None and checkpoint is not None:
        raise UsageError("give --round or --checkpoint, not both")
    ws, config = _evaluated_against(workspace, checkpoint, with_config=True)
    if checkpoint is None:
        checkpoint = chosen_checkpoint(ws) if round_no is None else round_checkpoint(ws, round_no)
    check_checkpoint_files(checkpoint)
    return checkpoint, ws, config


def _evaluated_against(option: Path | None, checkpoint: Path | None, *, with_config: bool = False):
    """The workspace `evaluate` reads its checkpoint from and compares the images with: found as
    for every command; with --checkpoint and no workspace found, None (nothing to compare).
    With `with_config`, (workspace, its config), (None, None) when none was found."""
    import os

    from sslall.errors import WorkspaceNotFound
    from sslall.workspace import ENV_WORKSPACE

    try:
        found = open_workspace(option)
    except WorkspaceNotFound:
        if checkpoint is None or option is not None or os.environ.get(ENV_WORKSPACE):
            raise
        found = (None, None)
    return found if with_config else found[0]


def _ood_line(ood: dict | None, images: int) -> str:
    if ood is None:
        return "no OOD calibration in this round's folder: out-of-distribution images not counted"
    kept = ood["kept"]
    without = ("every image was flagged" if kept is None else
               f"without them: accuracy {kept['accuracy']:.4f}  macro-F1 {kept['macro_f1']:.4f}  "
               f"ECE {kept['ece']:.4f}")
    return (f"{ood['flagged']} of the {images} images flagged out of distribution (OOD score > "
            f"{ood['threshold']:.4f}, quantile {ood['quantile']}); {without}")


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
