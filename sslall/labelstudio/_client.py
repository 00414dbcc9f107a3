"""A thin, failure-translating wrapper over `label_studio_sdk.LabelStudio` (SDK 2.x).

Why a wrapper: the SDK raises httpx errors, `ApiError`s whose text carries headers and bodies,
and pydantic errors for a server that is not Label Studio. sslall promises one clear line per
failure (`LabelStudioError`, exit 5) and never to reveal the API key, so every server call goes
through `LabelStudioClient._call`, which turns each failure into such a line and scrubs the key
out of it. It also reads annotations back (`decide`: the multiple-annotation rule). Nothing here
prints.

The SDK is the optional extra `sslall[labelstudio]`: it is imported only here, inside the
functions that talk to a server, and `require_sdk` turns its absence into one line (exit 2).

The API key comes only from `$LABEL_STUDIO_API_KEY` or the file `labelstudio.api_key_file`
names; it is held in memory and handed to the SDK, never put in a message or a command line.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import quoteattr

from sslall._fsutil import open_regular
from sslall.config import LabelStudioConfig
from sslall.errors import LabelStudioError, UsageError

ENV_API_KEY = "LABEL_STUDIO_API_KEY"
SDK_MISSING = "Label Studio support is not installed: pip install 'sslall[labelstudio]'"
FROM_NAME, TO_NAME = "label", "image"
CAM_NAME = "cam"  # the Grad-CAM overlay, shown under the cell (`sslall label push --with-cam`)
T = TypeVar("T")


def label_config(classes: tuple[str, ...], *, cam: bool = False) -> str:
    """The labelling interface: one image, one single-choice list of the workspace classes;
    with `cam`, the Grad-CAM overlay under the cell (where the model looked)."""
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    overlay = (f'<Header value="Where the model looked (Grad-CAM)"/>'
               f'<Image name="{CAM_NAME}" value="${CAM_NAME}"/>' if cam else "")
    return (f'<View><Image name="{TO_NAME}" value="$image"/><Choices name="{FROM_NAME}" '
            f'toName="{TO_NAME}" choice="single" showInline="true">{choices}</Choices>'
            f'{overlay}</View>')


def config_has_cam(xml: str) -> bool:
    """Whether a labelling config shows the Grad-CAM overlay field."""
    return f'value="${CAM_NAME}"' in (xml or "")


def config_choices(xml: str) -> set[str]:
    """The choice values a project's labelling config offers (what a push needs to find)."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(xml or "<View/>")
    except ElementTree.ParseError:
        return set()
    return {c.get("value", "") for c in root.iter("Choice")}


def choice_result(label: str) -> list[dict]:
    """An annotation/prediction `result` selecting one class."""
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
             "value": {"choices": [label]}}]


def resolve_path(value: str, base: Path | None) -> Path:
    """A config path: `~` expanded, relative ones taken from the workspace folder `base`."""
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def require_sdk() -> None:
    """Check that the Label Studio SDK (the extra `sslall[labelstudio]`) can be imported.

    Raises:
        UsageError: it cannot (not installed, or installed without its own dependencies).
    """
    try:
        import label_studio_sdk  # noqa: F401 - imported to see that it imports
    except ModuleNotFoundError:
        raise UsageError(SDK_MISSING) from None


