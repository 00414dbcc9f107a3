"""Label Studio's ML backend, the logic behind `sslall serve` (the HTTP side is
`sslall.labelstudio._http`).

Label Studio (label_studio/ml/api_connector.py, 1.23.2) calls `GET health` (1 s timeout),
`POST setup` (answers the `model_version`), `POST predict` (`{tasks, label_config, ...}`; one
result per task, in order) and `POST webhook` (the events of the webhook it creates with the
backend, and `START_TRAINING` from the UI; older servers send `POST train`).

The model is the workspace's model in use (`sslall.model._choice`: promoted, else best, else
latest round), loaded once and loaded again when another round becomes the one in use (checked
on every request: one read-only look at the pool store). A task's image is the workspace
sample its `sample_id` names, else a `/data/local-files/?d=REL` URL under
`labelstudio.document_root`; nothing outside that root is read and no URL is ever fetched.

An `ANNOTATION_CREATED`/`ANNOTATION_UPDATED` event pulls the project's answers into the pool
store (`sslall.labelstudio._pull`, under the round lock, in a background thread: Label Studio
waits 1 s for a webhook). With `labelstudio.round_after = N`, once N cells were labelled through
webhooks since the last round it started, it starts `sslall round` in its own process; when the
round lock is held (a round, push or pull running) the round is skipped and tried again at the
next annotation. Nothing here prints.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree

from sslall.config import Config
from sslall.errors import NotFoundError, SslallError, UsageError
from sslall.labelstudio._client import FROM_NAME, TO_NAME, resolve_path
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace, lock_is_held, round_lock

__all__ = ["Backend", "BadRequest", "label_names"]

LOCAL_FILES = "/data/local-files/"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
TRAIN_EVENTS = ("START_TRAINING",)


class BadRequest(UsageError):
    """A request the backend refuses (answered 400 with its one line)."""


@dataclass
class _Loaded:
    round_no: int
    stamp: float
    predictor: Any  # sslall.model._inference.Predictor (imports torch: loaded lazily)


def label_names(xml: str | None) -> tuple[str, str, str]:
    """(from_name, to_name, image data key) of a labelling config's first `Choices` and the
    `Image` it points at; sslall's own names for a missing or unreadable config."""
    try:
        root = ElementTree.fromstring(xml) if xml else None
    except ElementTree.ParseError:
        root = None
    if root is None:
        return FROM_NAME, TO_NAME, "image"
    choices = next(root.iter("Choices"), None)
    if choices is None or not choices.get("name") or not choices.get("toName"):
        return FROM_NAME, TO_NAME, "image"
    to_name = choices.get("toName", TO_NAME)
    image = next((i for i in root.iter("Image") if i.get("name") == to_name), None)
    key = (image.get("value") or "$image").lstrip("$") if image is not None else "image"
    return choices.get("name", FROM_NAME), to_name, key


