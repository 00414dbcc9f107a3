"""Label Studio test helpers: a workspace whose cells wait in review, the tasks the server holds
for it, and its pools."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CLASSES, Server, headless_chromium, write_image

from sslall._fsutil import sha256_file
from sslall.config import Config, LabelStudioConfig, load_config
from sslall.labelstudio import _records as records
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample
from sslall.workspace import create_workspace


def review_ws(tmp_path: Path, server: Server, n: int = 6, **ls_keys) -> tuple[Path, list[str]]:
    """A workspace whose `n` cells wait in review with a model guess (no round needed)."""
    settings = {"url": server.url, "project": f"p {tmp_path.name}"[:50],
                "document_root": str(server.root or ""), "api_key_file": str(server.key_file),
                "batch_size": 100, **ls_keys}
    ws = create_workspace(tmp_path / "ws", Config(classes=CLASSES,
                                                  labelstudio=LabelStudioConfig(**settings)))
    new = []
    for i in range(n):
        path = write_image(tmp_path / "cells" / f"c{i}.png", 5000 + i, size=20)
        new.append(NewSample(sha256_file(path), str(path), "unlabeled"))
    with PoolStore(ws.db_path) as store:
        store.add_samples(new)
        store.apply_moves([Move(s.id, "review", from_pool="unlabeled", prediction=CLASSES[i % 3],
                                confidence=0.4 + 0.05 * i) for i, s in enumerate(new)], round_no=1)
    return ws.root, [s.id for s in new]


def server_tasks(server: Server, ws: Path) -> list[tuple[int, dict]]:
    config = load_config(ws / "sslall.toml")
    with server.client() as client:
        found = client.find_project(config.labelstudio.project)
        return [] if found is None else [(t, d) for t, d, _ in client.tasks(found[0],
                                                                              annotated=False)]


def task_ids(server: Server, ws: Path) -> dict[str, int]:
    tasks = server_tasks(server, ws)
    keys = [records.task_key(d) for _, d in tasks]
    assert len(keys) == len(set(keys)), "a sample has two tasks"
    return {d["sample_id"]: t for t, d in tasks}


def pools(ws: Path) -> dict[str, int]:
    with PoolStore(ws / "pools" / "pools.db") as store:
        return store.pool_sizes()


def assert_store_ok(ws: Path) -> None:
    from sslall.store._integrity import check_store

    with PoolStore(ws / "pools" / "pools.db") as store:
        assert check_store(store, CLASSES, files=False) == []



def annotator_browser(server: Server):
    """Headless Chromium logged in to `server` as its annotator (the caller quits it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    creds = json.loads((server.data_dir / "sslall-credentials.json").read_text())
    browser = headless_chromium()
    try:
        browser.get(f"{server.url}/user/login/")
        browser.find_element(By.NAME, "email").send_keys(creds["username"])
        browser.find_element(By.NAME, "password").send_keys(creds["password"])
        browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        WebDriverWait(browser, 120).until(lambda b: "/user/login" not in b.current_url)
    except Exception:
        browser.quit()
        raise
    return browser
