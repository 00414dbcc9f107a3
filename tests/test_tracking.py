"""`[tracking]`: real rounds logged to TensorBoard (event files read back with TensorBoard's own
reader) and to MLflow when it is installed; tracking trouble is a warning, never a failed round."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import invoke
from test_rounds import build_workspace

from sslall.config import config_from_dict
from sslall.errors import ConfigError
from sslall.report._tracking import EPOCH_KEYS

SPEED = "[route]\nlabel_issue_folds = 0\n"  # the out-of-fold label search is not what is tested here


def _configure(ws: Path, tracking: str, *, heads: int = 2) -> None:
    config = ws / "sslall.toml"
    text = config.read_text().replace("[route]", SPEED, 1)
    text = text.replace("[train]", f"[train]\nhead_ensemble = {heads}", 1)
    config.write_text(f"{text}\n[tracking]\n{tracking}\n")


def _round(runner, ws: Path) -> dict:
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_rounds_are_logged_to_tensorboard(tmp_path: Path, runner) -> None:
    ws = build_workspace(tmp_path, runner)
    _configure(ws, 'tensorboard = "tb"')
    summaries = [_round(runner, ws), _round(runner, ws)]
    assert not [w for s in summaries for w in s["warnings"] if "logged" in w or "tracking" in w]
    for n in (1, 2):
        history = json.loads((ws / "runs" / f"round-{n:04d}" / "history.json").read_text())
        logged = _scalars(ws / "tb" / f"round-{n:04d}")
        assert set(logged) == {f"{key}/head-{k}" for key in EPOCH_KEYS for k in (1, 2)}
        for model in history["models"]:
            for key in EPOCH_KEYS:
                assert logged[f"{key}/{model['model']}"] == [
                    (e["epoch"], pytest.approx(e[key], rel=1e-6)) for e in model["epochs"]]
    rounds = _scalars(ws / "tb" / "rounds")
    pools = {f"pools/{p}" for p in summaries[-1]["pools"]}
    assert set(rounds) == {"holdout/macro_f1", "holdout/accuracy", "holdout/ece", "pseudo/added",
                           "pseudo/removed", "pseudo/relabelled", "review/sent"} | pools
    for key in ("macro_f1", "accuracy", "ece"):
        assert rounds[f"holdout/{key}"] == [(s["round"], pytest.approx(s["metrics"][key], rel=1e-6))
                                            for s in summaries]
    for tag in pools:
        assert rounds[tag] == [(s["round"], s["pools"].get(tag[6:], 0)) for s in summaries]
    added = [sum(n for kind, n in s["moves"].items() if kind == "unlabeled->pseudo") for s in summaries]
    assert [v for _, v in rounds["pseudo/added"]] == added and added[0] > 0
    assert [v for _, v in rounds["review/sent"]] == [s["moves"].get("unlabeled->review", 0)
                                                    for s in summaries]


def test_mlflow(tmp_path: Path, runner) -> None:
    """With MLflow installed, a file store read back with its client; without it, the one-line
    install hint as a warning of a round that otherwise succeeds."""
    ws = build_workspace(tmp_path, runner)
    _configure(ws, 'mlflow = "file:mlruns"', heads=1)
    summary = _round(runner, ws)
    if importlib.util.find_spec("mlflow") is None:
        assert summary["warnings"].count(
            "tracking.mlflow is set but mlflow is not installed (pip install 'sslall[mlflow]'); the round "
            "is recorded, only not logged there") == 1
        assert (ws / "runs" / "round-0001" / "history.json").is_file() and summary["round"] == 1
        assert not (ws / "mlruns").exists()
        return
    from mlflow.tracking import MlflowClient

    assert summary["warnings"] == [w for w in summary["warnings"] if "mlflow" not in w.lower()]
    client = MlflowClient(tracking_uri=(ws / "mlruns").as_uri())
    experiment = client.get_experiment_by_name(f"sslall {ws.name}")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "round-0001" and run.info.status == "FINISHED"
    assert run.data.params == {"round": "1", "mode": "head"}
    assert run.data.metrics["holdout/macro_f1"] == pytest.approx(summary["metrics"]["macro_f1"])
    history = json.loads((ws / "runs" / "round-0001" / "history.json").read_text())
    epochs = client.get_metric_history(run.info.run_id, "train_loss/head")
    assert [m.step for m in epochs] == [e["epoch"] for e in history["models"][0]["epochs"]]


def test_tracking_trouble_is_a_warning_not_a_failed_round(tmp_path: Path, runner) -> None:
    ws = build_workspace(tmp_path, runner)
    (ws / "taken").write_text("a file where the event folder should go")
    _configure(ws, 'tensorboard = "taken"', heads=1)
    summary = _round(runner, ws)
    (line,) = [w for w in summary["warnings"] if "tensorboard" in w]
    assert line.startswith("round 1 was not logged to tensorboard (") and "\n" not in line
    assert line.endswith("; the round itself is recorded")
    result = invoke(runner, "status", "-w", ws, "--json")
    assert result.exit_code == 0 and [r["round"] for r in json.loads(result.stdout)["rounds"]] == [1]


def test_tracking_keys_are_validated() -> None:
    config = config_from_dict({"classes": ["a", "b"], "tracking": {"tensorboard": "tb"}})
    assert config.tracking.tensorboard == "tb" and config.tracking.mlflow == ""
    with pytest.raises(ConfigError, match="tracking.tensorboard"):
        config_from_dict({"classes": ["a", "b"], "tracking": {"tensorboard": 1}})
    with pytest.raises(ConfigError, match="tracking.wandb"):
        config_from_dict({"classes": ["a", "b"], "tracking": {"wandb": "x"}})
