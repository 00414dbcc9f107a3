"""Label-efficiency simulation: the real round engine with the data set's labels as the annotator.

A stratified fraction (or K per class) of DATA_DIR starts labeled — part of it carved off as the
holdout (validation and calibration), so the holdout's labels count against the budget — and the
rest starts unlabeled with its labels hidden from the loop. Each round is `run_round` on a real
workspace; then the oracle answers the review queue. TEST_DIR only ever produces the reported
test metrics: nothing is tuned, trained, calibrated or selected on it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslall._fsutil import sha256_file
from sslall._progress import Progress
from sslall.config import Config, with_overrides
from sslall.decide._metrics import classification_metrics, softmax
from sslall.errors import InputError, UsageError
from sslall.model._learner import fit_learner
from sslall.rounds import run_round
from sslall.store._importer import import_entries
from sslall.store._pools import PoolStore
from sslall.store._records import Move
from sslall.store._snapshot import Snapshot
from sslall.store._sources import Entry, list_source
from sslall.workspace import Workspace, create_workspace


@dataclass(frozen=True)
class SimulationSpec:
    """What to simulate; `config` carries backbone, mode, threshold, policy, strategy, budget."""

    data_dir: Path
    test_dir: Path
    work_dir: Path
    config: Config
    rounds: int
    label_fraction: float | None = None
    labels_per_class: int | None = None
    holdout_share: float = 0.3
    seed: int = 0
    baselines: bool = False


def class_folders(root: Path) -> tuple[str, ...]:
    if not root.is_dir():
        raise InputError(f"{root} is not a folder of class sub-folders")
    names = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if len(names) < 2:
        raise InputError(f"{root} needs at least 2 class sub-folders, found {len(names)}")
    return names


def initial_split(entries: Sequence[Entry], spec: SimulationSpec
                  ) -> tuple[list[Entry], list[Entry], list[Entry]]:
    """(labeled, holdout, unlabeled) entries: stratified, seeded, at least 1 + 1 per class."""
    rng = np.random.default_rng(spec.seed)
    by_class: dict[str, list[Entry]] = {}
    for e in entries:
        by_class.setdefault(e.label or "", []).append(e)
    labeled, holdout, unlabeled = [], [], []
    for label in sorted(by_class):
        items = by_class[label]
        order = [items[i] for i in rng.permutation(len(items))]
        if spec.labels_per_class is not None:
            k = spec.labels_per_class
        else:
            k = int(round((spec.label_fraction or 0.0) * len(items)))
        k = min(max(k, 2), len(items) - 1)
        n_hold = min(max(int(round(spec.holdout_share * k)), 1), k - 1)
        holdout += order[:n_hold]
        labeled += order[n_hold:k]
        unlabeled += [dataclasses.replace(e, label=None) for e in order[k:]]
    return labeled, holdout, unlabeled


def _test_samples(test_dir: Path, classes: tuple[str, ...]) -> tuple[list[tuple[str, str]], np.ndarray]:
    entries = list_source(test_dir, "holdout", classes)
    pairs = [(sha256_file(e.path), e.path) for e in entries]
    return pairs, np.array([classes.index(e.label) for e in entries])


def _test_metrics(probs: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> dict:
    m = classification_metrics(y, probs.argmax(1), probs, list(classes))
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "ece")}


def _pseudo_precision(store: PoolStore, truth: dict[str, str], classes: tuple[str, ...]
                      ) -> tuple[float | None, dict[str, float | None]]:
    hits: dict[str, list[bool]] = {c: [] for c in classes}
    for s in store.samples("pseudo"):
        hits[s.label].append(truth[s.id] == s.label)
    total = [h for v in hits.values() for h in v]
    per = {c: (float(np.mean(v)) if v else None) for c, v in hits.items()}
    return (float(np.mean(total)) if total else None), per


def _answer_review(store: PoolStore, truth: dict[str, str]) -> int:
    moves = [Move(s.id, "labeled", from_pool="review", label=truth[s.id], label_source="oracle",
                  reason=f"oracle; model said {s.prediction}") for s in store.samples("review")]
    store.apply_moves(moves, round_no=store.last_round(), actor="oracle")
    return len(moves)


def _baseline(config: Config, ws: Workspace, rows: list, test: list, y_test: np.ndarray,
              seed: int, progress: Progress | None) -> dict:
    """Train the same backbone and mode on `rows` (labeled + holdout) and score the test set."""
    snapshot = Snapshot(config.classes, rows)
    learner = fit_learner(config, snapshot, cache_dir=ws.cache_dir, seed=seed, progress=progress)
    scores = learner.score(snapshot.rows, progress=progress)
    temperature = learner.calibrate(scores, snapshot).temperature
    logits = learner.logits_for(test, cache_dir=ws.cache_dir, progress=progress)
    n_labels = sum(1 for r in rows if r.pool in ("labeled", "holdout"))
    return {**_test_metrics(softmax(logits, temperature), y_test, config.classes),
            "labels": n_labels}


def link_cache(work_dir: Path, cache: Path) -> None:
    """Make the simulation's workspace use `cache` as its feature cache, shared between runs."""
    (work_dir / "workspace").mkdir(parents=True)
    cache.mkdir(parents=True, exist_ok=True)
    (work_dir / "workspace" / "cache").symlink_to(cache.resolve(), target_is_directory=True)


@dataclass
class Prepared:
    """A simulation's workspace with its starting pools, the hidden truth and the test set."""

    ws: Workspace
    config: Config
    truth: dict[str, str]  # sample id -> class, for every DATA_DIR image in the store
    test: list[tuple[str, str]]  # (sample id, path) of TEST_DIR images
    y_test: np.ndarray
    initial: dict[str, int]  # pool sizes before the first round


