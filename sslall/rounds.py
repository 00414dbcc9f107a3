"""One self-training round, top to bottom (the loop of docs/DESIGN: pull, verify, train,
calibrate, score, select, route, record, push).

Nothing is written to the pool store until the very end, where every move of the round, the
sample weights for the next round and the round's record commit in one transaction. The round's
files are written to a temporary folder and renamed into `runs/round-NNNN/` just before that
commit; the store is the truth, so a folder without a committed round is left-over from a killed
round and is replaced by the next one. A round killed at any point leaves the pools as they were.
After its commit, with `runs.keep_last` above 0, the round removes old round folders, still
under its lock (`sslall.report._prune`); a holdout too small to trust is a line in `warnings`.

With `[labelstudio] url` set, the round first pulls the annotators' answers (their moves commit
on their own, before training, so the round trains on them) and, after its commit, pushes the
review queue. Server trouble never fails a round: it becomes one line in `warnings`, the review
queue stays as it is, and the next pull or push catches up. `[tracking]` trouble is a warning too.

Under torchrun (`dist`, see `sslall.model._distributed`) rank 0 runs this same round and alone takes
the lock, reads and writes the store, the cache and the run folder; once its snapshot is ready
it sends it to the other ranks, which train (DDP) and score their shards with it, then return.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sslall._faults import fault_point
from sslall._fsutil import NotRegularFile, sha256_file
from sslall._progress import Progress
from sslall.config import Config
from sslall.errors import SslallError, UsageError
from sslall.model._distributed import Dist, RankZeroFailed, broadcast
from sslall.model._launcher import record_exit_code
from sslall.store._holdout import holdout_warning
from sslall.store._pools import PoolStore
from sslall.store._records import Move, RoundRecord, utc_now
from sslall.store._snapshot import Snapshot, take_snapshot
from sslall.workspace import Workspace, round_lock

if TYPE_CHECKING:
    from sslall.decide._label_issues import LabelIssue
    from sslall.decide._scores import Scores
    from sslall.model._learner import Calibration, Learner

__all__ = ["RoundResult", "run_round"]

log = logging.getLogger(__name__)
ROUTING_ONLY = frozenset({"unlabeled->review"})  # move kinds that change no training data
CHANGED_RETRIES = 3  # times a round verifies again after finding a file edited while it trains


@dataclass
class RoundResult:
    """What a round did; `summary` is what the store and `--json` record."""

    round: int
    run_dir: Path
    moves: dict[str, int]
    metrics: dict | None
    previous_metrics: dict | None
    pools: dict[str, int]
    seconds: dict[str, float]
    labelstudio: dict | None = None
    warnings: list[str] = field(default_factory=list)
    # human-labelled cells (labeled + holdout) at the round's start, after its Label Studio
    # pull, minus those after the previous round: answers pulled or imported, images added
    human_labels_added: int = 0
    # suspected human label errors found (`runs/round-NNNN/label_issues.csv`); None: not searched
    label_issues: int | None = None

    @property
    def changed(self) -> bool:
        """Whether the round changed what the next round would learn from (`sslall run` stops
        when it did not): a pseudo label added, removed or relabelled (every move but
        unlabeled -> review), a file quarantined, or human labels that arrived since the
        previous round (Label Studio answers pulled, `review import`, `add labeled`). Cells
        sent to review alone are no change: the next round would train on the same labels.
        """
        return self.human_labels_added != 0 or any(
            n for kind, n in self.moves.items() if kind not in ROUTING_ONLY)

    def summary(self) -> dict:
        return {"round": self.round, "run_dir": str(self.run_dir), "moves": self.moves,
                "metrics": self.metrics, "previous_metrics": self.previous_metrics,
                "pools": self.pools, "seconds": self.seconds, "labelstudio": self.labelstudio,
                "warnings": self.warnings, "label_issues": self.label_issues}


def verify_files(snapshot: Snapshot, progress: Progress | None = None) -> Snapshot:
    """Re-hash every file; a missing or changed one is quarantined, never trained on.

    The quarantine moves already in `snapshot` are kept. A fifo, socket or device where the
    image was is refused without blocking (`changed-file`).
    """
    kept, moves = [], list(snapshot.quarantine)
    for i, s in enumerate(snapshot.rows):
        try:
            ok = sha256_file(s.path) == s.id
            reason = "changed-file: the file's bytes changed since import"
        except NotRegularFile as exc:
            ok, reason = False, f"changed-file: the file {exc.strerror}"
        except OSError as exc:
            ok, reason = False, f"missing-file: {exc.strerror}"
        if ok:
            kept.append(s)
        else:
            moves.append(Move(s.id, "quarantine", from_pool=s.pool, reason=reason))
        if progress and (i % 256 == 0 or i == len(snapshot.rows) - 1):
            progress("verify", i + 1, len(snapshot.rows))
    return Snapshot(snapshot.classes, kept, moves)


@contextmanager
def _timed(seconds: dict[str, float], step: str, *, pause: bool = True) -> Iterator[None]:
    start = time.perf_counter()
    log.info("round step %s", step)
    if pause:
        fault_point(step)
    try:
        yield
    finally:
        seconds[step] = round(time.perf_counter() - start, 3)


@contextmanager
def _not_recorded_on_failure(round_no: int) -> Iterator[None]:
    """A full or read-only disk, or a store that refuses a write, fails the round in one line.

    The store commit is the round's last write, so nothing of the round is recorded; a folder
    it was writing is removed by `write_run_dir`, and the next round starts afresh.
    """
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        if getattr(exc, "filename", None):
            reason += f": {exc.filename}"
        raise SslallError(f"round {round_no} failed and was not recorded ({reason}); "
                          "the pools are unchanged") from exc


def run_round(ws: Workspace, config: Config, *, progress: Progress | None = None,
              on_calibrated: Callable[[Learner, Calibration], None] | None = None,
              dist: Dist | None = None) -> RoundResult | None:
    """Make one full round on a workspace; see the module docstring.

    `on_calibrated(learner, calibration)` lets a caller use the round's model before the round
    commits (the simulator scores its test set there); it must not touch the store.
    Ranks other than 0 of a torchrun group return None.
    """
    from sslall.decide._metrics import classification_metrics
    from sslall.decide._route import decide_pseudo_labels, decide_routing
    from sslall.labelstudio._pull import pull_if_configured
    from sslall.labelstudio._push import push_if_configured
    from sslall.report._runfiles import write_run_dir
    from sslall.report._tracking import track_round

    if dist is not None and not dist.is_main:
        return _follow_round(ws, config, dist)
    seconds: dict[str, float] = {}
    with _leading(dist) as send_snapshot, round_lock(ws), PoolStore(ws.db_path) as store:
        round_no = store.last_round() + 1
        started = utc_now()
        pulled = None
        with _not_recorded_on_failure(round_no):
            _remove_partial_folders(ws)
            if config.labelstudio.url:
                with _timed(seconds, "pull"):
                    pulled = pull_if_configured(ws, config, store)
            with _timed(seconds, "verify"):
                snapshot = verify_files(take_snapshot(store, config.classes), progress)
            _require_training_data(snapshot)
            send_snapshot(snapshot, round_no)
            snapshot, learner, scores = _train_and_score(ws, config, snapshot, round_no, seconds,
                                                         progress, dist)
            with _timed(seconds, "calibrate"):
                calibration = learner.calibrate(scores, snapshot)
                probs = calibration.probs
            if on_calibrated is not None:
                on_calibrated(learner, calibration)
            with _timed(seconds, "select"):
                pseudo = decide_pseudo_labels(config, snapshot, probs, scores.embeddings,
                                              scores.hidden)
            with _timed(seconds, "route"):
                routing = decide_routing(config, snapshot, probs, scores, pseudo,
                                         rng=np.random.default_rng(config.train.seed + round_no))
            with _timed(seconds, "label-issues"):
                issues = _label_issues(config, snapshot, learner, scores.embeddings, calibration,
                                       round_no)
            to_review = {m.sample_id for m in routing.moves}
            moves = (snapshot.quarantine + [m for m in pseudo.moves if m.sample_id not in to_review]
                     + routing.moves)
            holdout = snapshot.mask("holdout")
            metrics = None
            if holdout.any():
                y = snapshot.label_index()[holdout]
                metrics = classification_metrics(y, probs[holdout].argmax(1), probs[holdout],
                                                  list(config.classes))
            pools_before = store.pool_sizes()
            pools_after = _pools_after(pools_before, moves)
            last = store.rounds()[-1] if store.last_round() else {}
            result = RoundResult(round_no, ws.round_dir(round_no), _count_moves(moves), metrics,
                                 last.get("metrics"), pools_after, seconds,
                                 warnings=_holdout_warnings(snapshot),
                                 human_labels_added=_human_labels(pools_before)
                                 - _human_labels(last.get("pools", pools_before)),
                                 label_issues=None if issues is None else len(issues))
            with _timed(seconds, "record"):
                extra = {"calibration": calibration.report, "thresholds": pseudo.thresholds,
                         "pseudo_per_class": pseudo.per_class, "mode": learner.mode,
                         "device": str(learner.device), "train": learner.train_report}
                write_run_dir(ws, round_no, learner, calibration.temperature,
                              {**result.summary(), **extra}, snapshot, probs, moves,
                              routing.weights, embeddings=scores.embeddings,
                              label_issues=issues, ood=config.ood)
                fault_point("run-dir-renamed")
                store.apply_moves(moves, round_no=round_no, weights=routing.weights,
                                  record=RoundRecord(round_no, started, {
                                      **result.summary(), **{k: extra[k] for k in
                                                             ("mode", "device", "thresholds")}}))
        _prune_after_commit(ws, store, config, result)
        if pulled is not None:
            with _timed(seconds, "push"):
                pushed = push_if_configured(ws, config, store)
            result.labelstudio = {"pull": pulled.as_dict(), "push": pushed and pushed.as_dict()}
            result.warnings += [r.error for r in (pulled, pushed) if r and r.error]
        elif config.route.route != "retrain":
            result.warnings.append(_no_labelstudio(config.route.route, result.pools.get("review", 0)))
    result.warnings += track_round(ws, config, result.summary())  # after the lock: a slow server
    for line in result.warnings:
        log.warning("%s", line)
    return result


def _no_labelstudio(route: str, review: int) -> str:
    """The line for a round routed to Label Studio in a workspace with no server configured: the
    round is still useful (pseudo labels, a review queue for `review export`), but nothing went
    to annotators, which the person who chose the route expects."""
    return (f"route {route!r} sends the review queue to Label Studio, but [labelstudio] url is "
            f"not set in sslall.toml: nothing was pushed ({review} cell(s) wait in review; label "
            "them with `sslall review export`, or set the url)")


def _train_and_score(ws: Workspace, config: Config, snapshot: Snapshot, round_no: int,
                     seconds: dict[str, float], progress: Progress | None, dist: Dist | None
                     ) -> tuple[Snapshot, Learner, Scores]:
    """Train and score on the verified rows. Every image is decoded from the bytes hashed to
    its id; a file edited since `verify` raises `ChangedFile`, and then the rows are verified
    again (the edited file goes to quarantine with `changed-file`) and training starts over,
    at most `CHANGED_RETRIES` times (the feature cache keeps what was already extracted).
    Under torchrun the other ranks hold the first snapshot: the round fails instead (one line,
    nothing recorded) and the next round's `verify` quarantines the file."""
    from sslall.data._images import ChangedFile
    from sslall.model._learner import fit_learner

    for attempt in range(CHANGED_RETRIES + 1):
        try:
            with _timed(seconds, "train", pause=attempt == 0):
                learner = fit_learner(config, snapshot, cache_dir=ws.cache_dir, dist=dist,
                                      seed=config.train.seed + round_no, progress=progress)
            with _timed(seconds, "score", pause=attempt == 0):
                scores = learner.score(snapshot.rows, progress=progress,
                                       mc_samples=10 if config.route.strategy == "bald" else 0)
            return snapshot, learner, scores
        except ChangedFile as exc:
            if dist is not None or attempt == CHANGED_RETRIES:
                raise
            log.warning("%s; verifying the files again", str(exc).splitlines()[-1])
            with _timed(seconds, "verify", pause=False):
                snapshot = verify_files(snapshot, progress)
            _require_training_data(snapshot)
    raise AssertionError("unreachable")  # the loop returns or raises


