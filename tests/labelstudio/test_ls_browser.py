"""What an annotator sees: the cell (and its Grad-CAM overlay) in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Server, invoke, make_checkpoint
from ls_review import annotator_browser, review_ws, task_ids

pytestmark = pytest.mark.labelstudio


def test_an_annotator_sees_the_cell_in_chromium(ls: Server, tmp_path: Path, runner) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ws, ids = review_ws(tmp_path, ls, n=1)
    ckpt = make_checkpoint(tmp_path / "ckpt", "baseline-cnn", 32)
    assert invoke(runner, "label", "push", "--with-cam", "--checkpoint", ckpt, "-w", ws
                  ).exit_code == 0
    task = task_ids(ls, ws)[ids[0]]
    project = json.loads(invoke(runner, "label", "status", "-w", ws, "--json").stdout)["project_id"]
    browser = annotator_browser(ls)
    try:
        browser.get(f"{ls.url}/projects/{project}/data?task={task}")
        # the data manager's thumbnail comes from our URL; the labelling view draws the same
        # bytes (through a blob: URL) large: both decoded, at the cell's 20 px; and the
        # Grad-CAM overlay (448 px wide: the 224 px input beside its heat map) under it
        name = f"{tmp_path.name}/cells/c0.png"
        script = ("return Array.from(document.querySelectorAll('img')).map(i => ["
                  "decodeURIComponent(i.src).includes(arguments[0]), i.naturalWidth, "
                  "i.getBoundingClientRect().width])")

        def shown(b) -> bool:
            imgs = b.execute_script(script, name)
            return (any(ours and w == 20 for ours, w, _ in imgs)
                    and any(w == 20 and width > 100 for _, w, width in imgs)
                    and any(w == 448 and width > 100 for _, w, width in imgs))

        WebDriverWait(browser, 120).until(shown)
        assert "round-1" in browser.find_element(By.TAG_NAME, "body").text
    except Exception:
        browser.save_screenshot(str(tmp_path / "page.png"))
        print(browser.current_url, browser.execute_script(
            "return Array.from(document.querySelectorAll('img')).map(i => [i.src, i.naturalWidth,"
            " i.getBoundingClientRect().width])"))
        raise
    finally:
        browser.quit()
