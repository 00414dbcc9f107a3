"""Out-of-distribution scores: how far a cell's embedding lies from the cells the model learnt.

A model trained on B-ALL subtypes answers a normal platelet with a confident subtype: softmax
confidence says nothing about a cell unlike any it was trained on. The OOD score does: it is the
mean cosine distance (``1 - cos``, on L2-normalised embeddings, exact faiss search) from a cell's
embedding to its `k` nearest *reference* embeddings, the human-labelled training cells of the
round (capped by a seeded sample). Pseudo-labelled cells are left out of the reference: a
confident mistake on a foreign cell would otherwise make every cell like it look known.

The score is calibrated on cells known to be in distribution: the holdout's scores against the
reference (or, without a holdout, each reference cell's leave-one-out score against the others,
which reads a little lower than a held-out cell's). The threshold is their `quantile`
(``method="inverted_cdf"``: an observed score), and a cell is OOD when its score is above it,
so at 0.99 "OOD" means "farther than 99 % of known-good cells".

On disk (a round's folder): `ood.npz` holds the reference (float16 unit rows) and the sorted
calibration scores; `ood.json` the parameters, the threshold and the round's counts. Written by
`sslall.report._runfiles`, read by `sslall.model._inference` (predict, evaluate), the report and
the Label Studio push. No torch here: numpy + faiss only.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from sslall._fsutil import write_atomic
from sslall.decide._index import knn, l2_normalize
from sslall.errors import ModelError

__all__ = ["OOD_JSON", "OOD_NPZ", "OodCalibration", "calibrate_ood", "read_ood", "round_ood_summary",
           "threshold_at", "write_ood"]

OOD_NPZ = "ood.npz"
OOD_JSON = "ood.json"
SUMMARY_SAMPLE = 5000  # unlabeled cells scored for the round's flagged fraction


def threshold_at(scores: np.ndarray, quantile: float) -> float:
    """The `quantile` of `scores` as an observed score (the smallest s with at least that
    fraction of scores <= s): with scores 1..100 and 0.99, 99.0.

    Raises:
        ValueError: no score, or `quantile` outside (0, 1].
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1]; got {quantile}")
    if len(scores) == 0:
        raise ValueError("no calibration score to take a quantile of")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), quantile, method="inverted_cdf"))


@dataclass
class OodCalibration:
    """The reference embeddings, the calibration scores and the threshold they give.

    `reference` [N, D] holds unit rows (float16 on disk), `scores` the sorted calibration scores,
    `source` "holdout" or "leave-one-out"; `threshold` is `threshold_at(scores, quantile)`.
    """

    reference: np.ndarray
    scores: np.ndarray
    k: int
    quantile: float
    source: str
    _index: faiss.Index | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def threshold(self) -> float:
        return threshold_at(self.scores, self.quantile)

    def with_quantile(self, quantile: float) -> OodCalibration:
        """The same calibration at another quantile (the threshold follows; nothing is rescored).

        Raises:
            ValueError: `quantile` outside (0, 1].
        """
        threshold_at(self.scores, quantile)
        return OodCalibration(self.reference, self.scores, self.k, quantile, self.source)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """[Q] float32 OOD scores of [Q, D] embeddings (mean cosine distance to the k nearest
        reference rows). The exact index over the reference is built once and kept, so
        `Predictor` scoring batch after batch does not rebuild it."""
        if self._index is None:
            self._index = faiss.IndexFlatIP(self.reference.shape[1])
            self._index.add(l2_normalize(self.reference, "reference"))
        k = min(self.k, len(self.reference))
        sims, _ = self._index.search(l2_normalize(embeddings, "embeddings"), k)
        return (1.0 - np.clip(sims, -1.0, 1.0)).mean(axis=1).astype(np.float32)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """[Q] bool: scores above the threshold."""
        return np.asarray(scores) > self.threshold


def knn_distance(reference: np.ndarray, queries: np.ndarray, k: int, *,
                 exclude_self: bool = False) -> np.ndarray:
    """[Q] float32 mean cosine distance of each query to its `k` nearest reference rows."""
    sims, _ = knn(reference, queries, k, exclude_self=exclude_self)
    if sims.shape[1] == 0:
        raise ValueError("the OOD reference needs at least 2 rows (1 without exclude_self)")
    return (1.0 - np.clip(sims, -1.0, 1.0)).mean(axis=1).astype(np.float32)