def _label_issues(config: Config, snapshot: Snapshot, learner: Learner, embeddings: np.ndarray,
                  calibration: Calibration, round_no: int) -> list[LabelIssue] | None:
    """Suspected human label errors (confident learning on out-of-fold probabilities, see
    `sslall.model._out_of_fold`); None when `route.label_issue_folds` is 0."""
    from sslall.decide._label_issues import suspected_labels
    from sslall.model._out_of_fold import human_label_probs

    if not config.route.label_issue_folds:
        return None
    # the typical head's best epoch: one ensemble member that ran to the end does not set the cost
    epochs = int(np.median(learner.train_report.get("best_epoch") or [config.train.epochs]))
    rows, probs = human_label_probs(config, snapshot, embeddings, calibration.probs,
                                    temperature=calibration.temperature, epochs=epochs,
                                    folds=config.route.label_issue_folds,
                                    seed=config.train.seed + round_no, device=learner.device)
    return suspected_labels(snapshot, rows, probs)


def _remove_partial_folders(ws: Workspace) -> None:
    """Remove every `.partial-round-*` folder: under the round lock no other round is writing
    one, so each is the leftover of a killed round (whatever pid its name holds); the store,
    not a folder, records a round."""
    for folder in ws.partial_round_dirs():
        if folder.is_symlink() or not folder.is_dir():
            folder.unlink()
        else:
            shutil.rmtree(folder)


