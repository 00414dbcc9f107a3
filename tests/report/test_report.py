"""`sslall report`: a self-contained HTML page after real rounds; every image loads in Chromium."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import headless_chromium, invoke
from PIL import Image
from test_rounds import build_workspace

from sslall.decide._metrics import expected_calibration_error, softmax
from sslall.report._data import (
    principal_components,
    read_embeddings,
    read_reliability,
    reliability_bins,
)


def test_reliability_bins_count_confidence_and_accuracy() -> None:
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.55, 0.45], [0.3, 0.7]])
    bins = reliability_bins(probs, np.array([0, 1, 0, 1]), bins=5)
    assert [b["count"] for b in bins] == [0, 0, 1, 1, 2]
    assert bins[2]["accuracy"] == 1.0 and bins[2]["confidence"] == pytest.approx(0.55)
    assert bins[4]["accuracy"] == 0.5 and bins[4]["confidence"] == pytest.approx(0.925)
    assert bins[0]["accuracy"] is None


def test_the_diagram_bins_are_the_ece_bins() -> None:
    rng = np.random.default_rng(4)
    probs = softmax(rng.normal(size=(300, 4)) * 2)
    probs[:40] = np.eye(4)[rng.integers(0, 4, 40)]  # confidence exactly 1, the last edge
    probs[40:60] = [0.6, 0.2, 0.1, 0.1]  # exactly on an edge of 5 and of 10 bins
    y = rng.integers(0, 4, 300)
    for n_bins in (5, 10, 15):
        bins = reliability_bins(probs, y, bins=n_bins)
        gap = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
        assert gap / len(y) == pytest.approx(expected_calibration_error(probs, y, n_bins=n_bins))
    assert len(reliability_bins(probs, y)) == 15  # the ECE's default number of bins


def test_randomized_pca_is_deterministic_and_spans_the_full_svd_components() -> None:
    from scipy.linalg import subspace_angles

    rng = np.random.default_rng(5)
    # 400 x 60 with a decaying spectrum, so the first 8 directions are well separated
    x = (rng.normal(size=(400, 60)) * np.geomspace(10, 0.1, 60)) @ np.linalg.qr(
        rng.normal(size=(60, 60)))[0]
    x = x.astype(np.float32)
    scores, variance = principal_components(x, 8)
    again, variance_again = principal_components(x, 8)
    assert np.array_equal(scores, again) and np.array_equal(variance, variance_again)
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    assert scores.shape == (400, 8)
    assert np.max(subspace_angles(scores, u[:, :8])) < 2e-3  # radians
    assert variance == pytest.approx(s[:8] ** 2 / (s ** 2).sum(), rel=1e-3)
    # each component is the full SVD's, up to its sign
    assert np.abs(scores) == pytest.approx(np.abs(u[:, :8] * s[:8]), abs=1e-3 * s[0])
    flat, none = principal_components(np.ones((5, 4), dtype=np.float32), 3)
    assert flat.shape == (5, 3) and not flat.any() and not none.any()


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, Path]:
    """A workspace after a round, with a duplicate import and a mislabelled cell, and its report."""
    from typer.testing import CliRunner

    runner = CliRunner()
    root = tmp_path_factory.mktemp("report")
    ws = build_workspace(root, runner, mislabel={0: "L3"})
    dup = root / "dup"
    dup.mkdir()
    first = next((root / "cells" / "L1").iterdir())
    shutil.copy(first, dup / "again.png")
    assert invoke(runner, "add", "unlabeled", dup, "-w", ws).exit_code == 0
    result = invoke(runner, "round", "-w", ws)
    assert result.exit_code == 0, result.output
    out = root / "report.html"
    result = invoke(runner, "report", "-w", ws, "--out", out, "--per-class", "3")
    assert result.exit_code == 0, result.output
    return ws, out


def test_the_round_records_what_the_report_needs(reported) -> None:
    ws, _ = reported
    run = ws / "runs" / "round-0001"
    rel = read_reliability(run)
    assert rel["holdout"] == 15 and sum(b["count"] for b in rel["before"]) == 15
    assert sum(b["count"] for b in rel["after"]) == 15
    rows, pca, variance = read_embeddings(run)
    with open(run / "predictions.csv") as handle:
        scored = sum(1 for line in handle) - 1
    assert list(rows) == list(range(scored)) and pca.shape == (scored, 32)
    assert 0 < variance.sum() <= 1.0001 and variance[0] >= variance[-1]


def test_report_is_self_contained_and_has_every_section(reported) -> None:
    _, out = reported
    page = out.read_text()
    for heading in ("Metrics per round", "Pool sizes per round", "Confusion matrix, round 1",
                    "Reliability diagram, before and after calibration",
                    "Calibrated confidence per pool", "Embeddings (2-D maps)",
                    "Class distribution", "Most and least confident cells per predicted class",
                    "Duplicates found at import (1)"):
        assert f"<h2>{heading}" in page, heading
    assert "again.png" in page and "t-SNE skipped" not in page
    with open(out.parent / "ws" / "runs" / "round-0001" / "label_issues.csv") as handle:
        issues = list(csv.DictReader(handle))
    assert issues and f"<h2>Suspected label errors, round 1 ({len(issues)})" in page
    assert 'alt="suspected label errors"' in page
    assert all(html.escape(i["path"]) in page for i in issues[:12])
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) >= 10
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and image.width > 50
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from the network
    assert "<script" not in page


def test_report_shows_the_ood_threshold_and_flagged_cells_per_pool(reported) -> None:
    ws, out = reported
    page = out.read_text()
    section = page[page.index("<h2>Out-of-distribution cells"):]
    section = section[:section.index("</section>")]
    threshold = json.loads((ws / "runs" / "round-0001" / "ood.json").read_text())["threshold"]
    assert f"Threshold {threshold:.4f} = the 0.99 quantile of 15 holdout scores" in section
    assert "<td>unlabeled</td><td>42</td>" in section  # 3 x 14 cells (the duplicate is one)


def test_report_before_any_round_and_bad_flags(tmp_path: Path, runner) -> None:
    ws = tmp_path / "ws"
    assert invoke(runner, "init", ws, "--classes", "a,b").exit_code == 0
    out = tmp_path / "r.html"
    assert invoke(runner, "report", "-w", ws, "--out", out).exit_code == 0
    assert "no round has finished yet" in out.read_text()
    bad = invoke(runner, "report", "-w", ws, "--out", out, "--per-class", "0")
    assert bad.exit_code == 2 and "--per-class" in bad.output


def test_every_image_loads_in_chromium(reported) -> None:
    _, out = reported
    browser = headless_chromium("--proxy-server=127.0.0.1:9")  # no network
    try:
        browser.get(out.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    finally:
        browser.quit()
    assert len(images) >= 10
    assert all(done and width > 0 for _, done, width in images), json.dumps(images)
