"""A workspace on disk: where it is, its paths, and the lock that keeps rounds one at a time.

Layout::

    DIR/sslall.toml        the configuration
    DIR/pools/pools.db     the pool store (SQLite, WAL)
    DIR/runs/round-NNNN/   one folder per round (checkpoint, metrics, predictions)
    DIR/cache/             feature cache (safe to delete)
    DIR/logs/sslall.log    log of unattended runs (`--quiet`)
    DIR/.lock              the round lock

The lock is an advisory `flock` on `DIR/.lock`: the kernel drops it when its holder dies, so a
lock left by a killed process never blocks the next round. `fcntl` is imported only where the
lock is taken, so the module (and `sslall.Predictor`, which uses it) imports where `fcntl` does
not exist; taking the lock there raises `SslallError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

from sslall.config import CONFIG_NAME, Config, load_config
from sslall.errors import LockBusy, SslallError, WorkspaceNotFound

__all__ = [
    "ENV_WORKSPACE",
    "Workspace",
    "create_workspace",
    "find_workspace",
    "lock_is_held",
    "read_lock_holder",
    "round_lock",
]

ENV_WORKSPACE = "SSLALL_WORKSPACE"


@dataclass(frozen=True)
class Workspace:
    """The paths of one workspace."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def db_path(self) -> Path:
        return self.root / "pools" / "pools.db"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / "sslall.log"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def round_dir(self, round_no: int) -> Path:
        return self.runs_dir / f"round-{round_no:04d}"

    def partial_round_dir(self, round_no: int) -> Path:
        """Where a round writes its folder before renaming it into place (one per process)."""
        return self.runs_dir / f".partial-round-{round_no:04d}-{os.getpid()}"

    def config(self) -> Config:
        return load_config(self.config_path)


def create_workspace(root: Path, config: Config) -> Workspace:
    """Make a new workspace: the config file, an empty pool store and runs/."""
    from sslall.config import render_config
    from sslall.errors import UsageError
    from sslall.store._pools import PoolStore

    ws = Workspace(root.expanduser().resolve())
    if ws.config_path.exists():
        raise UsageError(f"{ws.root} is already a workspace (it has {ws.config_path.name})")
    for sub in (ws.db_path.parent, ws.runs_dir):
        sub.mkdir(parents=True, exist_ok=True)
    PoolStore(ws.db_path, create=True).close()
    ws.config_path.write_text(render_config(config), encoding="utf-8")
    return ws


def find_workspace(explicit: Path | None = None, cwd: Path | None = None) -> Workspace:
    """Find the workspace: `--workspace`, then `$SSLALL_WORKSPACE`, then upward from cwd."""
    for source, given in (("--workspace", explicit), (ENV_WORKSPACE, os.environ.get(ENV_WORKSPACE))):
        if given:
            root = Path(given).expanduser().resolve()
            if not (root / CONFIG_NAME).is_file():
                raise WorkspaceNotFound(f"{source} points to {root}, which has no {CONFIG_NAME}")
            return Workspace(root)
    here = (cwd or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_NAME).is_file():
            return Workspace(candidate)
    raise WorkspaceNotFound(
        f"not inside an sslall workspace (no {CONFIG_NAME} in {here} or above); "
        "use --workspace DIR, set SSLALL_WORKSPACE, or create one with `sslall init DIR`"
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fcntl() -> ModuleType:
    """The `fcntl` module, imported here so that importing this module does not need it."""
    try:
        import fcntl
    except ImportError:
        raise SslallError("the round lock needs fcntl.flock, which this platform lacks; run rounds "
                          "on Linux or macOS (predicting needs no lock)") from None
    return fcntl


@contextmanager
def round_lock(workspace: Workspace, command: str = "sslall round") -> Iterator[None]:
    """Hold the workspace's round lock, or raise `LockBusy` at once naming the holder.

    Raises:
        LockBusy: another process holds the lock.
        SslallError: the lock file cannot be opened, or the platform has no `fcntl`.
    """
    fcntl = _fcntl()
    try:
        fd = os.open(workspace.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SslallError(f"cannot open the round lock {workspace.lock_path}: {exc.strerror} "
                          "(is the workspace read-only?)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_lock_holder(workspace)
            raise LockBusy(holder.get("pid"), holder.get("started"), holder.get("command")) from None
        info = {"pid": os.getpid(), "started": _now(), "command": command, "argv": sys.argv[1:2]}
        # The note only tells `status` who holds the lock; a full disk must not lose the lock.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_lock_holder(workspace: Workspace) -> dict:
    """What the current lock holder wrote about itself; {} when nobody holds it."""
    try:
        text = workspace.lock_path.read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def lock_is_held(workspace: Workspace) -> bool:
    """True when some process holds the round lock right now."""
    if not workspace.lock_path.exists():
        return False
    fcntl = _fcntl()
    fd = os.open(workspace.lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
