"""What the head-mode defaults buy on real cells: multi-scale features, head training, threads.

One pass of frozen tf_efficientnet_lite0 (offline ImageNet weights, 224 px) over all-taleqani
keeps the pooled final features and the pooled maps of its last four stages. On a stratified
20 % test split (seed 0), with 5 % of the rest labeled (30 % of those as the holdout, as
`sslall simulate` does), it compares, seed by seed:

- a logistic regression on the final features alone and with 1..4 stages pooled beside them
  (`model.feature_scales`), with 5 % of the labels and with all of them;
- sslall's own head (`train_head`) with one pass over the rows per epoch against the default of
  at least `MIN_EPOCH_ROWS` rows per epoch, and one head against the ensemble of five;
- the wall time of fitting one head with torch on one intra-op thread and on all cores,
  interleaved in one process.

    python benchmarks/bench_features.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import data_root, emit, table, write_section
from bench_simulate import split
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from sslall.data._datasets import ImageDataset, eval_transform, make_loader
from sslall.experiments._simulate import class_folders
from sslall.model import _train as train
from sslall.model._backbones import create_backbone
from sslall.model._heads import EnsembleHead, MLPHead

STAGES = 4
MIN_ROWS = train.MIN_EPOCH_ROWS  # sslall's default, restored after the comparison


def extract(folder: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Features [N, D] with the last STAGES stages pooled first, labels, and each block's width."""
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=True, scales=STAGES)
    paths, labels = [], []
    for i, cls in enumerate(classes):
        files = sorted((folder / cls).iterdir())
        paths += [str(p) for p in files]
        labels += [i] * len(files)
    dataset = ImageDataset(paths, eval_transform(224, backbone.mean, backbone.std), max_pixels=10**8)
    out = []
    backbone.module.eval()
    with torch.inference_mode():
        for x, _ in make_loader(dataset, batch_size=32, num_workers=0):
            out.append(backbone.features(x).numpy())
    widths = [int(info["num_chs"]) for info in backbone.module.feature_info[-STAGES:]]
    return np.concatenate(out), np.array(labels), [*widths, backbone.num_features - sum(widths)]


def starting_split(y: np.ndarray, seed: int, fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(labeled, holdout) row indices: a stratified `fraction`, 30 % of it the holdout."""
    rng = np.random.default_rng(seed)
    labeled, holdout = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        k = max(int(round(fraction * len(rows))), 2)
        n_hold = min(max(int(round(0.3 * k)), 1), k - 1)
        holdout += list(rows[:n_hold])
        labeled += list(rows[n_hold:k])
    return np.array(labeled), np.array(holdout)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro"))


def logistic(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    return LogisticRegression(C=1.0, max_iter=3000).fit(x, y).predict(x_test)


def heads(x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray], x_test: np.ndarray,
          k: int, members: int, seed: int, min_rows: int) -> np.ndarray:
    """Predictions of sslall's head (or ensemble) trained as `fit_learner` does."""
    train.MIN_EPOCH_ROWS = min_rows
    fitted = []
    for m in range(members):
        result = train.train_head(x, y, np.ones(len(y)), val[0], val[1], num_classes=k, seed=seed + m)
        head = MLPHead(x.shape[1], k)
        head.load_state_dict(result.state)
        fitted.append(head)
    model = (fitted[0] if members == 1 else EnsembleHead(fitted)).eval()
    with torch.inference_mode():
        return model(torch.as_tensor(x_test)).argmax(1).numpy()


def head_seconds(x: np.ndarray, y: np.ndarray, threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        train.train_head(x, y, np.ones(len(y)), num_classes=int(y.max()) + 1, epochs=10)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(before)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 images per class, 1 seed")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, test_dir = split(data_root() / "all-taleqani", Path(tmp),
                                    per_class=40 if args.quick else None)
        classes = class_folders(train_dir)
        started = time.perf_counter()
        x, y, widths = extract(train_dir, classes)
        x_test, y_test, _ = extract(test_dir, classes)
        extract_s = time.perf_counter() - started
    edges = np.cumsum([0, *widths])
    k = len(classes)

    def columns(stages: int) -> np.ndarray:
        return np.r_[edges[STAGES - stages]:edges[STAGES], edges[STAGES]:edges[-1]]

    scale_rows, head_rows, figures = [], [], {"extract_seconds": extract_s}
    for stages in range(STAGES + 1):
        cols = columns(stages)
        low = []
        for seed in seeds:
            lab, hold = starting_split(y, seed)
            both = np.r_[lab, hold]
            low.append(macro_f1(y_test, logistic(x[both][:, cols], y[both], x_test[:, cols])))
        full = macro_f1(y_test, logistic(x[:, cols], y, x_test[:, cols]))
        scale_rows.append([stages, len(cols), *(f"{v:.4f}" for v in low), f"{np.mean(low):.4f}",
                           f"{full:.4f}"])
        figures[f"lr_scales{stages}"] = {"low": low, "all": full}
    cols = columns(2)
    for label, members, min_rows in (("one pass per epoch, 1 head", 1, 0),
                                     (f">= {MIN_ROWS} rows per epoch, 1 head", 1, MIN_ROWS),
                                     (f">= {MIN_ROWS} rows per epoch, ensemble of 5 (default)", 5,
                                      MIN_ROWS)):
        scores = []
        for seed in seeds:
            lab, hold = starting_split(y, seed)
            pred = heads(x[lab][:, cols], y[lab], (x[hold][:, cols], y[hold]), x_test[:, cols], k,
                         members, seed, min_rows)
            scores.append(macro_f1(y_test, pred))
        head_rows.append([label, *(f"{v:.4f}" for v in scores), f"{np.mean(scores):.4f}"])
        figures[label] = scores
    train.MIN_EPOCH_ROWS = MIN_ROWS
    fit_x, fit_y = x[:, cols][:1200], y[:1200]
    timings = {1: [], torch.get_num_threads(): []}
    for _ in range(2):
        for threads in timings:
            timings[threads].append(head_seconds(fit_x, fit_y, threads))
    figures["head_seconds_by_threads"] = timings
    seed_cols = [f"seed {s}" for s in seeds]
    body = "\n".join([
        f"all-taleqani: {len(y)} training and {len(y_test)} test images (stratified 20 %, seed 0); "
        f"5 % of the training images labeled, 30 % of those the holdout. Extracting the features "
        f"of all {len(y) + len(y_test)} images (one pass, 224 px, CPU) took {extract_s:.0f} s.",
        "",
        "**Multi-scale features** (`model.feature_scales`): logistic regression (C = 1) on the "
        "final pooled features with the last N stages' pooled maps beside them; test macro-F1.",
        "",
        table(["stages pooled", "D", *(f"5 % labels, {c}" for c in seed_cols), "mean",
               "all labels"], scale_rows),
        "",
        f"**Head training** on the features with 2 stages pooled (D = {len(cols)}), trained on the "
        "labeled rows with early stopping on the holdout, as a round's first step does; test "
        "macro-F1.",
        "",
        table(["head", *seed_cols, "mean"], head_rows),
        "",
        "**Threads**: one head fit (1,200 rows, 10 epochs), interleaved twice: "
        + "; ".join(f"{t} thread(s): {', '.join(f'{s:.2f}' for s in v)} s" for t, v in timings.items())
        + ". sslall fits heads on one thread.",
    ])
    write_section("features", "Head mode: multi-scale features, head training, threads", body,
                  quick=args.quick)
    emit({"benchmark": "features", **figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
