"""CLI commands that fix the data set by hand: `sslall sample show|set-label|remove`,
`sslall quarantine list|release` and `sslall conflicts`.

`sample` names the thing a lab holds (one cell image, by id or path); `label` is Label Studio's
group already. Writes hold the workspace lock like `add`; listings open the store read-only.
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.table import Table

from sslall.cli._console import (
    JsonFlag,
    OutOption,
    WorkspaceOption,
    cli_errors,
    console,
    open_workspace,
    print_json,
    say,
    warn,
)
from sslall.errors import UsageError
from sslall.store._pools import PoolStore
from sslall.workspace import round_lock

sample_app = typer.Typer(help="One sample (a cell image, by id or path): show its history, set "
                         "or correct its label, remove it.", no_args_is_help=True)
quarantine_app = typer.Typer(help="The quarantined samples: list them with their reasons, "
                             "release those whose file is readable again.", no_args_is_help=True)

SampleRef = Annotated[str, typer.Argument(help="A sample id (or a unique prefix of at least 8 "
                      "hex characters) or the image's path.", show_default=False)]
SampleRefs = Annotated[list[str] | None, typer.Argument(
    help="Sample ids (or unique prefixes of 8+ hex characters) or paths.", show_default=False)]
By = Annotated[str | None, typer.Option("--by", help="Who does this, recorded as the event's "
               "actor hand:NAME [default: your login name].", show_default=False)]


def _who(by: str | None) -> str:
    if by is not None and by.strip():
        return by.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


@sample_app.command("show")
@cli_errors
def show_cmd(sample: SampleRef, workspace: WorkspaceOption = None,
             json_out: JsonFlag = False, out: OutOption = None) -> None:
    """A sample's pool, label, path and every event of its history (a removed sample's too,
    by its id).

    \b
    Example:
      sslall sample show 3fa2c1d9
    """
    from sslall.store._curation import sample_history

    ws, _ = open_workspace(workspace)
    with PoolStore(ws.db_path, read_only=True) as store:
        row, events = sample_history(store, sample)
    keys = ("seq", "time", "round", "sample_id", "from_pool", "to_pool", "label", "confidence",
            "reason", "actor")
    data = {"sample": vars(row) if row else None, "removed": row is None,
            "events": [dict(zip(keys, e, strict=True)) for e in events]}
    if json_out:
        print_json(data)
        return
    sid = row.id if row else events[0][3]
    if row:
        say(f"{sid}  {row.path}")
        say(f"pool {row.pool}, label {row.label or '—'} ({row.label_source or 'no source'}), "
            f"model's guess {row.prediction or '—'}" + (f", {row.reason}" if row.reason else ""))
    else:
        say(f"{sid}  removed from the workspace (its history is kept)")
    for e in data["events"]:
        say(f"  {e['time'][:19]}  {e['from_pool'] or 'new'} -> {e['to_pool']}"
            f"  {e['label'] or ''}  by {e['actor']}: {e['reason'] or ''}")


@sample_app.command("set-label")
@cli_errors
def set_label_cmd(
    sample: SampleRef,
    label: Annotated[str, typer.Argument(help="The class it is.", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded in the event "
                      "log).", show_default=False)] = "",
    by: By = None,
    workspace: WorkspaceOption = None,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Set or correct a sample's human label: a labeled or holdout sample keeps its pool; an
    unlabeled, pseudo or review one becomes labeled. Resolves the label conflicts `add`
    recorded for it (the same label confirms the kept one).

    \b
    Example:
      sslall sample set-label cells/b/img_0412.png Pre --reason "second read by Dr. K"
    """
    from sslall.store._curation import set_label

    ws, config = open_workspace(workspace)
    with round_lock(ws, "sslall sample set-label"), PoolStore(ws.db_path) as store:
        change = set_label(store, sample, label, config.classes, reason=reason, by=_who(by))
    if json_out:
        print_json(vars(change))
        return
    if not change.changed:
        say(f"{change.sample_id[:12]} is already labelled {label!r} in {change.to_pool} "
            "(nothing changed)")
        return
    was = f"{change.old_label!r} in {change.from_pool}" if change.old_label else change.from_pool
    say(f"{change.sample_id[:12]} ({change.path}): " + (
        f"label {label!r} confirmed" if change.old_label == label and change.from_pool ==
        change.to_pool else f"{was} -> {label!r} in {change.to_pool}"))
    if change.conflicts_resolved:
        say(f"{change.conflicts_resolved} label conflict(s) resolved")


