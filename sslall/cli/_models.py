"""CLI commands that choose and keep the models: promote (the round the model commands use) and
prune (old round folders); plus what `sslall status` says about the model in use."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from sslall.cli._console import (
    JsonFlag,
    OutOption,
    WorkspaceOption,
    cli_errors,
    open_workspace,
    print_json,
    say,
)
from sslall.errors import UsageError
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace, round_lock


def model_in_use(ws: Workspace, store: PoolStore) -> dict | None:
    """`status`'s "model": the round the model commands use, why, and its folder; None before
    the first round."""
    from sslall.model._choice import has_checkpoint, model_choice

    choice = model_choice(ws, store)
    if choice is None:
        return None
    return {**choice.as_dict(), "checkpoint": str(ws.round_dir(choice.round)),
            "present": has_checkpoint(ws, choice.round)}


def model_line(model: dict | None) -> str:
    """`status`'s line about the model in use."""
    if model is None:
        return "model in use: none (no round yet)"
    gone = "" if model["present"] else " - its folder is gone: promote another round"
    return f"model in use: round {model['round']} ({model['reason']}), {model['checkpoint']}{gone}"


def _user() -> str:
    """Who runs the command, for the promotion log."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no $USER and no passwd entry (a bare container)
        return "unknown"


def promote_cmd(
    round_no: Annotated[int | None, typer.Argument(metavar="ROUND", help="The round whose "
                        "model predict, evaluate, explain and label push use.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Drop the promotion: use the best round "
                     "by holdout macro-F1 again (else the latest).")] = False,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Choose the round whose model predict, evaluate, explain and label push use; without
    ROUND or --clear, show the round in use and why. The store keeps who promoted which round
    and when.

    \b
    Example:
      sslall promote 3
      sslall promote --clear
    """
    from sslall.model._choice import promote_round
    from sslall.store._promotion import promoted

    if clear and round_no is not None:
        raise UsageError("give a ROUND or --clear, not both")
    ws, _ = open_workspace(workspace)
    if round_no is None and not clear:
        with PoolStore(ws.db_path, read_only=True) as store:
            data = {"promoted": (p := promoted(store)) and p.as_dict(),
                    "model": model_in_use(ws, store)}
    else:
        with round_lock(ws, "sslall promote"), PoolStore(ws.db_path) as store:
            previous = promoted(store)
            entry = promote_round(ws, store, round_no, _user())
            data = {"promoted": entry.as_dict() if entry.round is not None else None,
                    "previous": previous and previous.round, "model": model_in_use(ws, store)}
    if json_out:
        print_json(data)
        return
    if round_no is not None:
        say(f"promoted round {round_no}")
    elif clear:
        say("promotion cleared" if data["previous"] is not None else "nothing was promoted")
    say(model_line(data["model"]))


def prune_cmd(
    keep_last: Annotated[int | None, typer.Option(help="Keep the folders of the last N rounds "
                         "(besides the promoted and the best one); default runs.keep_last.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] =
        False,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Remove old round folders (runs/round-NNNN): keep the last N rounds, the promoted round,
    the best by holdout macro-F1 and the one in use. Rounds also prune themselves after they
    commit when runs.keep_last is above 0.

    \b
    Example:
      sslall prune --keep-last 5 --dry-run
    """
    from sslall.report._prune import prune_runs

    ws, config = open_workspace(workspace)
    n = config.runs.keep_last if keep_last is None else keep_last
    if n < 0:
        raise UsageError(f"--keep-last must be 0 (keep all) or more, got {n}")
    with round_lock(ws, "sslall prune"), PoolStore(ws.db_path) as store:
        plan = prune_runs(ws, store, n, dry_run=dry_run)
    if json_out:
        print_json({**plan.as_dict(), "dry_run": dry_run})
        return
    if n == 0:
        say("keeping every round folder (runs.keep_last is 0; pass --keep-last N to prune)")
        return
    verb = "would remove" if dry_run else "removed"
    removed = (f"{verb} the folders of round(s) {', '.join(map(str, plan.remove))}"
               if plan.remove else "nothing to remove")
    say(f"{removed}; keeping round(s) " + "; ".join(
        f"{r} ({', '.join(why)})" for r, why in sorted(plan.keep.items())))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("promote")(cli_errors(promote_cmd))
    app.command("prune")(cli_errors(prune_cmd))
