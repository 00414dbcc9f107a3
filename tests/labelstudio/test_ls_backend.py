"""`sslall serve` connected to the real Label Studio server as the project's ML backend: a task
imported by hand gets the model's prediction, and an annotation reaches the pool store through
the webhook Label Studio made for the backend."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Server, invoke
from ls_review import annotator_browser
from test_rounds import build_workspace
from typer.testing import CliRunner

from sslall.config import load_config
from sslall.labelstudio._backend import Backend
from sslall.labelstudio._client import choice_result
from sslall.labelstudio._http import make_server
from sslall.model._inference import Predictor
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace

pytestmark = pytest.mark.labelstudio


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def served(ls: Server, tmp_path_factory) -> dict:
    """A workspace after one tiny round (which pushed its review cells to the shared server),
    served by `sslall serve`'s backend on a free port."""
    root = tmp_path_factory.mktemp("ls-serve")
    ws = build_workspace(root, CliRunner())
    text = (ws / "sslall.toml").read_text()
    (ws / "sslall.toml").write_text(text + f'\n[labelstudio]\nurl = "{ls.url}"\nproject = '
                                    f'"serve {root.name}"\ndocument_root = "{ls.root}"\n'
                                    f'api_key_file = "{ls.key_file}"\nround_after = 1\n')
    result = invoke(CliRunner(), "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    workspace = Workspace(ws)
    server = make_server(Backend(workspace, workspace.config()), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = load_config(ws / "sslall.toml")
    with ls.client() as client:
        pid = client.find_project(config.labelstudio.project)[0]
    url = f"http://127.0.0.1:{server.server_address[1]}"
    backend = ls.sdk.ml.create(url=url, project=pid, title="sslall")
    yield {"ws": ws, "root": root, "pid": pid, "backend": backend, "server": server}
    server.shutdown()
    server.server_close()
    server.backend.wait_idle()


def test_the_backend_connects_with_the_round_in_use(ls: Server, served: dict) -> None:
    got = ls.sdk.ml.get(id=served["backend"].id)
    assert str(got.state).endswith("CO")  # connected: health and setup answered
    assert got.model_version == "round-1"


def test_a_task_imported_by_hand_gets_the_models_prediction(ls: Server, served: dict) -> None:
    with PoolStore(served["ws"] / "pools" / "pools.db", read_only=True) as store:
        cell = next(iter(store.samples("unlabeled")))
    rel = Path(cell.path).relative_to(ls.root).as_posix()
    [task] = ls.sdk.projects.import_tasks(id=served["pid"], request=[
        {"data": {"image": f"/data/local-files/?d={rel}"}}], return_task_ids=True).task_ids
    assert ls.sdk.predictions.list(task=task) == []
    ls.sdk.tasks.get(id=task)  # opening a task without a prediction asks the backend for one
    [pred] = wait_for("the prediction", lambda: ls.sdk.predictions.list(task=task))
    [want] = Predictor(served["ws"] / "runs" / "round-0001").predict([cell.path])
    k = int(want.probs.argmax())
    assert pred.model_version == "round-1"
    assert pred.score == pytest.approx(float(want.probs[k]), abs=1e-5)
    assert pred.result == choice_result(load_config(served["ws"] / "sslall.toml").classes[k])


def test_an_annotator_sees_the_live_prediction_in_chromium(ls: Server, served: dict,
                                                          tmp_path: Path) -> None:
    """A task imported by hand, opened in the browser as an annotator opens it: Label Studio
    asks the backend, and the labelling view shows the model's guess as round 1's."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with PoolStore(served["ws"] / "pools" / "pools.db", read_only=True) as store:
        cell = list(store.samples("unlabeled"))[1]
    rel = Path(cell.path).relative_to(ls.root).as_posix()
    [task] = ls.sdk.projects.import_tasks(id=served["pid"], request=[
        {"data": {"image": f"/data/local-files/?d={rel}"}}], return_task_ids=True).task_ids
    assert ls.sdk.predictions.list(task=task) == []
    browser = annotator_browser(ls)
    try:
        browser.get(f"{ls.url}/projects/{served['pid']}/data?task={task}")

        def shown(b) -> bool:  # the first open asks the backend; a reload shows what it said
            if "round-1" in b.find_element(By.TAG_NAME, "body").text:
                return True
            b.refresh()
            return False

        WebDriverWait(browser, 120, poll_frequency=5).until(shown)
    except Exception:
        browser.save_screenshot(str(tmp_path / "page.png"))
        raise
    finally:
        browser.quit()
    # the guess came from the backend, live; a refresh while its first answer is still on the way
    # (a loaded machine) makes Label Studio ask again, so there may be two, both round 1's
    preds = ls.sdk.predictions.list(task=task)
    assert preds and all(pred.model_version == "round-1" for pred in preds), preds


def test_an_annotation_reaches_the_pool_store_through_the_webhook(ls: Server, served: dict
                                                                  ) -> None:
    hooks = [h for h in ls.sdk.webhooks.list(project=served["pid"])
             if h.url.endswith("/webhook")]
    assert hooks, "Label Studio made no webhook for the backend"
    tasks = {}
    for t in ls.sdk.tasks.list(project=served["pid"], fields="task_only", include="id,data"):
        if "sample_id" in (t.data or {}):
            tasks[t.data["sample_id"]] = t.id
    sample_id, task = sorted(tasks.items())[0]
    db = served["ws"] / "pools" / "pools.db"
    with PoolStore(db, read_only=True) as store:
        assert store.get(sample_id).pool == "review"
        label = "L3" if store.get(sample_id).prediction != "L3" else "L1"
    ls.sdk.annotations.create(id=task, result=choice_result(label), lead_time=2.0)

    def labelled() -> bool:
        with PoolStore(db, read_only=True) as store:
            s = store.get(sample_id)
            return s.pool == "labeled" and s.label == label and s.label_source == "labelstudio"

    wait_for("the webhook's pull", labelled)
    backend = served["server"].backend
    assert backend.last_pull["labeled"] == 1

    # round_after = 1: that label started a round in its own process, whose push gave the
    # tasks still open round 2's guess and the new ones their acquisition score and rank
    wait_for("the queued round", lambda: backend.round_proc is not None, 30)
    assert backend.round_proc.wait(timeout=300) == 0
    with PoolStore(db, read_only=True) as store:
        assert store.last_round() == 2
        still_open = [s.id for s in store.samples("review") if s.id in tasks]
    with (served["ws"] / "runs" / "round-0002" / "predictions.csv").open() as handle:
        guesses = {r["sample_id"]: r for r in csv.DictReader(handle)}
    assert still_open
    for sid in still_open:
        [pred] = ls.sdk.predictions.list(task=tasks[sid])
        assert pred.model_version == "round-2"
        assert pred.result == choice_result(guesses[sid]["prediction"])
        assert pred.score == pytest.approx(float(guesses[sid]["confidence"]), abs=1e-5)
    new = [t.data for t in ls.sdk.tasks.list(project=served["pid"], fields="task_only",
                                             include="id,data")
           if (t.data or {}).get("sample_id") and t.data["sample_id"] not in tasks]
    assert new and all(d["sslall_rank"] >= 1 and isinstance(d["sslall_score"], float)
                       for d in new)
    with PoolStore(db, read_only=True) as store:  # as the round's reason says
        reasons = {d["sample_id"]: store.get(d["sample_id"]).reason for d in new}
    for d in new:
        assert f"{d['sslall_score']:.3g}, rank {d['sslall_rank']} of " in reasons[d["sample_id"]]