@sample_app.command("remove")
@cli_errors
def remove_cmd(
    samples: SampleRefs = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded in the event "
                      "log).", show_default=False)] = "",
    quarantined: Annotated[bool, typer.Option("--quarantined", help="Remove every quarantined "
                           "sample.")] = False,
    by: By = None,
    workspace: WorkspaceOption = None,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Remove samples from the workspace: their rows go, their history stays in the event log
    (the last event says removed, why and by whom). Adding the same file again brings it back.

    \b
    Example:
      sslall sample remove 3fa2c1d9 cells/b/img_0007.png --reason "not a blood cell"
      sslall sample remove --quarantined --reason "corrupt scans, not recoverable"
    """
    from sslall.store._curation import find_sample, remove

    if not samples and not quarantined:
        raise UsageError("name the samples to remove (ids or paths), or give --quarantined")
    if not reason.strip():
        raise UsageError("--reason is required: say why (it is recorded in the event log)")
    ws, _ = open_workspace(workspace)
    with round_lock(ws, "sslall sample remove"), PoolStore(ws.db_path) as store:
        chosen = [find_sample(store, ref) for ref in samples or []]
        if quarantined:
            chosen += list(store.samples("quarantine"))
        removed = remove(store, chosen, reason=reason, by=_who(by))
    if json_out:
        print_json({"removed": [vars(r) for r in removed]})
        return
    say(f"removed {len(removed)} sample(s) (kept in the event log)")
    for r in removed[:20]:
        say(f"  {r.sample_id[:12]}  {r.pool}  {r.label or '—'}  {r.path}")
    if len(removed) > 20:
        say(f"  … and {len(removed) - 20} more (use --json for all)")


@quarantine_app.command("list")
@cli_errors
def quarantine_list_cmd(workspace: WorkspaceOption = None, json_out: JsonFlag = False,
                        out: OutOption = None) -> None:
    """Every quarantined sample: its path, why, since when, and the pool it came from.

    \b
    Example:
      sslall quarantine list --json
    """
    from sslall.store._curation import quarantined

    ws, _ = open_workspace(workspace)
    with PoolStore(ws.db_path, read_only=True) as store:
        rows = quarantined(store)
    if json_out:
        print_json({"quarantined": [vars(q) for q in rows]})
        return
    if not rows:
        say("nothing is quarantined")
        return
    table = Table(title=f"{len(rows)} quarantined")
    for col in ("sample", "path", "reason", "since", "from"):
        table.add_column(col, overflow="fold")
    for q in rows:
        table.add_row(q.sample_id[:12], q.path, q.reason or "", q.since[:19],
                      q.from_pool or "import")
    console.print(table)


@quarantine_app.command("release")
@cli_errors
def quarantine_release_cmd(
    samples: SampleRefs = None,
    release_all: Annotated[bool, typer.Option("--all", help="Try every quarantined "
                           "sample.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (added to the event).")] = "",
    by: By = None,
    workspace: WorkspaceOption = None,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Put quarantined samples back into the pool they came from (pseudo goes to unlabeled),
    each only when its file has the sha256 it was imported with and decodes; the others stay,
    each with why. Exits 2 when a sample named by id or path is refused.

    \b
    Example:
      sslall quarantine release --all
    """
    from sslall.store._curation import find_sample, release

    if not samples and not release_all:
        raise UsageError("name the samples to release (ids or paths), or give --all")
    ws, config = open_workspace(workspace)
    with round_lock(ws, "sslall quarantine release"), PoolStore(ws.db_path) as store:
        chosen = [find_sample(store, ref) for ref in samples or []]
        if release_all:
            chosen += list(store.samples("quarantine"))
        report = release(store, chosen, max_pixels=config.data.max_pixels, by=_who(by),
                         reason=reason)
    if json_out:
        print_json(report.as_dict())
    else:
        say(f"released {len(report.released)} sample(s)")
        for sid, path, pool in report.released:
            say(f"  {sid[:12]}  -> {pool}  {path}")
        for sid, path, why in report.refused:
            warn(f"kept {sid[:12]} ({path}): {why}")
    if report.refused and samples:
        raise typer.Exit(2)


def conflicts_cmd(
    include_resolved: Annotated[bool, typer.Option("--all", help="Also list the resolved "
                                "ones, with how.")] = False,
    workspace: WorkspaceOption = None,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """The label conflicts `add` found (the same image given another label than the one kept):
    path, both labels, when. Resolve one with `sslall sample set-label`.

    \b
    Example:
      sslall conflicts
    """
    from sslall.store._curation import conflicts

    ws, _ = open_workspace(workspace)
    with PoolStore(ws.db_path, read_only=True) as store:
        rows = conflicts(store, include_resolved=include_resolved)
    if json_out:
        print_json({"conflicts": [c.as_dict() for c in rows]})
        return
    if not rows:
        say("no open label conflicts" if not include_resolved else "no label conflicts")
        return
    table = Table(title=f"{len(rows)} label conflict(s)")
    for col in ("sample", "path", "given", "kept", "when", "resolved"):
        table.add_column(col, overflow="fold")
    for c in rows:
        table.add_row(c.sample_id[:12], c.path, str(c.label), str(c.existing_label), c.time[:19],
                      c.resolution or "")
    console.print(table)
    if not include_resolved:
        say("resolve one: sslall sample set-label SAMPLE LABEL --reason WHY")


def register(app: typer.Typer) -> None:
    """Add this module's commands and groups to the app."""
    app.add_typer(sample_app, name="sample")
    app.add_typer(quarantine_app, name="quarantine")
    app.command("conflicts")(cli_errors(conflicts_cmd))
