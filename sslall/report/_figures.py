"""The report's figures: matplotlib (Agg, no display) in, PNG bytes out; one function a figure."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["class_distribution", "confidence_histograms", "confusion", "embedding_maps",
           "metrics_per_round", "pools_per_round", "reliability", "training_curves"]

POOL_COLOURS = {"labeled": "#1b9e77", "pseudo": "#7570b3", "unlabeled": "#bdbdbd",
                "review": "#d95f02", "holdout": "#e7298a", "quarantine": "#666666"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def metrics_per_round(rounds: Sequence[int], series: Mapping[str, Sequence[float | None]]) -> bytes:
    """Accuracy, macro-F1, ECE (or any named series) against the round number."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, values in series.items():
        ys = [np.nan if v is None else v for v in values]
        ax.plot(rounds, ys, marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(list(rounds))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def pools_per_round(rounds: Sequence[int], pools: Mapping[str, Sequence[int]]) -> bytes:
    """Pool sizes after each round, stacked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bottom = np.zeros(len(rounds))
    for name, values in pools.items():
        v = np.asarray(values, dtype=float)
        ax.bar([str(r) for r in rounds], v, bottom=bottom, label=name,
               color=POOL_COLOURS.get(name))
        bottom += v
    ax.set_xlabel("round")
    ax.set_ylabel("samples")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    return _png(fig)


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    """Confusion matrix with counts (rows: true class, columns: predicted)."""
    plt = _plt()
    cm = np.asarray(matrix)
    side = 1.2 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if top and v > top / 2 else "black", fontsize=8)
    return _png(fig)


def reliability(before: Sequence[Mapping], after: Sequence[Mapping]) -> bytes:
    """Reliability diagrams before and after temperature scaling, side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), sharey=True)
    for ax, bins, title in ((axes[0], before, "before calibration"),
                            (axes[1], after, "after calibration")):
        lo = [b["lo"] for b in bins]
        width = [b["hi"] - b["lo"] for b in bins]
        acc = [b["accuracy"] or 0.0 for b in bins]
        ax.bar(lo, acc, width=width, align="edge", edgecolor="black", color="#4c72b0",
               label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
        total = sum(b["count"] for b in bins) or 1
        ece = sum(b["count"] / total * abs((b["accuracy"] or 0) - (b["confidence"] or 0))
                  for b in bins if b["count"])
        ax.set_title(f"{title} (ECE {ece:.3f})", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    return _png(fig)


def confidence_histograms(per_pool: Mapping[str, np.ndarray]) -> bytes:
    """Histogram of the calibrated confidence in each pool (one panel a pool)."""
    plt = _plt()
    names = [p for p, v in per_pool.items() if len(v)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(2.6 * max(1, len(names)), 2.6),
                             sharex=True, squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        ax.hist(per_pool[name], bins=20, range=(0, 1), color=POOL_COLOURS.get(name))
        ax.set_title(f"{name} (n={len(per_pool[name])})", fontsize=9)
        ax.set_xlabel("confidence")
    return _png(fig)


def embedding_maps(maps: Mapping[str, np.ndarray], pools: Sequence[str],
                   labels: Sequence[str], classes: Sequence[str]) -> bytes:
    """Each 2-D map (PCA, t-SNE) twice: coloured by pool and by class (label, else predicted)."""
    plt = _plt()
    fig, axes = plt.subplots(len(maps), 2, figsize=(9, 4 * len(maps)), squeeze=False)
    pools_arr, labels_arr = np.asarray(pools), np.asarray(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    size = 4 if len(pools_arr) > 5000 else 10
    for row, (name, xy) in enumerate(maps.items()):
        ax = axes[row][0]
        for pool in POOL_COLOURS:
            sel = pools_arr == pool
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=size, c=POOL_COLOURS[pool], label=pool,
                           alpha=0.7, linewidths=0)
        ax.set_title(f"{name}, by pool", fontsize=9)
        ax.legend(fontsize=7, markerscale=2)
        ax = axes[row][1]
        for k, c in enumerate(classes):
            sel = labels_arr == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=cmap(k % cmap.N), label=c,
                           alpha=0.7, linewidths=0)
        ax.set_title(f"{name}, by class (label, else prediction)", fontsize=9)
        ax.legend(fontsize=7, markerscale=2)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    return _png(fig)


def class_distribution(counts: Mapping[str, Mapping[str, int]], classes: Sequence[str]) -> bytes:
    """Samples per class in each pool that has labels (grouped bars)."""
    plt = _plt()
    pools = [p for p in counts if any(counts[p].get(c, 0) for c in classes)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / max(1, len(pools))
    x = np.arange(len(classes))
    for i, pool in enumerate(pools):
        ax.bar(x + i * width, [counts[pool].get(c, 0) for c in classes], width=width,
               label=pool, color=POOL_COLOURS.get(pool))
    ax.set_xticks(x + 0.4 - width / 2, classes, rotation=30, ha="right")
    ax.set_ylabel("samples")
    if pools:
        ax.legend(fontsize=8)
    return _png(fig)


def training_curves(models: Sequence[Mapping]) -> bytes:
    """Loss (training solid, holdout dashed) and holdout macro-F1 against the epoch, one colour
    a model (history.json's `models`); a star marks the epoch whose weights each model kept."""
    plt = _plt()
    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(8, 3.2), sharex=True)
    cmap = plt.get_cmap("tab10")
    for k, model in enumerate(models):
        colour = cmap(k % cmap.N)
        epochs = [e["epoch"] for e in model["epochs"]]
        loss_ax.plot(epochs, [e["train_loss"] for e in model["epochs"]], color=colour,
                     label=model["model"])
        val_loss = [np.nan if e["val_loss"] is None else e["val_loss"] for e in model["epochs"]]
        f1 = [np.nan if e["val_macro_f1"] is None else e["val_macro_f1"] for e in model["epochs"]]
        if not np.isnan(f1).all():
            loss_ax.plot(epochs, val_loss, "--", color=colour)
            f1_ax.plot(epochs, f1, color=colour)
            best = model["best_epoch"]
            if best in epochs:
                f1_ax.plot([best], [f1[epochs.index(best)]], "*", color=colour, markersize=12,
                           markeredgecolor="black")
    if f1_ax.lines:
        loss_ax.plot([], [], "--", color="grey", label="holdout")
    else:
        f1_ax.text(0.5, 0.5, "no holdout", ha="center", va="center", transform=f1_ax.transAxes)
    loss_ax.set_ylabel("loss (solid: training)")
    loss_ax.legend(fontsize=7, loc="best")
    f1_ax.set_ylabel("holdout macro-F1 (*: kept epoch)")
    f1_ax.set_ylim(0, 1.02)
    for ax in (loss_ax, f1_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _png(fig)