class Backend:
    """The ML backend of one workspace (see the module docstring); thread-safe."""

    def __init__(self, ws: Workspace, config: Config, *, device: str = "cpu") -> None:
        self.ws, self.config, self.device = ws, config, device
        self._model_lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._pull_lock = threading.Lock()
        self._pull_again = threading.Event()
        self._pull_thread: threading.Thread | None = None
        self.round_proc: subprocess.Popen | None = None
        self.labelled_since_round = 0
        self.last_pull: dict | None = None

    # -- the model ------------------------------------------------------------------------

    def round_in_use(self) -> int:
        """The round whose model answers (no torch, one read of the pool store).

        Raises:
            NotFoundError: no round has finished yet.
        """
        from sslall.model._choice import chosen_checkpoint

        return int(chosen_checkpoint(self.ws).name.rsplit("-", 1)[1])

    def model_version(self) -> str:
        """`round-N` of the model in use; `none` before the first round."""
        try:
            return f"round-{self.round_in_use()}"
        except NotFoundError:
            return "none"

    def predictor(self) -> tuple[Any, str]:
        """(Predictor, model_version), loaded again when another round or a rewritten
        checkpoint is the one in use.

        Raises:
            NotFoundError: no round has finished yet.
            ModelError: the checkpoint is damaged.
        """
        round_no = self.round_in_use()
        folder = self.ws.round_dir(round_no)
        try:
            stamp = (folder / "model.json").stat().st_mtime
        except OSError:
            raise NotFoundError(f"the checkpoint of round {round_no} is gone ({folder})") from None
        with self._model_lock:
            if self._loaded is None or (self._loaded.round_no, self._loaded.stamp) != (round_no, stamp):
                from sslall.model._inference import Predictor

                self._loaded = _Loaded(round_no, stamp, Predictor(folder, device=self.device,
                                                                  ood_quantile=self.config.ood.quantile))
            return self._loaded.predictor, f"round-{round_no}"

    # -- requests -------------------------------------------------------------------------

    def health(self) -> dict:
        """Fast: says which model would answer, loads nothing."""
        return {"status": "UP", "model_class": "sslall", "model_version": self.model_version()}

    def setup(self, body: dict) -> dict:
        return {"model_version": self.model_version()}

    def predict(self, body: dict) -> dict:
        """One prediction per task, in order: the model's class, its calibrated probability as
        `score`, `model_version` = `round-N`. A task whose image cannot be found or read gets an
        empty result and its reason in `error`.

        Raises:
            BadRequest: no task list, or a task names a file outside the document root.
            NotFoundError: no round has finished yet.
        """
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("predict needs {\"tasks\": [task, ...]}")
        from_name, to_name, key = label_names(body.get("label_config"))
        found = [self._image(t, key) for t in tasks]
        predictor, version = self.predictor()
        with self._model_lock:
            preds = predictor.predict([p for p, _ in found if p is not None]) if any(
                p is not None for p, _ in found) else []
        answers = iter(preds)
        results = []
        for path, why in found:
            p = next(answers) if path is not None else None
            if p is None or p.probs is None:
                results.append({"result": [], "model_version": version,
                                "error": why or (p.error if p else "no image")})
                continue
            k = int(p.probs.argmax())
            results.append({"result": [{"from_name": from_name, "to_name": to_name,
                                        "type": "choices",
                                        "value": {"choices": [predictor.classes[k]]}}],
                            "score": round(float(p.probs[k]), 6), "model_version": version})
        return {"results": results}

    def _image(self, task: dict, key: str) -> tuple[Path | None, str | None]:
        """(the file to predict, None) or (None, why not); BadRequest for a path outside the root."""
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        sample_id = data.get("sample_id")
        if isinstance(sample_id, str) and sample_id:
            with PoolStore(self.ws.db_path, read_only=True) as store:
                sample = store.get(sample_id)
            if sample is not None:
                return Path(sample.path), None
        url = data.get(key)
        if not isinstance(url, str) or not url:
            return None, f"task {task.get('id')}: no image in data.{key}"
        return self._local_file(url, task.get("id")), None

    def _local_file(self, url: str, task_id: Any) -> Path:
        """The file a `/data/local-files/?d=REL` URL names under the document root.

        Raises:
            BadRequest: another kind of URL, no document root, or a path leaving the root.
        """
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or parts.path.rstrip("/") != LOCAL_FILES.rstrip("/"):
            raise BadRequest(f"task {task_id}: only /data/local-files/?d=... images and "
                             "workspace samples can be predicted; sslall fetches no URL")
        rel = parse_qs(parts.query).get("d", [""])[0]
        ls = self.config.labelstudio
        if not ls.document_root:
            raise BadRequest("labelstudio.document_root is not set, so local-files images "
                             "cannot be found")
        root = resolve_path(ls.document_root, self.ws.root).resolve()
        target = (root / unquote(rel)).resolve()
        if not rel or root not in target.parents:
            raise BadRequest(f"task {task_id}: the image path {rel[:80]!r} is outside "
                             "labelstudio.document_root")
        return target

    # -- webhooks -------------------------------------------------------------------------

    def webhook(self, body: dict) -> dict:
        """Annotation events start a pull in the background; training events queue a round
        when `labelstudio.round_after` is set; other events are acknowledged and ignored."""
        action = body.get("action")
        if not isinstance(action, str):
            raise BadRequest("webhook needs {\"action\": ...}")
        if action in ANNOTATION_EVENTS:
            if not self.config.labelstudio.url:
                return {"action": action, "pull": "skipped: labelstudio.url is not set"}
            self._pull_again.set()
            with self._pull_lock:
                if self._pull_thread is None or not self._pull_thread.is_alive():
                    self._pull_thread = threading.Thread(target=self._pull_loop,
                                                         name="sslall-pull", daemon=False)
                    self._pull_thread.start()
            return {"action": action, "pull": "started"}
        if action in TRAIN_EVENTS:
            return {"action": action, "round": self.queue_round(force=True)}
        return {"action": action, "ignored": True}

    def _pull_loop(self) -> None:
        """Pull until no annotation arrived during the last pull (events coalesce)."""
        while self._pull_again.is_set():
            self._pull_again.clear()
            self.last_pull = self.pull_now()
            labelled = self.last_pull.get("labeled", 0) or 0
            with self._pull_lock:
                self.labelled_since_round += labelled
            if self.config.labelstudio.round_after:
                self.queue_round()

    def pull_now(self) -> dict:
        """Pull the project's answers now, under the round lock; the report as a dict (with
        `error` set, not raised, when the lock is held or the server failed)."""
        from sslall.labelstudio._pull import pull

        try:
            with round_lock(self.ws, "sslall serve (webhook pull)"), \
                    PoolStore(self.ws.db_path) as store:
                return pull(store, self.config, base=self.ws.root, missing_ok=True).as_dict()
        except SslallError as exc:
            return {"labeled": 0, "error": str(exc)}

    def queue_round(self, *, force: bool = False) -> str:
        """Start `sslall round` in its own process when `labelstudio.round_after` cells were
        labelled since the last one (or `force` and a round is configured); never while the
        round lock is held or a round this server started still runs."""
        after = self.config.labelstudio.round_after
        if not after:
            return "not configured (labelstudio.round_after = 0)"
        with self._pull_lock:
            if not force and self.labelled_since_round < after:
                return f"waiting: {self.labelled_since_round} of {after} labels"
            if self.round_proc is not None and self.round_proc.poll() is None:
                return "skipped: the round this server started is still running"
            if lock_is_held(self.ws):
                return "skipped: the workspace lock is held (tried again at the next annotation)"
            self.round_proc = subprocess.Popen(
                [sys.executable, "-m", "sslall", "--quiet", "round", "-w", str(self.ws.root)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            self.labelled_since_round = 0
            return f"started (pid {self.round_proc.pid})"

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Let a pull in progress finish (it holds the round lock), e.g. before exiting."""
        thread = self._pull_thread
        if thread is not None:
            thread.join(timeout)
