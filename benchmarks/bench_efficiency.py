"""What labels buy on real cells: label fractions, acquisition strategies, threshold sweep (issue 4, 5a-c).

Three parts, each writing its own BENCHMARKS.md section; every figure comes from the real round
engine on the splits `bench_simulate.split` makes (a stratified 20 % test set, split seed 0).

- `fractions` (5a): `sslall simulate --baselines` from 1 %, 5 % and 10 % starting labels, per seed:
  the loop (SSL + active learning) against the same backbone and head trained without pseudo
  labels on the starting labels, on the labels the loop's last round had, and on every label.
- `strategies` (5b): every acquisition strategy against random at the same budget, the labels
  each needs before the test macro-F1 reaches 95 % of the all-labels baseline of its seed, and
  the area under its label-efficiency curve (AULC).
- `policies` (issue 16): each pseudo-label policy in the loop, with its pseudo-label precision
  and coverage, against supervised training on the loop's final human labels.
- `thresholds` (5c): one round-1 model per seed, then pseudo-label precision and coverage of the
  unlabeled pool at thresholds 0.7-0.99, fixed vs adaptive policy, with and without the kNN
  filter (`sslall.decide._route.decide_pseudo_labels`, the round's own selection code).

`--mode` picks the model mode (default head, the mode of the sections before issue 16; `auto`
is what a CPU runs by default, last-stage). Features or maps are cached per data set under --keep
(the first run of a set extracts them).

    python benchmarks/bench_efficiency.py --keep /tmp/beff                  # all parts, both sets
    python benchmarks/bench_efficiency.py --parts thresholds --sets taleqani --keep /tmp/beff
    python benchmarks/bench_efficiency.py --parts strategies policies --mode auto --keep /tmp/beff
    python benchmarks/bench_efficiency.py --parts fractions --fractions 0.01 0.05 --mode auto
    python benchmarks/bench_efficiency.py --quick                           # 24 images/class
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _report import data_root, emit, sslall_exe, table, work_folder, write_section
from bench_simulate import split


@dataclass(frozen=True)
class DataSet:
    folder: str
    rounds: int
    budget: int
    start_fraction: float  # the starting fraction, used by `strategies` and `thresholds`
    image_size: int | None = None  # None: the backbone's default


SETS = {
    "taleqani": DataSet("all-taleqani", 5, 20, 0.05),
    "pbc": DataSet("pbc-128", 5, 50, 0.02, image_size=128),
}
FRACTIONS = (0.01, 0.05, 0.10)
STRATEGIES = ("random", "margin", "least-confidence", "entropy", "bald", "coreset", "typiclust")
THRESHOLDS = (0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)
POLICIES = ("fixed", "adaptive", "propagation")
MODEL = {
    "head": "Head mode: frozen tf_efficientnet_lite0 (offline ImageNet weights), multi-scale "
            "features, an ensemble of 5 MLP heads",
    "last-stage": "Last-stage mode (what `auto` runs on a CPU): tf_efficientnet_lite0 (offline "
                  "ImageNet weights) frozen up to its last stage, the last stage and a head "
                  "trained on the cached maps of each cell upright and turned 90°, 224 px",
}
ABOUT = ("; default config otherwise (threshold 0.9, fixed policy, margin strategy, kNN filter "
         "on). Test = a stratified 20 % of the data set (split seed 0) that the loop never sees. "
         "Starting labels include the 30 % kept as the holdout.")


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"  # one seed: no spread to show
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


class Runner:
    """`sslall simulate` subprocesses whose JSON reports are kept and reused by their arguments."""

    def __init__(self, root: Path, name: str, quick: bool, mode: str = "head",
                 fractions: tuple[float, ...] = FRACTIONS) -> None:
        self.ds = SETS[name]
        self.fractions = fractions
        self.mode = "last-stage" if mode == "auto" else mode  # auto on a CPU, with lite0
        self.image_size = self.ds.image_size if self.mode == "head" else None
        self.root = root / name
        self.cache = self.root / "cache"
        data = self.root / "data"
        if not (data / "test").is_dir():
            shutil.rmtree(data, ignore_errors=True)
            split(data_root() / self.ds.folder, data, per_class=24 if quick else None)
        self.train, self.test = data / "train", data / "test"
        self.n_train = sum(1 for f in self.train.rglob("*") if f.is_file())
        self.rounds = 2 if quick else self.ds.rounds

    @property
    def about(self) -> str:
        return MODEL[self.mode] + ABOUT

    def simulate(self, *, fraction: float, seed: int, strategy: str = "margin",
                 baselines: bool = False, policy: str = "fixed") -> dict:
        key = f"f{fraction}-{strategy}-r{self.rounds}-b{self.ds.budget}-s{seed}"
        key += "" if policy == "fixed" else f"-{policy}"
        key += "" if self.mode == "head" else f"-{self.mode}"
        report = self.root / "runs" / f"{key}.json"
        if report.exists():
            found = json.loads(report.read_text())
            if "baselines" in found or not baselines:
                return found
        work = self.root / "runs" / key
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*sslall_exe(), "-q", "simulate", str(self.train), "--test-dir", str(self.test),
               "--label-fraction", str(fraction), "--rounds", str(self.rounds),
               "--budget", str(self.ds.budget), "--strategy", strategy,
               *(["--image-size", str(self.image_size)] if self.image_size else []),
               "--mode", self.mode, "--policy", policy, "--seed", str(seed), "--work", str(work),
               "--cache", str(self.cache), "--out", str(report),
               *(["--baselines"] if baselines else [])]
        print(" ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
        return json.loads(report.read_text())


def labels_used(row: dict) -> int:
    """Human labels the round's model trained and calibrated on."""
    return row["labeled"] + row["holdout"]


