"""What the CLI layer shares: printing, progress, error handling, opening a workspace.

Only the CLI modules import this. A user's mistake becomes one line on stderr and an exit code
(see `sslall.errors`); `--debug` re-raises so the traceback shows.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bars

from sslall._fsutil import NotRegularFile, open_regular, write_atomic
from sslall._progress import Progress
from sslall.config import Config
from sslall.errors import EXIT_FAILURE, SslallError, UsageError
from sslall.workspace import Workspace, find_workspace

# Markup is off: every string printed is shown as given, so a label, class, file name or path
# holding "[/red]" prints as text instead of raising MarkupError. Styled prefixes are built with
# `styled`, which escapes what it is given.
console = Console(highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
log = logging.getLogger("sslall")
log.addHandler(logging.NullHandler())  # the CLI prints errors itself; no lastResort echo


# The `--out FILE` of the invocation being run (None: output goes to stdout); reset by set_flags.
_OUT: ContextVar[Path | None] = ContextVar("sslall_cli_out", default=None)


def _out_file(value: Path | None) -> Path | None:
    """The `--out` option's callback: `print_json` and `write_output` write to this file instead
    of stdout, which then stays empty (human lines go to stderr, as with --json)."""
    _OUT.set(value)
    if value is not None:
        console.stderr = True
    return value


def _json_mode(ctx: typer.Context, value: bool) -> bool:
    """The `--json` flag's callback: JSON alone goes to stdout, so every human line and table
    printed through `console` goes to stderr instead. `--out FILE.json` without the flag means
    JSON too (the format from the suffix); a command with `--csv` takes `--out FILE.csv` itself.
    Given options are processed before absent ones, so `--out` has been seen when it was given.
    """
    out = _OUT.get()
    if out is not None and not value:
        suffix = out.suffix.lower()
        if suffix == ".csv" and _has_csv(ctx):
            return False
        if suffix != ".json":
            raise typer.BadParameter(f"cannot tell the format of {out.name}: give --json"
                                     f"{' or --csv' if _has_csv(ctx) else ''}, or a .json name",
                                     param_hint="--out")
        value = True
    if value:
        console.stderr = True
    return value


def _has_csv(ctx: typer.Context) -> bool:
    return any(p.name == "csv_out" for p in ctx.command.params)


WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (else $SSLALL_WORKSPACE, else "
                 "searched upward from the current folder).", show_default=False),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.",
                                        callback=_json_mode)]
OutOption = Annotated[Path | None, typer.Option(
    "--out", help="Write the output to this file instead of stdout (format: the flag, else the "
    "name's suffix, .json).", callback=_out_file, show_default=False)]

F = TypeVar("F", bound=Callable[..., Any])


# The global flags (--debug, --quiet) of the invocation being run; set by the app's callback.
# A ContextVar rather than click's context because Typer does not push one for commands.
_FLAGS: ContextVar[dict[str, bool] | None] = ContextVar("sslall_cli_flags", default=None)


def set_flags(**flags: bool) -> None:
    _FLAGS.set(dict(flags))
    _OUT.set(None)
    console.stderr = False


def styled(style: str, prefix: str, message: str) -> str:
    """Markup for `prefix` in `style` followed by `message` shown literally (print it with
    markup=True)."""
    return f"[{style}]{escape(prefix)}[/{style}] {escape(message)}"


def _state() -> dict[str, bool]:
    return _FLAGS.get() or {}


def is_quiet() -> bool:
    return bool(_state().get("quiet"))


# What typer handles itself (an exit code; its own "Error: ..." for a usage error): passed
# through untouched. Named through typer: since 0.26 typer vendors click, so click's classes no
# longer match what it raises; TyperException is the base of its usage errors (BadParameter, ...).
_TYPER_OWN = (typer.Exit, typer.Abort, typer.TyperException)


def cli_errors(fn: F) -> F:
    """Turn `SslallError` (and anything unexpected) into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _TYPER_OWN:
            raise
        except SslallError as exc:
            if _state().get("debug"):
                raise
            log.error("%s", exc)
            err_console.print(styled("red", "error:", str(exc)), markup=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; nothing half-written was kept")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the one place that catches broadly
            if _state().get("debug"):
                raise
            log.exception("unexpected error")
            err_console.print(styled(
                "red", "error:", f"unexpected {type(exc).__name__}: {exc} "
                "(run with --debug for the traceback; please report it)"), markup=True)
            raise typer.Exit(EXIT_FAILURE) from None

    return wrapper  # type: ignore[return-value]


def open_workspace(option: Path | None) -> tuple[Workspace, Config]:
    ws = find_workspace(option)
    config = ws.config()
    setup_logging(ws.log_path)
    return ws, config


def print_json(obj: Any) -> None:
    """`obj` as indented JSON: on stdout, or into the `--out` file when one was given."""
    write_output(json.dumps(obj, indent=2, default=str) + "\n")


def write_output(text: str) -> None:
    """A command's machine-readable output: on stdout, or into the `--out` file (replaced
    whole, never half-written) with a line saying so.

    Raises:
        UsageError: the `--out` file cannot be written.
    """
    out = _OUT.get()
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        write_atomic(out, text)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    say(f"wrote {out}")


def say(message: str) -> None:
    """A line for a person; silent under --quiet (it still goes to the log)."""
    log.info("%s", message)
    if not is_quiet():
        console.print(message)


def warn(message: str) -> None:
    """A warning line on stderr (silent under --quiet); the library has logged it already."""
    if not is_quiet():
        err_console.print(styled("yellow", "warning:", message), markup=True)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Progress]:
    """Yield a `Progress` drawn as one bar named `description` (the step names are not shown);
    nothing under --quiet or when `total` is 0."""
    if is_quiet() or total == 0:
        yield lambda *a: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Bars(*columns, console=err_console, transient=True) as bars:
        task = bars.add_task(description, total=total)

        def update(_step: str, done: int, new_total: int) -> None:
            bars.update(task, completed=done, total=new_total or total)

        yield update


class _LogFile(logging.FileHandler):
    """The workspace log; a full or read-only disk drops a line instead of printing a traceback
    (the command's own error, if any, is still one line on stderr)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        return

    def _open(self):  # noqa: ANN202 - logging's hook; never through a symlink, never a fifo
        return open_regular(self.baseFilename, "a", follow_symlinks=False, create=True,
                            encoding=self.encoding)


def setup_logging(workspace_log: Path | None) -> None:
    """Log everything to the workspace's log file (what unattended runs leave behind)."""
    root = logging.getLogger("sslall")
    root.setLevel(logging.INFO)
    if workspace_log is None:
        return
    target = str(workspace_log.resolve())
    for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        if h.baseFilename == target:
            return
        root.removeHandler(h)
        h.close()
    try:
        workspace_log.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(workspace_log, encoding="utf-8")
    except NotRegularFile as exc:  # a link would append our lines to whatever it points at
        warn(f"not logging to {workspace_log}: it {exc.strerror}")
        return
    except OSError:  # a read-only workspace still answers read commands
        return
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


@contextmanager
def step_progress() -> Iterator[Progress]:
    """Yield a `Progress` drawn as one bar per step (a round's verify, features, train, score),
    nothing under --quiet."""
    if is_quiet():
        yield lambda *a: None
        return
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Bars(*columns, console=err_console, transient=False) as bars:
        tasks: dict[str, Any] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bars.add_task(step, total=total)
            bars.update(tasks[step], completed=done, total=total)

        yield update
