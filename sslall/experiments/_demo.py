"""`sslall demo`: the whole loop on synthetic cells, in a few minutes on a laptop CPU.

It draws a data set, makes a workspace with a few labeled cells, many unlabeled ones and a
holdout, then runs rounds. Between rounds a stand-in annotator (who knows the synthetic truth)
answers the review queue through the same CSV import a person would use.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sslall.cli._console import console, say, step_progress
from sslall.config import Config, parse_classes, with_overrides
from sslall.errors import UsageError
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace, create_workspace

MARKER = ".sslall-demo"


def _prepare(directory: Path, fresh: bool) -> None:
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise UsageError(f"{directory} exists and is not an sslall demo folder; "
                             "choose another folder")
        if not fresh:
            raise UsageError(f"{directory} already holds a demo; pass --fresh to start over")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by `sslall demo`; safe to delete\n")


def _manifests(cells: Path, samples: list, labeled_per_class: int, holdout_per_class: int
               ) -> dict[str, Path]:
    """Split the synthetic set into labeled / holdout / unlabeled manifests (by index)."""
    rows: dict[str, list[list[str]]] = {"labeled": [], "holdout": [], "unlabeled": []}
    seen: dict[str, int] = {}
    for s in samples:
        k = seen.get(s.label, 0)
        seen[s.label] = k + 1
        rel = s.path.relative_to(cells).as_posix()
        if k < labeled_per_class:
            rows["labeled"].append([rel, s.label])
        elif k < labeled_per_class + holdout_per_class:
            rows["holdout"].append([rel, s.label])
        else:
            rows["unlabeled"].append([rel])
    out = {}
    for pool, lines in rows.items():
        path = cells / f"{pool}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"] if pool != "unlabeled" else ["path"])
            writer.writerows(lines)
        out[pool] = path
    return out


def _answer_review(ws: Workspace, config: Config, directory: Path, round_no: int) -> int:
    """The stand-in annotator: label every review cell with its synthetic truth."""
    from sslall.store._review_csv import export_review, import_review

    queue = directory / f"review-round-{round_no}.csv"
    with PoolStore(ws.db_path) as store:
        if export_review(store, queue) == 0:
            return 0
        with queue.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            row["label"] = Path(row["path"]).parent.name
        with queue.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return import_review(store, queue, config.classes, actor="oracle").labeled


def demo_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder for the demo.")] = Path("sslall-demo"),
    rounds: Annotated[int, typer.Option(help="Rounds to run.")] = 3,
    fresh: Annotated[bool, typer.Option(help="Delete an earlier demo in DIRECTORY first.")] = False,
    classes: Annotated[str, typer.Option(help="Class names.")] = "L1,L2,L3",
    per_class: Annotated[int, typer.Option(help="Synthetic cells per class.")] = 200,
    backbone: Annotated[str, typer.Option(help="Backbone.")] = "tf_efficientnet_lite0",
    image_size: Annotated[int, typer.Option(help="Input side in pixels.")] = 128,
) -> None:
    """Synthesise cells, build a workspace (few labeled, many unlabeled, a holdout) and run
    self-training rounds, a stand-in annotator answering the review queue in between.

    \b
    Example:
      sslall demo my-demo --rounds 3 --fresh
    """
    from sslall.data._synthetic import write_dataset
    from sslall.rounds import run_round
    from sslall.store._importer import import_source

    names = parse_classes(classes, key="--classes")
    if per_class < 40:
        raise UsageError("--per-class must be at least 40 (8 labeled + 30 holdout + unlabeled)")
    directory = directory.expanduser().resolve()
    _prepare(directory, fresh)
    cells = directory / "cells"
    say(f"drawing {per_class * len(names)} synthetic cells into {cells}")
    samples = write_dataset(cells, names, per_class, size=96, seed=0, difficulty=0.6)
    manifests = _manifests(cells, samples, labeled_per_class=8, holdout_per_class=30)

    config = with_overrides(Config(classes=names),
                            model={"backbone": backbone, "image_size": image_size},
                            route={"budget": 15})
    ws = create_workspace(directory / "workspace", config)
    with PoolStore(ws.db_path) as store:
        for pool in ("labeled", "holdout", "unlabeled"):
            import_source(store, manifests[pool], pool, names,
                          max_pixels=config.data.max_pixels, workers=1)
        sizes = store.pool_sizes()
    say(f"workspace {ws.root}: " + ", ".join(f"{p} {n}" for p, n in sizes.items() if n))

    history = Table(title="demo: what each round bought")
    for col in ("round", "labeled", "pseudo", "review", "unlabeled", "macro-F1", "accuracy",
                "ECE"):
        history.add_column(col, justify="right")
    for _ in range(rounds):
        with step_progress() as update:
            result = run_round(ws, config, progress=update)
        m = result.metrics or {}
        history.add_row(str(result.round), *(str(result.pools.get(p, 0)) for p in
                        ("labeled", "pseudo", "review", "unlabeled")),
                        *(f"{m.get(k, float('nan')):.3f}" for k in ("macro_f1", "accuracy", "ece")))
        say(f"round {result.round}: macro-F1 {m.get('macro_f1', 0):.3f}, moves {result.moves}")
        answered = _answer_review(ws, config, directory, result.round)
        if answered:
            say(f"  the stand-in annotator labelled {answered} review cells")
    console.print(history)
    say(f"explore it: sslall status -w {ws.root}   |   sslall check -w {ws.root}")
