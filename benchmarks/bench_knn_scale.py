"""kNN agreement and coreset on 10^6 clustered embeddings: sslall's faiss path, exact faiss, scikit-learn.

Data: N = 10^6 float32 embeddings of width 320 (an EfficientNet-Lite0 / ResNet-sized feature),
drawn as 100 Gaussian clusters around random unit centres (noise 0.04 per dimension, so a point
is ~0.7 from its centre and clusters overlap a little), each cluster one of 8 classes: the
structure real cell embeddings have, not uniform noise (on which any IVF index needs far more
probes). Everything is measured side by side in one run, on the same arrays:

- kNN agreement (the pseudo-label filter; k = 10, 70 % must agree): 2,000 candidate rows
  (fresh draws of the mixture, 10 % with a wrong label) against the 10^6 reference rows.
  sslall's default path (`sslall.decide._index.knn_agreement`, above `index.approx_above` = 200k rows:
  IVF, float16 storage), the same function with the exact index (`IndexFlatIP`), and
  scikit-learn `NearestNeighbors(algorithm="brute", metric="cosine")` with the same agreement
  rule. Recall@10 of the approximate neighbours against scikit-learn's exact ones, and how many
  pass/fail decisions differ.
- Coreset (greedy k-center, budget 100) with 2,000 labeled rows as the initial centres:
  `sslall.decide._index.k_center_greedy` on all 10^6 rows (its centre search is exact faiss: 2,000
  centres is below `approx_above`); and on a 5*10^4-row subset of the pool, the same against a scikit-learn
  version (brute-force nearest centre, then the same greedy numpy loop), picks compared.
- IVF vs HNSW (both float16) on a 10^5-row subset: build + search time and recall, the
  reason `index.approx = "auto"` is IVF.

Peak RSS is sampled every 0.2 s during each step (`_proc.TreeSampler`); the baseline is the
process's RSS before the step (the data itself, ~1.3 GB at full size).

    python benchmarks/bench_knn_scale.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _proc  # noqa: E402
import _report  # noqa: E402

SIZES = {  # full / --quick; queries and centres are 2,000, not 10^4, to fit a shared 2-core VM
    "n": (1_000_000, 100_000), "queries": (2_000, 500), "labeled": (2_000, 500),
    "subset": (50_000, 10_000), "hnsw_n": (100_000, 10_000),
}
DIM, CLUSTERS, CLASSES, NOISE = 320, 100, 8, 0.04
K, MIN_FRACTION, BUDGET, WRONG = 10, 0.7, 100, 0.1


def mixture(n: int, centres: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n float32 rows around the centres (built in chunks: no float64 copy of the whole)."""
    cluster = rng.integers(0, len(centres), n)
    x = np.empty((n, centres.shape[1]), np.float32)
    for start in range(0, n, 65_536):
        stop = min(n, start + 65_536)
        noise = rng.standard_normal((stop - start, centres.shape[1]), dtype=np.float32)
        x[start:stop] = centres[cluster[start:stop]] + NOISE * noise
    return x, cluster


def measured(fn: Callable[[], object]) -> tuple[object, float, int, int]:
    """(result, seconds, peak RSS bytes during the call, RSS bytes before it)."""
    before = _proc.status_kib(os.getpid())[0] * 1024
    sampler = _proc.TreeSampler(os.getpid(), interval=0.2).start()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    sampler.stop()
    return result, seconds, max(s.main_rss for s in sampler.samples), before


def agreement(idx: np.ndarray, ref_labels: np.ndarray, q_labels: np.ndarray) -> np.ndarray:
    """The rule of `knn_agreement` over given neighbours (for scikit-learn's)."""
    return (ref_labels[idx] == q_labels[:, None]).mean(axis=1) >= MIN_FRACTION - 1e-9


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(approx, exact, strict=True)]))


