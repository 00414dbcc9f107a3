"""Shared fixtures: tiny synthetic images and workspaces, nothing from real data; the real
Label Studio server of tests/labelstudio."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sslall.cli import app
from sslall.errors import NotFoundError
from sslall.labelstudio._client import LabelStudioClient

CLASSES = ("L1", "L2", "L3")


def sslall(*args: object, cwd: Path | None = None, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (`python -m sslall ARGS`), output captured."""
    return subprocess.run([sys.executable, "-m", "sslall", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


def long_temp_folder(tmp_path: Path) -> Path:
    """A new folder whose path is 110 bytes: too long for a Unix socket in it (a scheduler's
    per-job TMPDIR can be), the case multiprocessing's sockets must steer clear of."""
    folder = tmp_path / ("t" * (110 - len(os.fsencode(str(tmp_path))) - 1))
    folder.mkdir()
    return folder


def left_in_temp(folder: Path) -> list[str]:
    """What a command left in its temp folder, but torch's per-user compile cache
    (torchinductor_*, made on import and shared by design)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("torchinductor_"))


def make_checkpoint(directory: Path, backbone: str, image_size: int, seed: int = 0, *,
                    turned_view: bool = False) -> Path:
    """A real checkpoint of a randomly initialised backbone and head (what a round writes);
    `turned_view`: one that averages the logits of each image and of it turned 90 degrees."""
    import torch

    from sslall.model._backbones import Classifier, create_backbone
    from sslall.model._checkpoints import save_checkpoint
    from sslall.model._heads import MLPHead

    torch.manual_seed(seed)
    bb = create_backbone(backbone, pretrained=False)
    model = Classifier(bb.module, MLPHead(bb.num_features, len(CLASSES), hidden=(8,)), bb.scales)
    meta = {"classes": list(CLASSES), "backbone": backbone, "image_size": image_size,
            "mean": list(bb.mean), "std": list(bb.std), "temperature": 1.5, "round": 1,
            "feature_scales": 0,
            **({"turned_view": True} if turned_view else {})}  # absent: as before the key existed
    save_checkpoint(directory, {k: v.detach() for k, v in model.state_dict().items()}, meta)
    return directory


def paused(args: list, point: str, marker: Path, *, timeout: float = 300) -> subprocess.Popen:
    """`sslall ARGS` frozen at fault point `point` (it writes `marker` and waits there)."""
    proc = subprocess.Popen([sys.executable, "-m", "sslall", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SSLALL_PAUSE_AT": point,
                                 "SSLALL_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        proc.kill()
        raise AssertionError(f"sslall {args[0]} never reached {point}: {proc.communicate()}")
    return proc


def headless_chromium(*extra_args: str):
    """A headless Chromium (selenium webdriver); the caller quits it. Fails when chromium or its
    driver is missing; skips only when SSLALL_SKIP_BROWSER is set."""
    if os.environ.get("SSLALL_SKIP_BROWSER"):
        pytest.skip("SSLALL_SKIP_BROWSER is set")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium + chromium-driver are not installed: `make browser` (as root) "
                    "installs them, or set SSLALL_SKIP_BROWSER=1")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", *extra_args):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))


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


# -- a real Label Studio server, for tests/labelstudio --------------------------------------
# One data folder is migrated per test session (~30-60 s) and copied for each server (~4 s to
# start). Most tests share one server (started once a session), each in its own project; the
# tests that kill a server start their own. Here rather than in tests/labelstudio/conftest.py:
# a second conftest module would take the name `conftest` that `from conftest import` means.


def _label_studio_or_fail() -> Path:
    from sslall.labelstudio._server import find_binary

    if os.environ.get("SSLALL_SKIP_LABEL_STUDIO"):
        pytest.skip("SSLALL_SKIP_LABEL_STUDIO is set")
    try:
        return find_binary()
    except NotFoundError as exc:
        pytest.fail(f"{exc} (or set SSLALL_SKIP_LABEL_STUDIO=1 to skip these tests)")


class Server:
    """A server on a data folder (a copy of the session's template) that a test controls."""

    def __init__(self, data_dir: Path, root: Path | None, port: int | None = None) -> None:
        from sslall.labelstudio._server import free_port

        self.data_dir, self.root = data_dir, root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._client: LabelStudioClient | None = None

    @property
    def key_file(self) -> Path:
        return self.data_dir / "api-key"

    @property
    def key(self) -> str:
        return self.key_file.read_text().strip()

    def start(self, timeout: float = 300) -> Server:
        from sslall.labelstudio._server import start, wait_healthy

        self.proc = start(self.data_dir, self.port, document_root=self.root)
        wait_healthy(self.url, self.proc, timeout=timeout, log=self.data_dir / "server.log")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def client(self) -> LabelStudioClient:
        return LabelStudioClient(self.url, self.key)

    @property
    def sdk(self):
        """An SDK client for acting as an annotator (closed when the server stops)."""
        if self._client is None:
            self._client = self.client()
        return self._client.sdk


@pytest.fixture(scope="session")
def ls_template(tmp_path_factory) -> Path:
    """A migrated data folder with a first user and an API key, made once per session."""
    _label_studio_or_fail()
    server = Server(tmp_path_factory.mktemp("ls-template"), None)
    try:
        server.start(timeout=900)
    finally:
        server.stop()
    (server.data_dir / "server.log").unlink(missing_ok=True)
    return server.data_dir


def copy_server(template: Path, dest: Path, root: Path | None) -> Server:
    shutil.copytree(template, dest)
    return Server(dest, root)


@pytest.fixture(scope="session")
def ls(ls_template: Path, tmp_path_factory):
    """The shared server; its document root is the session's temporary folder, so every
    test's files are under it."""
    base = tmp_path_factory.getbasetemp()
    server = copy_server(ls_template, base / "ls-shared", base).start()
    yield server
    server.stop()


def readme_prepare():
    """`prepare(path, size)` from README "Deploying a model", run as written there: the tests
    feed exported models what the documentation tells users to feed them."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = text.index("```python\n# prepare_image.py")
    code = text[start + len("```python\n"):text.index("\n```", start)]
    namespace: dict = {}
    exec(compile(code, "README.md (prepare_image.py)", "exec"), namespace)  # noqa: S102
    return namespace["prepare"]
