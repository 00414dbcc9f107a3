"""A local Label Studio server on 127.0.0.1, for trying the loop (`sslall labelstudio up`) and
for the tests. The server lives in its own virtual environment (`make labelstudio` builds
`.venv-labelstudio`): it drags in Django and ~1 GB that the sslall package does not need.

A data folder holds everything: the server's SQLite and media, `server.log`, the first user's
credentials (`sslall-credentials.json`, mode 0600), the API key (`api-key`, mode 0600; a legacy
token handed to the server through its environment, never on its command line), and
`sslall-server.json` (pid, port, url) while a server started by `up` runs. Nothing here prints.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sslall.errors import LabelStudioError, NotFoundError, UsageError

ENV_BINARY = "SSLALL_LABEL_STUDIO"
STATE_NAME = "sslall-server.json"
CREDENTIALS_NAME = "sslall-credentials.json"
KEY_NAME = "api-key"
# The server also reads these bare names; a stray one in our environment would change it.
_DROPPED = ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN", "LABEL_STUDIO_API_KEY")


@dataclass(frozen=True)
class Credentials:
    """The first user of a data folder; the API key stays in `key_file`."""

    username: str
    password: str
    key_file: Path


@dataclass(frozen=True)
class ServerInfo:
    """A running server started by `up`."""

    url: str
    pid: int
    port: int
    data_dir: Path
    credentials: Credentials


def find_binary() -> Path:
    """`$SSLALL_LABEL_STUDIO`, else `.venv-labelstudio/bin/label-studio` here or beside the
    sslall sources, else `label-studio` on PATH."""
    given = os.environ.get(ENV_BINARY)
    candidates = [Path(given)] if given else []
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidates.append(root / ".venv-labelstudio" / "bin" / "label-studio")
    on_path = shutil.which("label-studio")
    candidates += [Path(on_path)] if on_path else []
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise NotFoundError("no Label Studio server installed: run `make labelstudio` (it builds "
                        f".venv-labelstudio) or set ${ENV_BINARY} to a label-studio executable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` (as servers do, with SO_REUSEADDR, so
    connections of a killed server lingering in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def credentials(data_dir: Path, username: str = "admin@sslall.local") -> Credentials:
    """The data folder's first user and API key, made (randomly) on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path, key_file = data_dir / CREDENTIALS_NAME, data_dir / KEY_NAME
    if not path.is_file() or not key_file.is_file():
        _write_private(key_file, secrets.token_hex(20) + "\n")
        _write_private(path, json.dumps({"username": username,
                                         "password": secrets.token_urlsafe(12)}))
    saved = json.loads(path.read_text(encoding="utf-8"))
    return Credentials(saved["username"], saved["password"], key_file)


def server_env(data_dir: Path, creds: Credentials, document_root: Path | None) -> dict[str, str]:
    """The child's environment: quiet, private data folder, first user, optional local files."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": creds.username,
        "LABEL_STUDIO_PASSWORD": creds.password,
        "LABEL_STUDIO_USER_TOKEN": creds.key_file.read_text(encoding="utf-8").strip(),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
        # the server is on loopback for one machine: let it call `sslall serve` there (its ML
        # backend URL and the webhook that comes with it), which it refuses by default
        "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
    })
    if document_root is not None:
        env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] = "true"
        env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(document_root)
    return env


def start(data_dir: Path, port: int, *, document_root: Path | None = None,
          binary: Path | None = None) -> subprocess.Popen:
    """Start a server in its own session (so a terminal's Ctrl-C does not reach it)."""
    data_dir = data_dir.resolve()
    creds = credentials(data_dir)
    exe = binary or find_binary()
    log = (data_dir / "server.log").open("ab")
    try:
        return subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(port), "--enable-legacy-api-token"],
            env=server_env(data_dir, creds, document_root), cwd=data_dir,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    finally:
        log.close()


def wait_healthy(url: str, proc: subprocess.Popen | None = None, *, timeout: float = 600.0,
                 log: Path | None = None) -> None:
    """Wait for `GET /health`; a first start on a new data folder migrates for ~30-60 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LabelStudioError(f"the Label Studio server exited while starting (code "
                                   f"{proc.returncode}); see {log or 'its log'}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise LabelStudioError(f"the Label Studio server at {url} was not up after {timeout:g} s; "
                           f"see {log or 'its log'}")


def is_label_studio(pid: int) -> bool:
    """True when `pid` is alive and runs label-studio (a recycled pid is left alone)."""
    try:
        return b"label-studio" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def read_state(data_dir: Path) -> dict:
    try:
        return json.loads((data_dir / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def up(data_dir: Path, port: int, *, document_root: Path | None = None,
       timeout: float = 600.0) -> ServerInfo:
    """Start a server for a person to use, and record it in the data folder's state file."""
    data_dir = data_dir.resolve()
    state = read_state(data_dir)
    if state.get("pid") and is_label_studio(int(state["pid"])):
        raise UsageError(f"Label Studio is already running at {state.get('url')} (pid "
                         f"{state['pid']}); `sslall labelstudio down` stops it")
    if not port_is_free(port):
        raise UsageError(f"port {port} on 127.0.0.1 is in use; pass --port")
    proc = start(data_dir, port, document_root=document_root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=timeout, log=data_dir / "server.log")
    except LabelStudioError:
        _terminate(proc.pid)
        raise
    _write_private(data_dir / STATE_NAME, json.dumps({"pid": proc.pid, "port": port, "url": url}))
    proc.returncode = 0  # detached on purpose: `down` stops it by pid; no "still running" warning
    return ServerInfo(url, proc.pid, port, data_dir, credentials(data_dir))


def down(data_dir: Path, timeout: float = 30.0) -> int | None:
    """SIGTERM the server `up` started in this data folder; returns its pid, None if none ran."""
    data_dir = data_dir.resolve()
    pid = read_state(data_dir).get("pid")
    stopped = None
    if pid and is_label_studio(int(pid)):
        _terminate(int(pid), timeout)
        stopped = int(pid)
    (data_dir / STATE_NAME).unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; reaps the child when it is ours."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # not our child: poll for its disappearance
            if not is_label_studio(pid):
                return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