@contextmanager
def _leading(dist: Dist | None) -> Iterator[Callable[[Snapshot, int], None]]:
    """Rank 0's side: send the snapshot, or the error that came first, to the other ranks."""
    sent = False

    def send(snapshot: Snapshot, round_no: int) -> None:
        nonlocal sent
        broadcast(dist, (snapshot, round_no))
        sent = True

    try:
        yield send
    except SslallError as exc:
        if dist is not None and not sent:  # the others wait for a snapshot: end their wait
            record_exit_code(exc.exit_code)  # first: torchrun may stop rank 0 once they exit
            broadcast(dist, RankZeroFailed(str(exc), exc.exit_code))
        raise


def _follow_round(ws: Workspace, config: Config, dist: Dist) -> None:
    """A rank other than 0: take rank 0's snapshot, train and score with it, then return."""
    from sslall.model._learner import fit_learner

    message = broadcast(dist)
    if isinstance(message, RankZeroFailed):
        raise message
    snapshot, round_no = message
    learner = fit_learner(config, snapshot, cache_dir=ws.cache_dir, seed=config.train.seed + round_no,
                          dist=dist)
    learner.score(snapshot.rows)


def _holdout_warnings(snapshot: Snapshot) -> list[str]:
    """The holdout-too-small line (`sslall.store._holdout.holdout_warning`), if it applies."""
    line = holdout_warning(Counter(s.label for s in snapshot.rows if s.pool == "holdout"),
                           snapshot.classes)
    return [line] if line else []


