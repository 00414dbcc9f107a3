"""`sslall report`: one self-contained HTML page about a workspace (every image inline, base64
PNG; no script, no stylesheet or font from the network, so it opens on an air-gapped machine).

It reads only what the workspace already records: the store (rounds with their metrics and pool
sizes, the pools per class, the duplicates seen at import) and the latest round's folder
(metrics.json's confusion matrix, predictions.csv's confidences, reliability.json and
embeddings.npz from `sslall.report._data`, label_issues.csv's suspected label errors). Figures
are drawn by `sslall.report._figures`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sslall._progress import Progress
from sslall.config import Config
from sslall.data._images import UnreadableImage, load_rgb
from sslall.report import _figures as fig
from sslall.report._data import MAX_POINTS, read_embeddings, read_history, read_reliability
from sslall.report._runfiles import read_label_issues
from sslall.store._pools import PoolStore
from sslall.store._records import POOLS, utc_now
from sslall.workspace import Workspace

__all__ = ["build_report", "write_report"]

THUMB = 72


@dataclass
class _Prediction:
    path: str
    pool: str
    label: str
    prediction: str
    confidence: float


def write_report(ws: Workspace, config: Config, out: Path, *, tsne_max: int = MAX_POINTS,
                 per_class: int = 6, progress: Progress | None = None) -> Path:
    """Build the report and write it to `out` (atomically); returns `out`."""
    from sslall._fsutil import write_atomic

    page = build_report(ws, config, tsne_max=tsne_max, per_class=per_class, progress=progress)
    write_atomic(out, page.encode("utf-8"))
    return out


def build_report(ws: Workspace, config: Config, *, tsne_max: int = MAX_POINTS,
                 per_class: int = 6, progress: Progress | None = None) -> str:
    """The report's HTML (see the module docstring)."""
    say = progress or (lambda *_: None)
    classes = list(config.classes)
    with PoolStore(ws.db_path, read_only=True) as store:
        rounds = store.rounds()
        counts = store.counts()
        duplicates = store.duplicates()
    latest = rounds[-1] if rounds else None
    run_dir = ws.round_dir(latest["round"]) if latest else None
    parts = [_section("Workspace", _kv({
        "workspace": str(ws.root), "classes": ", ".join(classes),
        "rounds": str(len(rounds)), "latest round": str(run_dir or "none"),
        "report written": utc_now()}))]

    say("metrics per round", 0, 4)
    if rounds:
        nums = [r["round"] for r in rounds]
        metric = {k: [(r.get("metrics") or {}).get(k) for r in rounds]
                  for k in ("accuracy", "macro_f1", "ece")}
        table = _table(["round", "accuracy", "macro-F1", "ECE"],
                       [[n, *(metric[k][i] for k in metric)] for i, n in enumerate(nums)])
        parts.append(_section("Metrics per round (holdout, calibrated)",
                              _img(fig.metrics_per_round(nums, metric), "metrics per round") + table))
        pools = {p: [int((r.get("pools") or {}).get(p, 0)) for r in rounds] for p in POOLS}
        parts.append(_section("Pool sizes per round", _img(fig.pools_per_round(nums, pools),
                                                           "pool sizes per round")
                              + _table(["round", *POOLS], [[n, *(pools[p][i] for p in POOLS)]
                                                           for i, n in enumerate(nums)])))
        cm = (latest.get("metrics") or {}).get("confusion_matrix")
        parts.append(_section(f"Confusion matrix, round {latest['round']} (holdout)",
                              _img(fig.confusion(cm, classes), "confusion matrix") if cm else
                              _note("no holdout, so no confusion matrix")))
    else:
        parts.append(_section("Rounds", _note("no round has finished yet: `sslall round`")))

    if run_dir is not None:
        say("reliability and confidences", 1, 4)
        parts.append(_section(f"Training curves, round {latest['round']}", _history_section(run_dir)))
        rel = read_reliability(run_dir)
        if rel and "before" in rel:
            body = _img(fig.reliability(rel["before"], rel["after"]), "reliability diagram")
            body += _note(f"temperature {rel['temperature']:.3f} fitted on "
                          f"{rel['holdout']} holdout cells")
        else:
            body = _note("not recorded for this round (no holdout, or a round from an older "
                         "sslall)")
        parts.append(_section("Reliability diagram, before and after calibration", body))
        preds = _read_predictions(run_dir / "predictions.csv")
        per_pool = defaultdict(list)
        for p in preds:
            per_pool[p.pool].append(p.confidence)
        parts.append(_section("Calibrated confidence per pool (at the start of the round)",
                              _img(fig.confidence_histograms(
                                  {k: np.asarray(v) for k, v in per_pool.items()}),
                                  "confidence histograms")))
        say("embedding maps", 2, 4)
        parts.append(_section("Embeddings (2-D maps)", _embedding_section(
            run_dir, preds, classes, tsne_max, latest["round"])))
    parts.append(_section("Class distribution", _img(fig.class_distribution(
        {p: {str(k): v for k, v in counts[p].items()} for p in POOLS}, classes),
        "class distribution") + _table(["pool", *classes, "no class"], [
            [p, *(counts[p].get(c, 0) for c in classes),
             sum(v for k, v in counts[p].items() if k not in classes)] for p in POOLS])))
    if run_dir is not None:
        parts.append(_section("Out-of-distribution cells", _ood_section(run_dir)))
        say("thumbnails", 3, 4)
        parts.append(_section("Most and least confident cells per predicted class",
                              _thumbnails(preds, classes, per_class, config.data.max_pixels)))
        issues = read_label_issues(run_dir)
        if issues is not None:
            parts.append(_section(f"Suspected label errors, round {latest['round']} "
                                  f"({len(issues)})", _label_issues(issues, config.data.max_pixels)))
    parts.append(_section(f"Duplicates found at import ({len(duplicates)})", _table(
        ["stored as", "same bytes as"], [[a, b] for _, a, b in duplicates[:500]])
        + (_note(f"… and {len(duplicates) - 500} more") if len(duplicates) > 500 else "")
        if duplicates else _note("none")))
    return _page(f"sslall report: {ws.root.name}", "\n".join(parts))


