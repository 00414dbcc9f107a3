"""One exception tree for sslall.

Every error a user can cause is an `SslallError` subclass with a one-line message and an exit
code; the CLI prints the message and exits with the code. Nothing else catches broadly.

Exit codes (documented in the README):
    0  ok
    1  failure (an unexpected error, or a round that failed)
    2  usage error: bad arguments, config, manifest or input
    3  no workspace found, or a named thing (checkpoint, pool, file) does not exist
    4  the pool store failed its invariants (`sslall check`)
    5  an external service (Label Studio) failed or refused
    75 another round holds the workspace lock (EX_TEMPFAIL: try again later)
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTEGRITY",
    "EXIT_LOCKED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_SERVICE",
    "EXIT_USAGE",
    "ConfigError",
    "InputError",
    "IntegrityError",
    "LabelStudioError",
    "LockBusy",
    "ModelError",
    "NotFoundError",
    "SslallError",
    "UsageError",
    "WorkspaceNotFound",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTEGRITY = 4
EXIT_SERVICE = 5
EXIT_LOCKED = 75


class SslallError(Exception):
    """Base of every error sslall raises on purpose; `str(err)` is the one line a user sees."""

    exit_code: int = EXIT_FAILURE


class UsageError(SslallError):
    """The user asked for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config key is unknown or has a bad value."""

    def __init__(self, key: str, problem: str, allowed: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.allowed = allowed
        msg = f"config key '{key}': {problem}"
        if allowed:
            msg += f" (allowed: {allowed})"
        super().__init__(msg)


class InputError(UsageError):
    """An input file, manifest or label is unusable."""


class NotFoundError(SslallError):
    """A workspace, checkpoint, pool or file that was named does not exist."""

    exit_code = EXIT_NOT_FOUND


class WorkspaceNotFound(NotFoundError):
    """No workspace was given and none was found upward from the current directory."""


class IntegrityError(SslallError):
    """The pool store broke one of its invariants."""

    exit_code = EXIT_INTEGRITY


class LockBusy(SslallError):
    """Another process holds the workspace's round lock."""

    exit_code = EXIT_LOCKED

    def __init__(self, pid: int | None, started: str | None, command: str | None = None) -> None:
        self.pid = pid
        self.started = started
        what = command or "a round"
        super().__init__(
            f"{what} is already running on this workspace (pid {pid}, started {started}); "
            "try again when it has finished"
        )


class ModelError(UsageError):
    """A backbone, weights file or checkpoint cannot be used."""


class LabelStudioError(SslallError):
    """The Label Studio server failed, refused the token, or is unreachable."""

    exit_code = EXIT_SERVICE


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (its class name when empty): for one-line errors that
    quote a library's long exception."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
