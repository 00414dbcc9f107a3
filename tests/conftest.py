"""Shared fixtures: tiny synthetic images and workspaces, nothing from real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sslall.cli import app

CLASSES = ("L1", "L2", "L3")


def write_image(path: Path, seed: int, size: int = 24, mode: str = "RGB", fmt: str | None = None
                ) -> Path:
    """A small random image whose bytes depend on the seed."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_class_tree(root: Path, per_class: int = 4, classes=CLASSES, seed: int = 0) -> Path:
    for ci, c in enumerate(classes):
        for i in range(per_class):
            write_image(root / c / f"{c}_{i}.png", seed * 100_000 + ci * 1000 + i)
    return root


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """One OpenMP thread for faiss: the machine is shared, and results are then reproducible."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def workspace(tmp_path: Path, runner: CliRunner) -> Path:
    ws = tmp_path / "ws"
    result = invoke(runner, "init", ws, "--classes", ",".join(CLASSES), "--backbone",
                    "baseline-cnn", "--image-size", "32")
    assert result.exit_code == 0, result.output
    return ws