def coverage(row: dict, n_train: int) -> float:
    """Share of the cells without a human label that hold a pseudo label after the round."""
    return row["pseudo"] / max(n_train - labels_used(row), 1)


def aulc(report: dict) -> float:
    """Area under the label-efficiency curve (test macro-F1 against human labels, one point per
    round), divided by the span of labels: the mean macro-F1 over the labels spent."""
    labels = np.array([labels_used(r) for r in report["rounds"]], dtype=float)
    f1 = np.array([r["test"]["macro_f1"] for r in report["rounds"]])
    span = labels[-1] - labels[0]
    area = float(np.sum((f1[1:] + f1[:-1]) / 2 * np.diff(labels)))  # the trapezoid rule
    return float(f1[0]) if span <= 0 else area / span


def loop_minus_final(report: dict) -> float:
    """The loop's last macro-F1 minus supervised training on the same final human labels."""
    return (report["rounds"][-1]["test"]["macro_f1"]
            - report["baselines"]["supervised_final_labels"]["macro_f1"])


def part_fractions(runner: Runner, seeds: list[int]) -> tuple[str, list[dict]]:
    out, rows = [], []
    for fraction in runner.fractions:
        reports = [runner.simulate(fraction=fraction, seed=s, baselines=True) for s in seeds]
        last = [r["rounds"][-1] for r in reports]
        base = {k: [r["baselines"][k]["macro_f1"] for r in reports] for k in reports[0]["baselines"]}
        start = [labels_used(r["rounds"][0]) for r in reports]
        final = [labels_used(x) for x in last]
        precision = [x["pseudo_precision"] for x in last if x["pseudo_precision"] is not None]
        gain = [loop_minus_final(r) for r in reports if "supervised_final_labels" in r["baselines"]]
        out.append({"fraction": fraction, "seeds": seeds, "start_labels": start,
                    "final_labels": final, "loop": [x["test"]["macro_f1"] for x in last],
                    "baselines": base, "precision": precision, "loop_minus_final": gain})
        rows.append([f"{fraction:.0%}", round(float(np.mean(start))), round(float(np.mean(final))),
                     mean_sd(out[-1]["loop"]), mean_sd(precision),
                     mean_sd(base["supervised_same_labels"]),
                     mean_sd(base.get("supervised_final_labels", [])), mean_sd(gain),
                     mean_sd(base["supervised_all_labels"]),
                     reports[0]["baselines"]["supervised_all_labels"]["labels"]])
    text = "\n".join([
        f"{runner.rounds} rounds of {runner.ds.budget} oracle labels, seeds {seeds}; macro-F1 on "
        "the test set after the last round, mean ± sd over seeds. \"Same\", \"final\" and "
        "\"all\" are the same backbone and head trained without pseudo labels on the starting "
        "labels, on the human labels the loop's last round had (starting + bought), and on every "
        "training label.", "",
        table(["start", "labels at start", "labels at last round", "SSL + AL macro-F1",
               "pseudo precision", "supervised, same labels", "supervised, final labels",
               "loop minus final", "supervised, all labels", "all labels"], rows), ""])
    return text, out


