"""Logging rounds to TensorBoard and MLflow (`[tracking]` in sslall.toml).

After a round commits, `track_round` logs two kinds of scalars:

- every epoch of every model the round trained (its history.json), at step = epoch:
  `train_loss/<model>`, `val_loss/<model>`, `val_macro_f1/<model>`, `lr/<model>`,
  `seconds/<model>` (model: head-1 ... head-K, last-stage or finetune; the holdout scores
  only with a holdout);
- the round's summary, at step = round number: `holdout/macro_f1`, `holdout/accuracy`,
  `holdout/ece` (with a holdout), `pools/<pool>` (sizes after the round), `pseudo/added`,
  `pseudo/removed`, `pseudo/relabelled`, `review/sent`.

TensorBoard (`tracking.tensorboard`, a folder relative to the workspace) gets one run per round,
`<folder>/round-NNNN`, holding its epoch curves (so the curves of several rounds overlay) and
one run `<folder>/rounds` holding the summaries (one curve over the rounds). MLflow
(`tracking.mlflow`, a tracking URI; a relative `file:` URI is taken relative to the workspace)
gets one run per round, `round-NNNN`, in the experiment `sslall <workspace folder name>`, with
both kinds and the params round and mode.

Tracking never fails a round: a missing package, an unreachable server or an unwritable folder
is one line in the round's warnings, like Label Studio trouble.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sslall.report._data import read_history

if TYPE_CHECKING:
    from sslall.config import Config
    from sslall.workspace import Workspace

__all__ = ["epoch_scalars", "round_scalars", "track_round"]

Scalar = tuple[str, float, int]  # tag, value, step
EPOCH_KEYS = ("train_loss", "val_loss", "val_macro_f1", "lr", "seconds")
MLFLOW_BATCH = 1000  # the most metrics MLflow's log_batch takes in one call


def track_round(ws: Workspace, config: Config, summary: dict) -> list[str]:
    """Log a committed round (`summary`: `RoundResult.summary()`; the epochs are read from its
    folder's history.json) to every tracker `[tracking]` names; returns the warnings, one line
    per tracker that failed, never raises."""
    tracking = config.tracking
    if not (tracking.tensorboard or tracking.mlflow):
        return []
    history = read_history(Path(summary["run_dir"])) or {}
    warnings = []
    for name, enabled, log in (("tensorboard", tracking.tensorboard, _tensorboard),
                               ("mlflow", tracking.mlflow, _mlflow)):
        if not enabled:
            continue
        missing = _missing(name)
        if missing:
            warnings.append(missing)
            continue
        try:
            log(ws, enabled, summary, history)
        except Exception as exc:  # whatever a tracker raises is a warning, never a failed round
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            warnings.append(f"round {summary['round']} was not logged to {name} "
                            f"({type(exc).__name__}: {reason}); the round itself is recorded")
    return warnings


def epoch_scalars(history: dict) -> Iterator[Scalar]:
    """(tag, value, epoch) of every epoch of every model in a history.json; None values skipped."""
    for model in history.get("models", []):
        for epoch in model["epochs"]:
            for key in EPOCH_KEYS:
                if epoch.get(key) is not None:
                    yield f"{key}/{model['model']}", float(epoch[key]), int(epoch["epoch"])


def round_scalars(summary: dict) -> Iterator[Scalar]:
    """(tag, value, round) of a round's summary: holdout scores, pool sizes, pseudo-label and
    review moves."""
    step = int(summary["round"])
    metrics = summary.get("metrics") or {}
    for key in ("macro_f1", "accuracy", "ece"):
        if metrics.get(key) is not None:
            yield f"holdout/{key}", float(metrics[key]), step
    for pool, n in sorted((summary.get("pools") or {}).items()):
        yield f"pools/{pool}", float(n), step
    counts = {"pseudo/added": 0, "pseudo/removed": 0, "pseudo/relabelled": 0, "review/sent": 0}
    for kind, n in (summary.get("moves") or {}).items():
        source, _, target = kind.partition("->")
        if target == "pseudo":
            counts["pseudo/relabelled" if source == "pseudo" else "pseudo/added"] += n
        elif source == "pseudo":
            counts["pseudo/removed"] += n
        if target == "review":
            counts["review/sent"] += n
    for tag, n in counts.items():
        yield tag, float(n), step


# --- implementation ---------------------------------------------------------------------


def _missing(package: str) -> str | None:
    """The install hint when `package` is not installed; None when it is."""
    if importlib.util.find_spec(package) is not None:
        return None
    install = f"pip install 'sslall[{'tracking' if package == 'tensorboard' else 'mlflow'}]'"
    return (f"tracking.{package} is set but {package} is not installed ({install}); the round is "
            "recorded, only not logged there")


def _tensorboard(ws: Workspace, folder: str, summary: dict, history: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    root = ws.root / folder
    for run, scalars in ((f"round-{int(summary['round']):04d}", epoch_scalars(history)),
                         ("rounds", round_scalars(summary))):
        writer = SummaryWriter(log_dir=str(root / run))
        try:
            for tag, value, step in scalars:
                writer.add_scalar(tag, value, step)
        finally:
            writer.close()


def _mlflow(ws: Workspace, uri: str, summary: dict, history: dict) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    if uri.startswith("file:") and not uri.startswith("file:/"):
        uri = (ws.root / uri[len("file:"):]).resolve().as_uri()
    client = MlflowClient(tracking_uri=uri)
    name = f"sslall {ws.root.name}"
    found = client.get_experiment_by_name(name)
    experiment = found.experiment_id if found is not None else client.create_experiment(name)
    run = client.create_run(experiment, run_name=f"round-{int(summary['round']):04d}").info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(tag, value, now, step) for tag, value, step in
               [*epoch_scalars(history), *round_scalars(summary)]]
    params = [Param("round", str(summary["round"])), Param("mode", str(history.get("mode", "")))]
    status = "FAILED"
    try:
        client.log_batch(run, params=params)
        for start in range(0, len(metrics), MLFLOW_BATCH):
            client.log_batch(run, metrics=metrics[start:start + MLFLOW_BATCH])
        status = "FINISHED"
    finally:
        client.set_terminated(run, status=status)
