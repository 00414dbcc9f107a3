"""The demo's logic (`sslall demo`): the whole loop on synthetic cells, in a few minutes on a
laptop CPU.

It draws a data set, makes a workspace with a few labeled cells, many unlabeled ones and a
holdout, then runs rounds. Between rounds a stand-in annotator (who knows the synthetic truth)
answers the review queue through the same CSV import a person would use.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from sslall.config import Config, with_overrides
from sslall.errors import UsageError
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace, create_workspace

MARKER = ".sslall-demo"


def prepare_demo_folder(directory: Path, *, per_class: int, fresh: bool) -> None:
    """Check the demo's settings and make `directory` an empty demo folder.

    Raises:
        UsageError: `per_class` is under 40, or `directory` holds something other than a demo
            (or a demo, without `fresh`).
    """
    if per_class < 40:
        raise UsageError("--per-class must be at least 40 (8 labeled + 30 holdout + unlabeled)")
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


def answer_review(ws: Workspace, config: Config, directory: Path, round_no: int) -> int:
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


@dataclass
class Demo:
    """A demo workspace ready for rounds, and where its synthetic cells are."""

    workspace: Workspace
    config: Config
    cells: Path
    pool_sizes: dict[str, int]


def build_demo(directory: Path, names: tuple[str, ...], *, per_class: int, backbone: str,
               image_size: int) -> Demo:
    """Draw `per_class` synthetic cells of each class into `directory`/cells and make a workspace
    with 8 labeled and 30 holdout cells per class, the rest unlabeled. `directory` is one that
    `prepare_demo_folder` made ready.
    """
    from sslall.data._synthetic import write_dataset
    from sslall.store._importer import import_source

    cells = directory / "cells"
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
    return Demo(ws, config, cells, sizes)