def _prune_after_commit(ws: Workspace, store: PoolStore, config: Config, result: RoundResult) -> None:
    """Remove old round folders by `runs.keep_last` (under the round's lock, after its commit);
    a folder that cannot be removed is a warning, never a failed round."""
    from sslall.report._prune import prune_runs

    if config.runs.keep_last == 0:
        return
    try:
        plan = prune_runs(ws, store, config.runs.keep_last)
    except OSError as exc:
        result.warnings.append(f"old round folders were not pruned: {exc.strerror or exc}"
                               f"{f': {exc.filename}' if exc.filename else ''}")
        return
    if plan.remove:
        log.info("pruned the folders of round(s) %s (runs.keep_last = %d)",
                 ", ".join(map(str, plan.remove)), config.runs.keep_last)


def _require_training_data(snapshot: Snapshot) -> None:
    labels = snapshot.label_index()[snapshot.human_mask()]
    present = set(labels.tolist())
    missing = [c for i, c in enumerate(snapshot.classes) if i not in present]
    if not present:
        raise UsageError("the labeled pool is empty; add labeled images first (`sslall add labeled`)")
    if missing:
        raise UsageError(f"no labeled images of class(es) {missing}; every class needs at least "
                         "one (`sslall add labeled`)")


def _human_labels(pools: dict[str, int]) -> int:
    return pools.get("labeled", 0) + pools.get("holdout", 0)


def _count_moves(moves: list[Move]) -> dict[str, int]:
    return dict(Counter(f"{m.from_pool}->{m.to_pool}" for m in moves))


def _pools_after(before: dict[str, int], moves: list[Move]) -> dict[str, int]:
    after = dict(before)
    for m in moves:
        after[m.from_pool or ""] = after.get(m.from_pool or "", 0) - 1
        after[m.to_pool] = after.get(m.to_pool, 0) + 1
    after.pop("", None)
    return after