def part_strategies(runner: Runner, seeds: list[int]) -> tuple[str, list[dict]]:
    fraction = runner.ds.start_fraction
    all_labels = {s: runner.simulate(fraction=fraction, seed=s, strategy="random",
                                     baselines=True)["baselines"]["supervised_all_labels"]
                  for s in seeds}
    out, rows = [], []
    for strategy in STRATEGIES:
        reports = [runner.simulate(fraction=fraction, seed=s, strategy=strategy) for s in seeds]
        needed = []
        for s, r in zip(seeds, reports, strict=True):
            goal = 0.95 * all_labels[s]["macro_f1"]
            hit = [labels_used(x) for x in r["rounds"] if x["test"]["macro_f1"] >= goal]
            needed.append(hit[0] if hit else None)
        f1 = [r["rounds"][-1]["test"]["macro_f1"] for r in reports]
        reached = [n for n in needed if n is not None]
        area = [aulc(r) for r in reports]
        covered = [coverage(r["rounds"][-1], runner.n_train) for r in reports]
        out.append({"strategy": strategy, "macro_f1": f1, "labels_to_95pct": needed,
                    "aulc": area, "coverage": covered})
        rows.append([strategy, mean_sd(f1), mean_sd(area),
                     mean_sd([r["rounds"][-1]["pseudo_precision"] or 0.0 for r in reports]),
                     mean_sd(covered), f"{len(reached)}/{len(seeds)}",
                     f"{np.mean(reached):.0f}" if reached else "-"])
    goal = np.mean([0.95 * all_labels[s]["macro_f1"] for s in seeds])
    most = labels_used(reports[0]["rounds"][-1])
    text = "\n".join([
        f"From {fraction:.0%} starting labels, {runner.rounds} rounds of {runner.ds.budget} oracle "
        f"labels (at most {most} labels), seeds {seeds}; the rest of the loop as by default. "
        f"95 % of the all-labels macro-F1 is {goal:.3f} on average over the seeds "
        "(each seed is held to its own all-labels baseline); \"labels to 95 %\" counts the human "
        "labels (holdout included) of the first round whose model reaches it, averaged over the "
        "seeds that reach it. AULC = the area under test macro-F1 against human labels (one "
        "point per round) over the span of labels, i.e. the mean macro-F1 along the way; "
        "coverage = the share of cells without a human label that hold a pseudo label after the "
        "last round.", "",
        table(["strategy", "macro-F1 after the last round", "AULC", "pseudo precision",
               "coverage", "seeds reaching 95 %", "labels to 95 %"], rows), ""])
    return text, out


def part_policies(runner: Runner, seeds: list[int]) -> tuple[str, list[dict]]:
    fraction = runner.ds.start_fraction
    out, rows = [], []
    for policy in POLICIES:
        reports = [runner.simulate(fraction=fraction, seed=s, baselines=True, policy=policy)
                   for s in seeds]
        per_round = [[(x["pseudo_precision"], coverage(x, runner.n_train)) for x in r["rounds"]]
                     for r in reports]
        precision = [p for rounds in per_round for p, _ in rounds if p is not None]
        f1 = [r["rounds"][-1]["test"]["macro_f1"] for r in reports]
        gain = [loop_minus_final(r) for r in reports]
        last_cov = [rounds[-1][1] for rounds in per_round]
        out.append({"policy": policy, "macro_f1": f1, "loop_minus_final": gain,
                    "precision_coverage_per_round": per_round})
        rows.append([policy, mean_sd(f1), mean_sd(gain), mean_sd(precision),
                     f"{min(precision):.3f}" if precision else "-", mean_sd(last_cov)])
    text = "\n".join([
        f"From {fraction:.0%} starting labels, {runner.rounds} rounds of {runner.ds.budget} oracle "
        f"labels, seeds {seeds}, margin strategy; only `pseudo.policy` changes. \"Loop minus "
        "final\" = the loop's last macro-F1 minus the same backbone and mode trained without pseudo "
        "labels on the loop's final human labels (per seed). Precision = share of the pseudo "
        "labels that are right, over every round and seed (mean ± sd, and the lowest); coverage "
        "= share of the cells without a human label that hold a pseudo label after the last "
        "round.", "",
        table(["policy", "macro-F1 after the last round", "loop minus final",
               "pseudo precision (rounds)", "lowest", "coverage"], rows), ""])
    return text, out