def read_api_key(ls: LabelStudioConfig, base: Path | None = None) -> str:
    """The API key from `$LABEL_STUDIO_API_KEY`, else from `labelstudio.api_key_file`."""
    key = os.environ.get(ENV_API_KEY, "").strip()
    if key:
        return key
    if not ls.api_key_file:
        raise LabelStudioError(f"no Label Studio API key: set ${ENV_API_KEY} or "
                               "labelstudio.api_key_file in sslall.toml")
    path = resolve_path(ls.api_key_file, base)
    try:
        with open_regular(path, "r", encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError as exc:
        raise LabelStudioError(f"cannot read the API key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise LabelStudioError(f"the API key file {path} is not text") from None
    if not key:
        raise LabelStudioError(f"the API key file {path} is empty")
    return key


class LabelStudioClient:
    """One server, one API key; every method raises only `LabelStudioError` (one line)."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0,
                 max_retries: int = 1) -> None:
        require_sdk()
        import httpx
        from label_studio_sdk import LabelStudio

        if not url:
            raise UsageError("Label Studio is not configured: set labelstudio.url in sslall.toml")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._key = api_key
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)  # ours, so we close it
        self.sdk = self._call("connecting", lambda: LabelStudio(
            base_url=self.url, api_key=api_key, timeout=timeout, max_retries=max_retries,
            httpx_client=self._http))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_config(cls, ls: LabelStudioConfig, base: Path | None = None) -> LabelStudioClient:
        """Connect as the config says and check the server and the key (two quick calls).

        Raises:
            UsageError: the SDK is not installed, or `labelstudio.url` is not set.
            LabelStudioError: no API key, or the server is unreachable or refuses it.
        """
        require_sdk()
        if not ls.url:
            raise UsageError("Label Studio is not configured: set labelstudio.url in sslall.toml")
        client = cls(ls.url, read_api_key(ls, base), timeout=ls.timeout)
        try:
            client.check()
        except LabelStudioError:
            client.close()
            raise
        return client

    # -- failure translation -----------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], *, not_found: str | None = None) -> T:
        """Run one SDK call; turn any failure into a one-line `LabelStudioError`."""
        import httpx
        import pydantic
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except ApiError as exc:
            message = self._api_error(what, exc, not_found)
        except httpx.ConnectError:
            message = f"cannot reach Label Studio at {self.url} (connection refused or unknown host)"
        except (httpx.NetworkError, httpx.RemoteProtocolError):
            message = (f"lost the connection to Label Studio at {self.url} while {what} (did the "
                       "server stop?)")
        except httpx.TimeoutException:
            message = (f"Label Studio at {self.url} did not answer within {self.timeout:g} s "
                       f"while {what}")
        except httpx.HTTPError as exc:
            message = f"Label Studio at {self.url} failed while {what} ({type(exc).__name__})"
        except (pydantic.ValidationError, ValueError, KeyError, TypeError, AttributeError):
            message = (f"{self.url} does not look like a Label Studio server (unexpected answer "
                       f"while {what})")
        raise LabelStudioError(self._scrub(message)) from None

    def _api_error(self, what: str, exc: Any, not_found: str | None) -> str:
        code = getattr(exc, "status_code", None)
        if isinstance(code, int) and 200 <= code < 300:  # a success the SDK could not read
            return (f"{self.url} does not look like a Label Studio server (unexpected answer "
                    f"while {what})")
        if code in (401, 403):
            return (f"Label Studio at {self.url} refused the API key (HTTP {code}); check "
                    f"${ENV_API_KEY} or labelstudio.api_key_file")
        if code == 404 and not_found:
            return not_found
        if code == 404:
            return (f"{self.url} does not look like a Label Studio server (HTTP 404 while "
                    f"{what})")
        body = getattr(exc, "body", None)
        detail = body.get("detail") or body.get("validation_errors") if isinstance(body, dict) \
            else body
        detail = " ".join(str(detail or "").split())[:300]
        return f"Label Studio at {self.url} answered HTTP {code} while {what}: {detail}".rstrip(": ")

    def _scrub(self, message: str) -> str:
        return message.replace(self._key, "***") if self._key else message

    # -- calls ---------------------------------------------------------------------------

    def check(self) -> None:
        """The server answers as Label Studio, and accepts the key."""
        self._call("reading its version", lambda: self.sdk.versions.get())
        # A server that answers {} to everything passes the SDK's parsing with empty fields.
        self._call("checking the API key", lambda: int(self.sdk.users.whoami().id))

    def find_project(self, project: str) -> tuple[int, str] | None:
        """(id, label config) of a project given by id or title; None for an unknown title."""
        if project.isdigit():
            missing = (f"Label Studio project {project} does not exist at {self.url}; set "
                       "labelstudio.project to an existing id, or to a title")
            return self._call("reading the project", lambda: _id_and_config(
                self.sdk.projects.get(id=int(project))), not_found=missing)
        found = self._call("listing projects", lambda: [
            _id_and_config(p) for p in self.sdk.projects.list(page_size=100)
            if p.title == project])
        return min(found) if found else None

    def create_project(self, title: str, classes: tuple[str, ...], *, cam: bool = False) -> int:
        return self._call("creating the project", lambda: int(self.sdk.projects.create(
            title=title, label_config=label_config(classes, cam=cam),
            description="Cells sslall is least sure about; the model's guess is pre-selected.",
            show_skip_button=True).id))

    def set_label_config(self, project_id: int, xml: str) -> None:
        """Replace a project's labelling config (adding the overlay field keeps its tasks)."""
        self._call("updating the labelling config",
                   lambda: self.sdk.projects.update(id=project_id, label_config=xml))

    def local_storage_paths(self, project_id: int) -> set[str]:
        return self._call("listing local storages", lambda: {
            s.path for s in self.sdk.import_storage.local.list(project=project_id) if s.path})

    def add_local_storage(self, project_id: int, path: Path) -> None:
        self._call(f"adding local storage {path} (is the server started with "
                   "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and its document root?)",
                   lambda: self.sdk.import_storage.local.create(
                       project=project_id, path=str(path), title=f"sslall {path.name}",
                       use_blob_urls=False))

    def upload(self, project_id: int, path: Path) -> str:
        """Upload one image (not yet a task); returns its URL on the server."""
        def send() -> str:
            with open_regular(path) as handle:
                response = self.sdk._client_wrapper.httpx_client.request(
                    f"api/projects/{project_id}/import", method="POST",
                    params={"commit_to_project": False},
                    files={"file": (path.name, handle, "application/octet-stream")})
            if response.status_code >= 400:
                from label_studio_sdk.core.api_error import ApiError

                raise ApiError(status_code=response.status_code, body=_json_or_text(response))
            upload_id = response.json()["file_upload_ids"][0]
            return "/data/" + self.sdk.files.get(id=upload_id).file

        return self._call(f"uploading {path.name}", send)

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Create tasks (with their predictions); returns their ids in request order."""
        # No retry: a retried create after a dropped answer would make the tasks twice.
        return self._call("creating tasks", lambda: [int(i) for i in (
            self.sdk.projects.import_tasks(id=project_id, request=tasks, return_task_ids=True,
                                           request_options={"max_retries": 0}).task_ids or [])])

    def tasks(self, project_id: int, *, annotated: bool, full: bool = False,
              page_size: int = 100) -> Iterator[tuple[int, dict, list[dict]]]:
        """Stream (task id, data, annotations) page by page; `annotated` keeps only tasks
        with a submitted or cancelled annotation; `full` fetches the annotations too."""
        query = None
        if annotated:
            query = json.dumps({"filters": {"conjunction": "or", "items": [
                {"filter": f"filter:tasks:{f}", "operator": "greater", "type": "Number",
                 "value": 0} for f in ("total_annotations", "cancelled_annotations")]}})
        fields = {"fields": "all"} if full else {"fields": "task_only", "include": "id,data"}
        pager = self._call("listing tasks", lambda: iter(self.sdk.tasks.list(
            project=project_id, query=query, page_size=page_size, **fields)))
        def one() -> tuple[int, dict, list[dict]] | None:
            task = next(pager, None)
            if task is None:
                return None
            return int(task.id), dict(task.data or {}), list(task.annotations or []) if full else []

        while (row := self._call("listing tasks", one)) is not None:
            yield row

    def predictions(self, task_id: int) -> list[tuple[int, str]]:
        """(prediction id, model_version) of a task's predictions."""
        return self._call("listing predictions", lambda: [
            (int(p.id), str(p.model_version or "")) for p in self.sdk.predictions.list(task=task_id)])

    def add_prediction(self, task_id: int, label: str, score: float | None, version: str) -> None:
        self._call("creating a prediction", lambda: self.sdk.predictions.create(
            task=task_id, result=choice_result(label), model_version=version,
            **({} if score is None else {"score": score})))

    def delete_prediction(self, prediction_id: int) -> None:
        self._call("deleting a prediction", lambda: self.sdk.predictions.delete(id=prediction_id))

    def user_names(self) -> dict[int, str]:
        """Annotator names by user id (email, else username)."""
        return self._call("listing users", lambda: {
            int(u.id): (u.email or u.username or f"user {u.id}") for u in self.sdk.users.list()})


# -- reading annotations -------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The outcome of one task's annotations."""

    kind: str  # "label", "skip" or "none"
    label: str | None = None
    annotator: str = ""
    time: str = ""
    rule: str = ""
    invalid: tuple[str, ...] = ()


def decide(annotations: Sequence[dict], classes: tuple[str, ...],
           users: dict[int, str]) -> Decision:
    """Resolve one task's annotations. Cancelled ones are skips, the others vote; the class
    with most votes wins and a tie goes to the tied class annotated last (so a re-annotation
    settles a dispute); only skips -> skip; no usable vote -> "none" (the task stays open)."""
    votes: list[tuple[str, str, int, str]] = []  # (time, label, annotation id, annotator)
    skips: list[tuple[str, int, str]] = []
    invalid: list[str] = []
    for a in annotations:
        when = str(a.get("updated_at") or a.get("created_at") or "")
        who = _annotator(a.get("completed_by"), users)
        if a.get("was_cancelled"):
            skips.append((when, int(a.get("id") or 0), who))
            continue
        label, problem = _read_choice(a.get("result") or [], classes)
        if problem:
            invalid.append(f"annotation {a.get('id')} by {who}: {problem}")
        else:
            votes.append((when, label, int(a.get("id") or 0), who))
    if votes:
        counts = Counter(v[1] for v in votes)
        top = max(counts.values())
        tied = {c for c, n in counts.items() if n == top}
        when, label, _, who = max(v for v in votes if v[1] in tied)
        rule = (f"{top} of {len(votes)} annotations" if len(tied) == 1 else
                f"tie between {', '.join(sorted(tied))}, the latest annotation wins")
        return Decision("label", label, who, when, rule, tuple(invalid))
    if skips and not invalid:
        when, _, who = max(skips)
        return Decision("skip", None, who, when)
    return Decision("none", invalid=tuple(invalid))


def _annotator(value: Any, users: dict[int, str]) -> str:
    if isinstance(value, dict):
        return str(value.get("email") or value.get("username") or value.get("id"))
    if isinstance(value, int):
        return users.get(value, f"user {value}")
    return "unknown annotator"


def _read_choice(result: Sequence[Any], classes: tuple[str, ...]) -> tuple[str, str | None]:
    """The one class an annotation chose, or the reason it is not usable."""
    chosen = [c for r in result if isinstance(r, dict) and r.get("type") == "choices"
              for c in (r.get("value") or {}).get("choices") or []]
    if not chosen:
        return "", "no class chosen"
    if len(chosen) > 1:
        return "", f"{len(chosen)} classes chosen ({', '.join(map(str, chosen))})"
    if chosen[0] not in classes:
        return "", f"{chosen[0]!r} is not a class (allowed: {', '.join(classes)})"
    return chosen[0], None


def _id_and_config(project: Any) -> tuple[int, str]:
    """(id, label config) of a project the server described (TypeError if it has no id)."""
    return int(project.id), project.label_config or ""


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:300]