def calibrate_ood(embeddings: np.ndarray, reference: np.ndarray, holdout: np.ndarray, *, k: int,
                  quantile: float, max_reference: int, seed: int = 0) -> OodCalibration | None:
    """The calibration of a round: reference = the `reference` rows of `embeddings` (boolean
    mask; a seeded sample of `max_reference` when there are more), calibrated on the `holdout`
    rows, or leave-one-out within the reference without a holdout. None with fewer than 2
    reference rows (nothing to measure a distance to)."""
    rows = np.flatnonzero(reference)
    if len(rows) > max_reference:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_reference, replace=False))
    if len(rows) < 2:
        return None
    ref = l2_normalize(embeddings[rows], "embeddings").astype(np.float16)
    if holdout.any():
        scores, source = knn_distance(ref, embeddings[np.flatnonzero(holdout)], k), "holdout"
    else:
        scores, source = knn_distance(ref, ref, k, exclude_self=True), "leave-one-out"
    return OodCalibration(ref, np.sort(scores), k, quantile, source)


def round_ood_summary(cal: OodCalibration, embeddings: np.ndarray, ids: list[str],
                      pools: list[str], review: set[str], seed: int = 0) -> dict:
    """What a round records beside its calibration: per pool the cells scored and flagged (the
    unlabeled pool through a seeded sample of `SUMMARY_SAMPLE`), and the score of every cell in
    `review` (its ids), which the Label Studio push attaches to their tasks."""
    pools_arr = np.asarray(pools)
    out: dict = {"pools": {}, "review": {}}
    for pool in sorted(set(pools)):
        rows = np.flatnonzero(pools_arr == pool)
        if pool == "unlabeled" and len(rows) > SUMMARY_SAMPLE:
            rows = np.sort(np.random.default_rng(seed).choice(rows, SUMMARY_SAMPLE, replace=False))
        scores = cal.score(embeddings[rows]) if len(rows) else np.zeros(0, np.float32)
        out["pools"][pool] = {"scored": int(len(rows)), "flagged": int(cal.flag(scores).sum())}
    wanted = [i for i, sid in enumerate(ids) if sid in review]
    if wanted:
        scores = cal.score(embeddings[wanted])
        out["review"] = {ids[i]: round(float(s), 6) for i, s in zip(wanted, scores, strict=True)}
    return out


def write_ood(folder: Path, cal: OodCalibration, summary: dict) -> None:
    """Write `ood.npz` and `ood.json` into a round's folder (each atomically)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, reference=cal.reference.astype(np.float16), scores=cal.scores.astype(np.float32))
    write_atomic(folder / OOD_NPZ, buf.getvalue())
    meta = {"k": cal.k, "quantile": cal.quantile, "threshold": cal.threshold, "source": cal.source,
            "reference_rows": int(len(cal.reference)), "calibration_rows": int(len(cal.scores)),
            "dim": int(cal.reference.shape[1]), "score": "mean cosine distance to the k nearest "
            "human-labelled training embeddings", **summary}
    write_atomic(folder / OOD_JSON, json.dumps(meta, indent=2))


def read_ood(folder: Path) -> tuple[OodCalibration, dict] | None:
    """(calibration, ood.json's content) of a round's folder; None when it has no OOD files (a
    round from an older sslall).

    Raises:
        ModelError: the files are there but damaged.
    """
    npz, meta_path = folder / OOD_NPZ, folder / OOD_JSON
    if not (npz.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        with np.load(npz, allow_pickle=False) as data:
            reference, scores = data["reference"], data["scores"]
        cal = OodCalibration(reference.astype(np.float32), scores, int(meta["k"]),
                             float(meta["quantile"]), str(meta["source"]))
        cal.threshold  # noqa: B018 - checks the quantile and that there are scores
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile,
            json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"the OOD files of {folder} are damaged ({exc}); remove {OOD_NPZ} and "
                         f"{OOD_JSON} to predict without OOD scores") from exc
    if reference.ndim != 2 or len(reference) < 2:
        raise ModelError(f"the OOD reference in {npz} has shape {reference.shape}; remove "
                         f"{OOD_NPZ} and {OOD_JSON} to predict without OOD scores")
    return cal, meta