# -- sections ----------------------------------------------------------------------------------


def _embedding_section(run_dir: Path, preds: list[_Prediction], classes: list[str],
                       tsne_max: int, round_no: int) -> str:
    found = read_embeddings(run_dir)
    if found is None or not preds:
        return _note("not recorded for this round")
    rows, pca, variance = found
    rows = rows[rows < len(preds)]
    pca = pca[: len(rows)]
    chosen = [preds[i] for i in rows]
    maps = {f"PCA ({100 * float(variance[:2].sum()):.0f} % of the variance)": pca[:, :2]}
    note = f"{len(rows)} of {len(preds)} cells"
    if tsne_max and 5 <= len(rows) <= tsne_max:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (len(rows) - 1) / 3))
        maps["t-SNE"] = TSNE(2, perplexity=perplexity, init="pca", random_state=round_no,
                             ).fit_transform(pca.astype(np.float64))
    else:
        note += f"; t-SNE skipped ({len(rows)} points; it runs on 5 to {tsne_max})"
    labels = [p.label or p.prediction for p in chosen]
    return _img(fig.embedding_maps(maps, [p.pool for p in chosen], labels, classes),
                "embedding maps") + _note(note)


def _history_section(run_dir: Path) -> str:
    """The round's loss and holdout macro-F1 per epoch of each model it trained (history.json)."""
    found = read_history(run_dir)
    if not found or not found.get("models"):
        return _note("no history recorded for this round (a round from an older sslall)")
    rows = []
    for m in found["models"]:
        kept = next((e for e in m["epochs"] if e["epoch"] == m["best_epoch"]), {})
        lr = kept.get("lr")
        rows.append([m["model"], len(m["epochs"]), m["best_epoch"], kept.get("val_macro_f1"),
                     None if lr is None else f"{lr:.3g}", m["seconds"]])
    return (_img(fig.training_curves(found["models"]), "training curves")
            + _table(["model", "epochs run", "kept epoch", "holdout macro-F1 there",
                      "learning rate there", "seconds"], rows)
            + _note("runs/round-NNNN/history.json holds every epoch: loss, holdout macro-F1 and "
                    "loss, learning rate, seconds"))


def _ood_section(run_dir: Path) -> str:
    """The round's OOD threshold, the calibration scores' spread and the flagged cells per pool."""
    from sslall.decide._ood import SUMMARY_SAMPLE, read_ood
    from sslall.errors import ModelError

    try:
        found = read_ood(run_dir)
    except ModelError as exc:
        return _note(str(exc))
    if found is None:
        return _note("not recorded for this round (fewer than 2 labeled cells, or a round from "
                     "an older sslall): predictions are not flagged")
    cal, meta = found
    qs = (0.5, 0.9, 0.95, 0.99, 1.0)
    spread = _table(["quantile", *(f"{q:g}" for q in qs)],
                    [[f"{cal.source} scores", *(float(np.quantile(cal.scores, q)) for q in qs)]])
    pools = _table(["pool (at the round's start)", "cells scored", "flagged", "flagged %"],
                   [[p, c["scored"], c["flagged"], 100 * c["flagged"] / c["scored"]]
                    for p, c in meta.get("pools", {}).items() if c["scored"]])
    return (_note(f"OOD score: mean cosine distance to the {cal.k} nearest of "
                  f"{len(cal.reference)} labeled training cells. Threshold {cal.threshold:.4f} = "
                  f"the {cal.quantile:g} quantile of {len(cal.scores)} {cal.source} scores; a "
                  "cell above it is predicted \"unknown\". The unlabeled pool is counted on a "
                  f"sample of at most {SUMMARY_SAMPLE} cells.") + spread + pools)