def prepare_simulation(spec: SimulationSpec, *, progress: Progress | None = None) -> Prepared:
    """Create the workspace, import the starting split, and list the test set."""
    classes = class_folders(spec.data_dir)
    if class_folders(spec.test_dir) != classes:
        raise InputError(f"{spec.test_dir} must have the same class folders as {spec.data_dir} "
                         f"({', '.join(classes)})")
    if spec.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    config = with_overrides(spec.config, train={"seed": spec.seed})
    config = dataclasses.replace(config, classes=classes)
    entries = list_source(spec.data_dir, "labeled", classes)
    labeled, holdout, unlabeled = initial_split(entries, spec)
    truth_by_path = {e.path: e.label for e in entries}
    ws = create_workspace(spec.work_dir / "workspace", config)
    with PoolStore(ws.db_path) as store:
        for pool, part in (("labeled", labeled), ("holdout", holdout), ("unlabeled", unlabeled)):
            import_entries(store, part, pool, max_pixels=config.data.max_pixels,
                           progress=progress, step=f"import {pool}")
        truth = {}
        for path, label in truth_by_path.items():
            found = store.find_path(path)
            if found:
                truth[found[0]] = label
        initial = store.pool_sizes()
    test, y_test = _test_samples(spec.test_dir, classes)
    return Prepared(ws, config, truth, test, y_test, initial)


def run_simulation(spec: SimulationSpec, *, progress: Progress | None = None,
                   on_round: Callable[[dict], None] | None = None) -> dict:
    """Run the simulation and return the JSON-ready report (see the README)."""
    prep = prepare_simulation(spec, progress=progress)
    ws, config, truth, test, y_test = prep.ws, prep.config, prep.truth, prep.test, prep.y_test
    classes = config.classes
    overlap = len({sid for sid, _ in test} & set(truth))
    report: dict = {
        "config": {
            "data_dir": str(spec.data_dir), "test_dir": str(spec.test_dir),
            "classes": list(classes), "label_fraction": spec.label_fraction,
            "labels_per_class": spec.labels_per_class, "holdout_share": spec.holdout_share,
            "rounds": spec.rounds, "budget": config.route.budget, "seed": spec.seed,
            "threshold": config.pseudo.threshold, "policy": config.pseudo.policy,
            "strategy": config.route.strategy, "backbone": config.model.backbone,
            "mode": config.model.mode, "image_size": config.model.image_size,
            "initial_pools": prep.initial, "test_images": len(test),
            "test_images_also_in_data": overlap, "workspace": str(ws.root),
            "settings": {name: dataclasses.asdict(getattr(config, name))
                         for name in ("model", "train", "augment", "pseudo", "route")},
        },
        "rounds": [],
    }
    for _ in range(spec.rounds):
        started = time.perf_counter()
        captured: dict = {}

        def score_test(learner, calibration, captured=captured) -> None:
            logits = learner.logits_for(test, cache_dir=ws.cache_dir, progress=progress)
            captured["test"] = _test_metrics(softmax(logits, calibration.temperature), y_test,
                                             classes)

        result = run_round(ws, config, progress=progress, on_calibrated=score_test)
        with PoolStore(ws.db_path) as store:
            precision, per_class = _pseudo_precision(store, truth, classes)
            sizes = store.pool_sizes()
            trained_on = {s.id for s in store.samples("labeled")}
            bought = _answer_review(store, truth)
        row = {"round": result.round, "labeled": sizes["labeled"], "pseudo": sizes["pseudo"],
               "review": sizes["review"], "holdout": sizes["holdout"],
               "oracle_labels": bought, "pseudo_precision": precision,
               "pseudo_precision_per_class": per_class, "test": captured["test"],
               "holdout_macro_f1": (result.metrics or {}).get("macro_f1"),
               "seconds": round(time.perf_counter() - started, 2)}
        report["rounds"].append(row)
        if on_round is not None:
            on_round(row)
    report["labels_bought"] = sum(r["oracle_labels"] for r in report["rounds"])
    if spec.baselines:
        report["baselines"] = _baselines(config, ws, truth, trained_on, test, y_test, spec.seed,
                                         progress)
    return report


def _baselines(config: Config, ws: Workspace, truth: dict[str, str], final_labeled: set[str],
               test: list, y_test: np.ndarray, seed: int, progress: Progress | None) -> dict:
    """Supervised only: the starting labels; the human labels the last round trained on (the
    starting ones and every label bought before it, no pseudo labels); every DATA_DIR label."""
    with PoolStore(ws.db_path) as store:
        rows = list(store.samples(("labeled", "holdout", "unlabeled", "pseudo", "review")))
        initial_labeled = {e[3] for e in store.events() if e[4] is None and e[5] == "labeled"}
    same = [r for r in rows if r.pool == "holdout" or r.id in initial_labeled]
    same = [dataclasses.replace(r, pool="labeled", label=truth[r.id], label_source="import",
                                weight=1.0) if r.pool != "holdout" else r for r in same]
    final = [dataclasses.replace(r, weight=1.0) for r in rows
             if r.pool == "holdout" or r.id in final_labeled]
    everything = [r if r.pool == "holdout" else
                  dataclasses.replace(r, pool="labeled", label=truth[r.id], label_source="oracle",
                                      weight=1.0) for r in rows]
    return {
        "supervised_same_labels": _baseline(config, ws, same, test, y_test, seed, progress),
        "supervised_final_labels": _baseline(config, ws, final, test, y_test, seed, progress),
        "supervised_all_labels": _baseline(config, ws, everything, test, y_test, seed, progress),
    }
