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
not exist; taking the lock there raises `SslallError`. Worker processes close their copy of the lock's fd
(`sslall._workers.worker_started`), so only the process that took it holds it.

Nothing in a workspace is written through a symbolic link: `find_workspace` refuses a store,
lock or log that is one, and the lock is opened with O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

from sslall._fsutil import NotRegularFile, open_regular
from sslall._workers import keep_from_workers
from sslall.config import CONFIG_NAME, Config, load_config
from sslall.errors import LockBusy, SslallError, UsageError, WorkspaceNotFound

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
PARTIAL_PREFIX = ".partial-round-"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


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
        return self.runs_dir / f"{PARTIAL_PREFIX}{round_no:04d}-{os.getpid()}"

    def partial_round_dirs(self) -> list[Path]:
        """Every partial round folder there is (a killed round's leftovers, or this one's)."""
        try:
            return sorted(p for p in self.runs_dir.iterdir() if p.name.startswith(PARTIAL_PREFIX))
        except FileNotFoundError:
            return []

    def refuse_symlinks(self) -> None:
        """Refuse a workspace whose store, lock or log (or their folders) is a symbolic link:
        sslall would write through it to wherever it points.

        Raises:
            UsageError: one of them is a symbolic link.
        """
        db = self.db_path
        for path in (self.lock_path, db.parent, db, db.with_name(db.name + "-wal"),
                     db.with_name(db.name + "-shm"), db.with_name(db.name + "-journal"),
                     self.log_path.parent, self.log_path):
            if path.is_symlink():
                raise UsageError(f"{path} is a symbolic link; sslall never writes through a link "
                                 "inside a workspace (replace it with the real file or folder)")

    def config(self) -> Config:
        return load_config(self.config_path)


def create_workspace(root: Path, config: Config) -> Workspace:
    """Make a new workspace: the config file, an empty pool store and runs/."""
    from sslall.config import render_config
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
            return _checked(Workspace(root))
    here = (cwd or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_NAME).is_file():
            return _checked(Workspace(candidate))
    raise WorkspaceNotFound(
        f"not inside an sslall workspace (no {CONFIG_NAME} in {here} or above); "
        "use --workspace DIR, set SSLALL_WORKSPACE, or create one with `sslall init DIR`"
    )


def _checked(ws: Workspace) -> Workspace:
    ws.refuse_symlinks()
    return ws


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
        fd = _open_lock(workspace, os.O_RDWR | os.O_CREAT)
    except NotRegularFile as exc:
        raise UsageError(f"the round lock {workspace.lock_path} {exc.strerror}; remove it "
                         "(sslall makes a new one)") from None
    except OSError as exc:
        raise SslallError(f"cannot open the round lock {workspace.lock_path}: {exc.strerror} "
                          "(is the workspace read-only?)") from None
    keep_from_workers(fd)
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
        keep_from_workers(fd, held=False)
        os.close(fd)


def _open_lock(workspace: Workspace, flags: int) -> int:
    """The lock file's fd, opened without following a symlink and without blocking on a
    fifo; the fd is close-on-exec (Python's default).

    Raises:
        NotRegularFile: the lock is a symbolic link, fifo, socket, device or folder.
        OSError: it cannot be opened.
    """
    path = workspace.lock_path
    try:
        fd = os.open(path, flags | _O_NOFOLLOW | _O_NONBLOCK, 0o644)
    except OSError as exc:
        if os.path.islink(path):
            raise NotRegularFile(exc.errno, "is a symbolic link", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(0, "is not a regular file", str(path))
    return fd


def read_lock_holder(workspace: Workspace) -> dict:
    """What the current lock holder wrote about itself; {} when nobody holds it."""
    try:
        with open_regular(workspace.lock_path, "r", follow_symlinks=False,
                          encoding="utf-8") as handle:
            text = handle.read()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def lock_is_held(workspace: Workspace) -> bool:
    """True when some process holds the round lock right now."""
    if not workspace.lock_path.exists():
        return False
    fcntl = _fcntl()
    try:
        fd = _open_lock(workspace, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
