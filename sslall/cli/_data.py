"""CLI commands that move the data set: relocate (the images moved) and export-data (the
labelled cells leave for another tool)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sslall.cli._console import (
    JsonFlag,
    OutOption,
    WorkspaceOption,
    cli_errors,
    open_workspace,
    print_json,
    progress_bar,
    say,
    warn,
)
from sslall.store._pools import PoolStore
from sslall.workspace import round_lock

SHOWN = 10


def relocate_cmd(
    old_prefix: Annotated[str, typer.Argument(help="The folder the images were under (as "
                          "recorded at import).")],
    new_prefix: Annotated[str, typer.Argument(help="The folder they are under now.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Verify and show what would "
                       "change; change nothing.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Change nothing unless every file "
                      "is found with its bytes under NEW_PREFIX.")] = False,
    workspace: WorkspaceOption = None,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Point the workspace at images that moved: OLD_PREFIX/rest becomes NEW_PREFIX/rest for
    every sample whose file is there with the same sha256. Files missing or different there are
    reported and left as they were; cells quarantined as missing are released. Each change is an
    event of the pool store.

    \b
    Example:
      sslall relocate /mnt/old-disk/cells /data/cells --dry-run
    """
    from sslall.store._relocate import relocate

    ws, _ = open_workspace(workspace)
    if dry_run:
        with PoolStore(ws.db_path, read_only=True) as store, \
                progress_bar("verifying files") as update:
            report = relocate(store, old_prefix, new_prefix, strict=strict, dry_run=True,
                              progress=update)
    else:
        with round_lock(ws, "sslall relocate"), PoolStore(ws.db_path) as store, \
                progress_bar("verifying files") as update:
            report = relocate(store, old_prefix, new_prefix, strict=strict, progress=update)
    if json_out:
        print_json(report.as_dict())
        return
    verb = "would relocate" if dry_run else "relocated"
    say(f"{verb} {len(report.moved)} of {report.matched} samples under {report.old_prefix} "
        f"to {report.new_prefix}")
    if dry_run:
        for r in report.moved[:SHOWN]:
            say(f"  {r.old_path} -> {r.new_path}")
    if report.released:
        say(f"{len(report.released)} {'would be ' if dry_run else ''}released from quarantine "
            "(their files were missing and are found again)")
    if report.refused:
        warn(f"{len(report.refused)} left unchanged: their file under {report.new_prefix} is "
             "missing or differs")
        for old, new, why in report.refused[:SHOWN]:
            say(f"  {new}: {why} (recorded: {old})")
        if len(report.refused) > SHOWN:
            say(f"  … and {len(report.refused) - SHOWN} more (use --json for the first 20)")


def export_data_cmd(
    dest: Annotated[Path, typer.Argument(help="A folder (--format folders) or a CSV file "
                    "(--format csv), outside the workspace.")],
    fmt: Annotated[str, typer.Option("--format", help="folders: DEST/<pool>/<class>/<file> "
                   "and DEST/manifest.csv; csv: one manifest naming the files in place.")] =
        "folders",
    link: Annotated[str, typer.Option(help="copy, hard (hard links) or symlink (folders "
                    "only).")] = "copy",
    pseudo_above: Annotated[float | None, typer.Option(help="Also export pseudo-labelled "
                            "cells whose confidence is at least this (e.g. 0.95).")] = None,
    include_holdout: Annotated[bool, typer.Option("--include-holdout", help="Also export the "
                               "holdout (human-labelled, under DEST/holdout).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Export into a non-empty folder "
                     "(no image there is overwritten) or replace an existing CSV.")] = False,
    workspace: WorkspaceOption = None,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Export the human-labelled cells (and optionally confident pseudo labels and the holdout)
    as a class-per-folder tree or a CSV manifest (path, label, label_source, confidence, pool,
    sample_id). Files whose bytes changed since import are not exported.

    \b
    Example:
      sslall export-data ../labelled-cells --pseudo-above 0.95 --link hard
    """
    from sslall.store._export import export_data

    ws, _ = open_workspace(workspace)
    with PoolStore(ws.db_path, read_only=True) as store, \
            progress_bar("exporting") as update:
        report = export_data(store, ws.root, dest, fmt=fmt, link=link, pseudo_above=pseudo_above,
                             include_holdout=include_holdout, force=force, progress=update)
    if json_out:
        print_json(report.as_dict())
        return
    data = report.as_dict()
    parts = ", ".join(f"{sum(per.values())} {pool}" for pool, per in data["per_pool"].items())
    say(f"exported {data['exported']} files ({parts or 'none'}) to {report.dest}")
    if report.already_there:
        say(f"{report.already_there} already there with the same bytes (kept)")
    for what, paths in (("changed since import, not exported", report.changed),
                        ("missing or unreadable, not exported", report.missing),
                        ("already in DEST with other bytes, not overwritten", report.exists)):
        if paths:
            warn(f"{len(paths)} {what}")
            for p in paths[:SHOWN]:
                say(f"  {p}")
            if len(paths) > SHOWN:
                say(f"  … and {len(paths) - SHOWN} more (use --json for all)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("relocate")(cli_errors(relocate_cmd))
    app.command("export-data")(cli_errors(export_data_cmd))
