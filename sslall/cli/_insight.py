"""CLI commands that show what the model sees: explain (Grad-CAM), report (HTML), compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sslall.cli._console import (
    JsonFlag,
    WorkspaceOption,
    cli_errors,
    console,
    open_workspace,
    print_json,
    say,
)
from sslall.errors import InputError, SslallError

Checkpoint = Annotated[Path | None, typer.Option(help="A round folder or model.safetensors "
                       "(default: the promoted round, else the best by holdout macro-F1).")]


def resolve_checkpoint(checkpoint: Path | None, workspace: Path | None) -> Path:
    """The checkpoint asked for, else the workspace's promoted or best round (as `sslall
    predict`)."""
    if checkpoint is not None:
        return checkpoint
    from sslall.model._choice import chosen_checkpoint

    ws, _ = open_workspace(workspace)
    return chosen_checkpoint(ws)


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
    from sslall.report._gradcam import Explainer

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


def compare_cmd(
    backbones: Annotated[str, typer.Option(help="Comma-separated backbone names (timm or "
                         "baseline-cnn).")] = "resnet18,efficientnet_b0,vgg16,densenet201,"
                         "vit_base_patch16_224",
    mode: Annotated[str, typer.Option(help="head (frozen backbone + MLP head), last-stage or "
                    "finetune.")] = "head",
    weights: Annotated[str, typer.Option(help="pretrained (ImageNet: offline for "
                       "tf_efficientnet_lite0, else the hub or its cache) or random.")] =
        "pretrained",
    data: Annotated[Path | None, typer.Option(help="A class-per-folder tree (default: the "
                    "workspace's labeled and holdout pools).")] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of each class in the test set.")] =
        0.3,
    val_fraction: Annotated[float, typer.Option(help="Share of the rest used for early stopping "
                            "and calibration.")] = 0.2,
    seed: Annotated[int | None, typer.Option(help="Split and training seed (default "
                    "train.seed).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (default train.epochs).")] =
        None,
    image_size: Annotated[int | None, typer.Option(help="Input side for every backbone "
                          "(default: each backbone's own).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for compare.json and compare.md.")] =
        Path("compare"),
    workspace: WorkspaceOption = None, json_out: JsonFlag = False,
) -> None:
    """Train several backbones on the same labelled images, split and seed; print and save
    accuracy, macro-F1, per-class F1, parameters and training/inference images per second.

    \b
    Example:
      sslall compare --backbones resnet18,tf_efficientnet_lite0 --mode head --data cells/
    """
    import json

    from sslall.cli._console import step_progress
    from sslall.config import Config, with_overrides
    from sslall.errors import ConfigError
    from sslall.experiments._compare import compare_backbones, labelled_from_folder, labelled_from_store
    from sslall.store._pools import PoolStore

    names = [b.strip() for b in backbones.split(",") if b.strip()]
    if not names:
        raise InputError("--backbones names no backbone")
    if mode not in ("head", "last-stage", "finetune"):
        raise ConfigError("--mode", f"got {mode!r}", "head, last-stage, finetune")
    if data is not None:
        labelled = labelled_from_folder(data)
        config = Config(classes=labelled.classes)
        try:
            ws, config = open_workspace(workspace)
            config = with_overrides(Config(classes=labelled.classes), train=vars(config.train),
                                    preprocess=vars(config.preprocess))
        except SslallError:
            pass  # no workspace: the defaults
    else:
        ws, config = open_workspace(workspace)
        with PoolStore(ws.db_path) as store:
            labelled = labelled_from_store(store, config.classes)
    config = with_overrides(config, train={"seed": seed, "epochs": epochs})
    with step_progress() as progress:
        result = compare_backbones(config, labelled, names, mode=mode, weights=weights,
                                   test_fraction=test_fraction, val_fraction=val_fraction,
                                   image_size=image_size, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    (out / "compare.md").write_text(result.markdown())
    if json_out:
        print_json(result.as_dict())
        return
    table = Table(title=f"{result.setup['train']} train / {result.setup['validation']} "
                  f"validation / {result.setup['test']} test images, {mode}, {weights} weights")
    for col in ("backbone", "accuracy", "macro-F1", *(f"F1 {c}" for c in labelled.classes),
                "params", "train img/s", "infer img/s"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for r in result.rows:
        if "error" in r:
            table.add_row(r["backbone"], "not run: " + r["error"])
            continue
        table.add_row(r["backbone"], f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                      *(f"{v:.3f}" for v in r["per_class_f1"].values()),
                      f"{r['parameters'] / 1e6:.2f} M", f"{r['train_images_per_s']:.1f}",
                      f"{r['inference_images_per_s']:.1f}")
    console.print(table)
    say(f"saved {out / 'compare.json'} and {out / 'compare.md'}")


def report_cmd(
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    tsne_max: Annotated[int, typer.Option(help="Draw the t-SNE map when the recorded embedding "
                        "sample has at most this many points (0 = never).")] = 20_000,
    per_class: Annotated[int, typer.Option(help="Thumbnails of the most and of the least "
                         "confident cells per class.")] = 6,
    workspace: WorkspaceOption = None,
) -> None:
    """One self-contained HTML report (images inline, no network): metrics and pools per round,
    confusion matrix, reliability before/after calibration, confidence per pool, PCA and t-SNE
    maps of the embeddings, class distribution, most/least confident cells, duplicates.

    \b
    Example:
      sslall report --out ward7.html
    """
    from sslall.report._html import write_report

    if tsne_max < 0 or per_class < 1:
        raise InputError("--tsne-max must be 0 or more and --per-class 1 or more")
    ws, config = open_workspace(workspace)
    write_report(ws, config, out, tsne_max=tsne_max, per_class=per_class,
                 progress=lambda step, _done, _total: say(f"report: {step}"))
    say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("explain")(cli_errors(explain_cmd))
    app.command("compare")(cli_errors(compare_cmd))
    app.command("report")(cli_errors(report_cmd))