def sklearn_k_center(pool: np.ndarray, centres: np.ndarray, budget: int) -> np.ndarray:
    """Greedy k-center as `k_center_greedy`, the nearest-centre search by scikit-learn brute force."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=1, algorithm="brute", metric="cosine").fit(centres)
    dist, _ = nn.kneighbors(pool)
    min_dist = 2.0 * dist[:, 0].astype(np.float64)  # squared Euclidean between unit rows
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    picked = np.empty(budget, np.int64)
    for t in range(budget):
        p = int(np.argmax(min_dist))
        picked[t] = p
        np.minimum(min_dist, np.maximum(2.0 - 2.0 * (unit @ unit[p]).astype(np.float64), 0.0), out=min_dist)
        min_dist[picked[: t + 1]] = -np.inf
    return picked


def run(quick: bool) -> dict:
    import faiss
    from sklearn.neighbors import NearestNeighbors

    from sslall.decide._index import APPROX_ABOVE, ivf_lists, k_center_greedy, knn, knn_agreement

    size = {key: value[1 if quick else 0] for key, value in SIZES.items()}
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    class_of = rng.integers(0, CLASSES, CLUSTERS)
    x, cluster = mixture(size["n"], centres, rng)
    labels = class_of[cluster]
    q, q_cluster = mixture(size["queries"], centres, rng)
    q_labels = class_of[q_cluster].copy()
    flip = rng.random(len(q)) < WRONG
    q_labels[flip] = (q_labels[flip] + rng.integers(1, CLASSES, flip.sum())) % CLASSES
    nlist, nprobe = ivf_lists(size["n"])
    default_index = (f"IVF{nlist}, nprobe {nprobe}, float16" if size["n"] > APPROX_ABOVE
                     else f"exact: {size['n']:,} rows is below index.approx_above")
    out: dict = {"default_index": default_index, "size": size, "dim": DIM,
                 "faiss_threads": faiss.omp_get_max_threads(), "load_before": os.getloadavg()}
    steps: dict[str, dict] = {}

    def step(name: str, fn: Callable[[], object]) -> object:
        result, seconds, peak, before = measured(fn)
        steps[name] = {"seconds": round(seconds, 2), "peak_rss_mib": _report.mib(peak),
                       "extra_rss_mib": _report.mib(peak - before)}
        print(f"{name}: {steps[name]}", file=sys.stderr, flush=True)
        return result

    sk = step("agreement_sklearn_brute", lambda: NearestNeighbors(
        n_neighbors=K, algorithm="brute", metric="cosine").fit(x).kneighbors(q, return_distance=False))
    sk_pass = agreement(sk, labels, q_labels)
    exact_pass = step("agreement_faiss_exact", lambda: knn_agreement(
        x, labels, q, q_labels, k=K, min_fraction=MIN_FRACTION, approx_above=size["n"]))
    approx_pass = step("agreement_sslall_default", lambda: knn_agreement(
        x, labels, q, q_labels, k=K, min_fraction=MIN_FRACTION))
    _, approx_idx = knn(x, q, K)
    out["agreement"] = {
        "recall_at_10_default": recall(approx_idx, sk),
        "decisions_differ_default_vs_sklearn": int((approx_pass != sk_pass).sum()),
        "decisions_differ_exact_vs_sklearn": int((exact_pass != sk_pass).sum()),
        "passed": int(sk_pass.sum()), "wrong_labels": int(flip.sum()),
        "wrong_labels_passed": int((sk_pass & flip).sum()),
    }

    labeled = x[rng.choice(len(x), size["labeled"], replace=False)]
    step("coreset_sslall_full", lambda: k_center_greedy(x, labeled, BUDGET))
    sub = x[: size["subset"]]
    picks_sslall = step("coreset_sslall_subset", lambda: k_center_greedy(sub, labeled, BUDGET))
    picks_sk = step("coreset_sklearn_subset", lambda: sklearn_k_center(sub, labeled, BUDGET))
    out["coreset_same_picks_subset"] = int(len(set(picks_sslall.tolist()) & set(picks_sk.tolist())))

    part = x[: size["hnsw_n"]]
    _, exact_part = step("index_exact_subset", lambda: knn(part, q, K, approx_above=len(part)))
    recalls = {}
    for method in ("ivf", "hnsw"):
        _, idx = step(f"index_{method}_subset", lambda m=method: knn(part, q, K, approx_above=0, approx=m))
        recalls[method] = recall(idx, exact_part)
    out["index_recall_subset"] = recalls
    out["steps"] = steps
    out["load_after"] = os.getloadavg()
    return out


def report(res: dict, quick: bool) -> None:
    s, st, ag = res["size"], res["steps"], res["agreement"]
    n, nq, sub = f"{s['n']:,}", f"{s['queries']:,}", f"{s['subset']:,}"

    def row(what: str, name: str, base: str | None = None) -> list:
        ratio = f"{st[base]['seconds'] / st[name]['seconds']:.1f}x" if base else ""
        return [what, st[name]["seconds"], ratio, st[name]["peak_rss_mib"], st[name]["extra_rss_mib"]]

    headers = ["step", "seconds", "speed-up vs sklearn", "peak RSS MiB", "RSS above the step's start MiB"]
    rows = [
        row(f"kNN agreement, scikit-learn brute (cosine): {nq} queries x {n} rows",
            "agreement_sklearn_brute"),
        row("kNN agreement, exact faiss (`IndexFlatIP`)", "agreement_faiss_exact", "agreement_sklearn_brute"),
        row(f"kNN agreement, sslall default ({res['default_index']})", "agreement_sslall_default",
            "agreement_sklearn_brute"),
        row(f"coreset, sslall: {n} pool rows, {s['labeled']:,} centres, budget {BUDGET}",
            "coreset_sslall_full"),
        row(f"coreset, scikit-learn brute: {sub}-row subset of the pool", "coreset_sklearn_subset"),
        row(f"coreset, sslall: the same {sub}-row subset", "coreset_sslall_subset", "coreset_sklearn_subset"),
        row(f"index: exact, {s['hnsw_n']:,} rows, {nq} queries", "index_exact_subset"),
        row(f"index: IVF float16, same (recall@10 {res['index_recall_subset']['ivf']:.3f})",
            "index_ivf_subset"),
        row(f"index: HNSW float16, same (recall@10 {res['index_recall_subset']['hnsw']:.3f})",
            "index_hnsw_subset"),
    ]
    body = "\n".join([
        f"{n} float32 embeddings of width {res['dim']}, {CLUSTERS} Gaussian clusters on the unit sphere "
        f"(noise {NOISE}/dimension) in {CLASSES} classes; {nq} candidate rows ({WRONG:.0%} with a wrong "
        f"label) for kNN agreement (k = {K}, {MIN_FRACTION:.0%} must agree). faiss on "
        f"{res['faiss_threads']} OpenMP threads, scikit-learn on numpy's BLAS threads; all in one "
        "process, one step after another (`benchmarks/bench_knn_scale.py` docstring).",
        "",
        _report.table(headers, rows),
        "",
        f"- Recall@10 of sslall's default (approximate) neighbours against scikit-learn's exact ones: "
        f"**{ag['recall_at_10_default']:.4f}**; kNN-agreement decisions that differ from scikit-learn's: "
        f"{ag['decisions_differ_default_vs_sklearn']} of {s['queries']:,} (exact faiss: "
        f"{ag['decisions_differ_exact_vs_sklearn']}). {ag['passed']:,} candidates pass; of the "
        f"{ag['wrong_labels']:,} with a wrong label, {ag['wrong_labels_passed']:,} pass.",
        f"- Coreset picks shared by sslall and the scikit-learn version on the subset: "
        f"{res['coreset_same_picks_subset']} of {BUDGET}. On the full pool scikit-learn was not run "
        f"(its brute-force centre search over {n} rows is the same work as exact faiss, slower); "
        "sslall's centre search is exact faiss there, since the labeled centres are below "
        "`index.approx_above`.",
        f"- Load average before/after: {[round(v, 2) for v in res['load_before']]} / "
        f"{[round(v, 2) for v in res['load_after']]} (a shared machine: trust the ratios).",
        "- No GPU: `faiss.get_num_gpus() > 0` moves these indexes to the GPU, not measured here.",
    ])
    _report.write_section("knn-scale", "kNN at scale: kNN agreement and coreset on 10^6 embeddings",
                          body, quick=quick)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10^5 rows instead of 10^6 (smoke size)")
    ap.add_argument("--no-write", action="store_true", help="print the JSON only")
    args = ap.parse_args()
    res = run(args.quick)
    if not args.no_write:
        report(res, args.quick)
    _report.emit(res)


if __name__ == "__main__":
    main()