def part_thresholds(runner: Runner, seeds: list[int]) -> tuple[str, list[dict]]:
    from sslall.config import Config, with_overrides
    from sslall.decide._route import decide_pseudo_labels
    from sslall.experiments._simulate import SimulationSpec, link_cache, prepare_simulation
    from sslall.model._learner import fit_learner
    from sslall.store._pools import PoolStore
    from sslall.store._snapshot import take_snapshot

    base = Config(classes=("a", "b"))
    base = with_overrides(base, model={"mode": runner.mode, "image_size": runner.image_size})
    out: list[dict] = []
    for seed in seeds:
        with work_folder(None, "thresholds") as work:
            link_cache(work, runner.cache)
            spec = SimulationSpec(runner.train.resolve(), runner.test.resolve(), work, base, 1,
                                  label_fraction=runner.ds.start_fraction, seed=seed)
            prep = prepare_simulation(spec)
            with PoolStore(prep.ws.db_path) as store:
                snapshot = take_snapshot(store, prep.config.classes)
            learner = fit_learner(prep.config, snapshot, cache_dir=prep.ws.cache_dir,
                                  seed=prep.config.train.seed + 1)
            scores = learner.score(snapshot.rows)
            probs = learner.calibrate(scores, snapshot).probs
        truth = np.array([prep.config.classes.index(prep.truth[r.id]) for r in snapshot.rows])
        unlabeled = snapshot.mask("unlabeled")
        for policy in ("fixed", "adaptive"):
            for knn in (0.0, prep.config.pseudo.knn_agreement):
                for t in THRESHOLDS:
                    config = with_overrides(prep.config, pseudo={"threshold": t, "policy": policy,
                                                                 "knn_agreement": knn})
                    sel = decide_pseudo_labels(config, snapshot, probs, scores.embeddings).selected
                    pseudo = probs[sel].argmax(1)
                    right = pseudo == truth[sel]
                    per_class = [right[pseudo == k].mean() if (pseudo == k).any() else None
                                 for k in range(len(prep.config.classes))]
                    out.append({"seed": seed, "policy": policy, "knn": knn, "threshold": t,
                                "coverage": float(sel.sum() / unlabeled.sum()),
                                "precision": float(right.mean()) if sel.any() else None,
                                "min_class_precision": min((p for p in per_class if p is not None),
                                                           default=None),
                                "classes_without": sum(p is None for p in per_class)})
    rows = []
    for policy in ("fixed", "adaptive"):
        for knn in sorted({r["knn"] for r in out}):
            for t in THRESHOLDS:
                cell = [r for r in out if (r["policy"], r["knn"], r["threshold"]) == (policy, knn, t)]
                prec = [r["precision"] for r in cell if r["precision"] is not None]
                low = [r["min_class_precision"] for r in cell if r["min_class_precision"] is not None]
                rows.append([policy, "on" if knn else "off", t, mean_sd(prec),
                             f"{min(low):.3f}" if low else "-",
                             mean_sd([r["coverage"] for r in cell]),
                             sum(r["classes_without"] for r in cell)])
    text = "\n".join([
        f"Round 1 from {runner.ds.start_fraction:.0%} starting labels, seeds {seeds}: one model "
        "per seed (trained and calibrated as the round does), then the round's own pseudo-label "
        "selection (`decide_pseudo_labels`, class caps on) at each setting. Precision = share of "
        "the selected cells whose pseudo label is right; coverage = share of the unlabeled pool "
        "selected; \"worst class\" = the lowest precision of one class's pseudo labels over "
        "classes and seeds; \"classes with none\" = (class, seed) pairs that got no pseudo label.", "",
        table(["policy", "kNN filter", "threshold", "precision", "worst class", "coverage",
               "classes with none"], rows), ""])
    return text, out


PARTS = {"fractions": part_fractions, "strategies": part_strategies, "thresholds": part_thresholds,
         "policies": part_policies}
TITLES = {"fractions": "Label efficiency at 1 %, 5 % and 10 % labels on {folder}",
          "strategies": "Acquisition strategies vs random on {folder}",
          "thresholds": "Pseudo-label threshold sweep on {folder}",
          "policies": "Pseudo-label policies in the loop on {folder}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["taleqani", "pbc"])
    ap.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS),
                    help="starting label fractions of the `fractions` part")
    ap.add_argument("--mode", choices=("head", "last-stage", "auto"), default="head",
                    help="model mode (auto: what a CPU runs by default, last-stage)")
    ap.add_argument("--quick", action="store_true", help="24 images per class, 2 rounds")
    ap.add_argument("--keep", type=Path, help="keep splits, caches and reports here (and reuse them)")
    args = ap.parse_args()
    results: dict = {}
    with work_folder(args.keep, "efficiency") as root:
        for name in args.sets:
            runner = Runner(root, name, args.quick, args.mode, tuple(args.fractions))
            suffix = "" if runner.mode == "head" else f"-{runner.mode}"
            for part in args.parts:
                text, figures = PARTS[part](runner, args.seeds)
                results[f"{part}-{name}"] = figures
                title = TITLES[part].format(folder=runner.ds.folder)
                write_section(f"efficiency-{part}-{name}{suffix}",
                              title + ("" if runner.mode == "head" else f", {runner.mode} mode"),
                              f"{runner.about}\n\n{text}", quick=args.quick)
    emit({"benchmark": "efficiency", "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