def _thumbnails(preds: list[_Prediction], classes: list[str], k: int, max_pixels: int) -> str:
    by_class: dict[str, list[_Prediction]] = defaultdict(list)
    for p in preds:
        by_class[p.prediction].append(p)
    out = []
    for c in classes:
        cells = sorted(by_class.get(c, []), key=lambda p: -p.confidence)
        if not cells:
            out.append(f"<h3>{html.escape(c)}</h3>" + _note("no cell predicted as this class"))
            continue
        most, least = cells[:k], cells[-k:][::-1] if len(cells) > k else []
        strip = _strip([most, least], ["most confident", "least confident"], max_pixels)
        out.append(f"<h3>{html.escape(c)} ({len(cells)} cells)</h3>"
                   + _img(strip, f"most and least confident {c}"))
    return "\n".join(out)


def _label_issues(issues: list[dict], max_pixels: int, shown: int = 12) -> str:
    """The most suspect human labels: thumbnails captioned with the model's probability of its
    own class and the given label, and a table of them."""
    if not issues:
        return _note("none: the model's out-of-fold predictions agree with every human label")
    top = issues[:shown]
    cells = [_Prediction(i["path"], i["pool"], i["label"], i["suggested"], i["p_suggested"])
             for i in top]
    return (_img(_strip([cells], ["suspected"], max_pixels), "suspected label errors")
            + _table(["path", "pool", "label", "model says", "p(model's class)", "p(label)"],
                     [[i["path"], i["pool"], i["label"], i["suggested"], i["p_suggested"],
                       i["p_label"]] for i in top])
            + _note("confident learning on out-of-fold probabilities (runs/round-NNNN/"
                    "label_issues.csv lists them all): worth an annotator's second look"
                    + (f"; {len(issues) - shown} more in the file" if len(issues) > shown else "")))


def _strip(groups: list[list[_Prediction]], titles: list[str], max_pixels: int) -> bytes:
    """Rows of thumbnails with the confidence (and the label when it disagrees) under each."""
    groups = [(t, g) for t, g in zip(titles, groups, strict=True) if g]
    width = max(len(g) for _, g in groups)
    cap, head = 16, 16
    canvas = Image.new("RGB", (110 + width * (THUMB + 6), len(groups) * (THUMB + cap + head)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    for row, (title, cells) in enumerate(groups):
        y = row * (THUMB + cap + head)
        draw.text((4, y + head + THUMB // 2 - 6), title, fill="black", font=font)
        for i, p in enumerate(cells):
            x = 110 + i * (THUMB + 6)
            canvas.paste(_thumb(p.path, max_pixels), (x, y + head))
            text = f"{p.confidence:.2f}" + (f" ({p.label})" if p.label and p.label != p.prediction
                                            else "")
            draw.text((x, y + head + THUMB + 2), text, fill="black", font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _thumb(path: str, max_pixels: int) -> Image.Image:
    try:
        image = load_rgb(path, max_pixels=max_pixels)
    except (UnreadableImage, OSError):
        return Image.new("RGB", (THUMB, THUMB), (220, 220, 220))
    scale = THUMB / max(image.width, image.height)  # small crops are enlarged, large shrunk
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.BICUBIC)
    tile = Image.new("RGB", (THUMB, THUMB), "white")
    tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return tile


def _read_predictions(path: Path) -> list[_Prediction]:
    """predictions.csv's scored rows, in file order (the embedding rows index them)."""
    if not path.is_file():
        return []
    out = []
    with path.open(newline="", encoding="utf-8") as handle:
        for r in csv.DictReader(handle):
            if r["confidence"] == "":
                continue  # quarantined at the round's start: not scored
            routed = r["routed_to"]
            pool = routed if routed in POOLS else r["pool"]
            out.append(_Prediction(r["path"], pool, r["label"], r["prediction"],
                                   float(r["confidence"])))
    return out


# -- HTML ------------------------------------------------------------------------------------

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right;font-size:13px}
th{background:#f4f4f4}td:first-child{text-align:left}img{max-width:100%}.note{color:#666}"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else html.escape(str(v))


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(items: dict[str, str]) -> str:
    return _table(["", ""], [[k, v] for k, v in items.items()])
