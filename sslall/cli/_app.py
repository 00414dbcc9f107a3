"""The `sslall` command line: parsing and printing only; the work lives in the library.

Exit codes: 0 ok, 1 failure, 2 usage error (arguments, config, manifest, input), 3 not found
(workspace, checkpoint, file), 4 the pool store failed its invariants, 5 Label Studio failed,
75 another round holds the workspace lock (try later).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sslall import __version__
from sslall.cli._console import (
    JsonFlag,
    OutOption,
    WorkspaceOption,
    cli_errors,
    console,
    open_workspace,
    print_json,
    progress_bar,
    say,
    set_flags,
    warn,
)
from sslall.cli._models import model_in_use, model_line
from sslall.config import Config, ModelConfig, parse_classes
from sslall.errors import ConfigError, IntegrityError, UsageError
from sslall.store._holdout import holdout_warning
from sslall.store._pools import PoolStore
from sslall.store._records import POOLS
from sslall.workspace import Workspace, create_workspace, lock_is_held, read_lock_holder, round_lock

app = typer.Typer(
    name="sslall",
    help="Semi-supervised, active-learning classification of blood-smear cell images.\n\n"
    "Start with `sslall demo`, or `sslall init DIR --classes A,B` then `sslall add`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"sslall {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors; the log "
                     "file in the workspace (logs/sslall.log) still records everything.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                       help="Print the version.")] = False,
) -> None:
    """Semi-supervised, active-learning classification of blood-smear cell images."""
    set_flags(debug=debug, quiet=quiet)


@app.command()
@cli_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new workspace.")],
    classes: Annotated[str, typer.Option(help="Comma-separated class names, in order.")],
    backbone: Annotated[str, typer.Option(help="timm model name or baseline-cnn.")] =
        ModelConfig.backbone,
    image_size: Annotated[int, typer.Option(help="Input side in pixels.")] = ModelConfig.image_size,
) -> None:
    """Create a workspace: sslall.toml, pools/pools.db and runs/.

    \b
    Example:
      sslall init ward7 --classes Benign,Early,Pre,Pro --backbone resnet18
    """
    from sslall.config import with_overrides

    parsed = parse_classes(classes, key="--classes")
    config = with_overrides(Config(classes=parsed), model={"backbone": backbone,
                                                             "image_size": image_size})
    if os.path.lexists(directory) and not directory.is_dir():
        raise UsageError(f"cannot create a workspace at {directory}: it exists and is not a folder")
    try:
        ws = create_workspace(directory, config)
    except OSError as exc:  # a file where a parent folder should be, no permission, disk full
        raise UsageError(f"cannot create a workspace at {directory}: "
                         f"{exc.strerror or exc}") from None
    root = ws.root
    say(f"created workspace {root} with classes {', '.join(parsed)} "
        f"(backbone {config.model.backbone}, {config.model.image_size} px)")
    say(f"next: sslall add labeled FOLDER -w {root}")


@app.command()
@cli_errors
def add(
    pool: Annotated[str, typer.Argument(help="labeled, unlabeled or holdout.")],
    source: Annotated[Path, typer.Argument(help="A folder (class sub-folders for labeled and "
                      "holdout), one image (unlabeled only) or a CSV manifest with columns "
                      "path[,label][,patient].")],
    holdout_fraction: Annotated[float | None, typer.Option(
        help="Carve this fraction of a labeled import into the holdout (stratified by class, "
        "grouped by patient).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the holdout split.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Decoding processes.")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Add images to a pool. Re-adding is a no-op; duplicates and label conflicts are reported;
    unreadable files go to quarantine with the reason.

    \b
    Example:
      sslall add labeled ./cells/train --holdout-fraction 0.2
    """
    from sslall.store._importer import import_source

    ws, config = open_workspace(workspace)
    fraction = config.data.holdout_fraction if holdout_fraction is None else holdout_fraction
    if not 0 <= fraction < 1:
        raise ConfigError("--holdout-fraction", f"{fraction} is out of range", "[0, 1)")
    if pool != "labeled" and holdout_fraction:
        raise UsageError("--holdout-fraction only applies to the labeled pool")
    with round_lock(ws, "sslall add"), PoolStore(ws.db_path) as store:
        with progress_bar(f"adding to {pool}") as update:
            report = import_source(
                store, source, pool, config.classes, max_pixels=config.data.max_pixels,
                holdout_fraction=fraction if pool == "labeled" else 0.0, seed=seed,
                workers=workers, progress=update,
            )
    for line in report.warnings:
        warn(line)
    if json_out:
        print_json(report.as_dict())
        return
    added = ", ".join(f"{n} to {p}" for p, n in sorted(report.added.items())) or "nothing new"
    say(f"added {added}")
    if report.already_present:
        say(f"{report.already_present} already present (no-op)")
    if report.promoted:
        say(f"{report.promoted} moved from unlabeled to labeled by their new label")
    if report.released:
        say(f"{len(report.released)} released from quarantine (re-added; their history is kept)")
    if report.relocated:
        say(f"{len(report.relocated)} relocated: known files found at a new path (the old is gone)")
    for what, rows in (("duplicate", report.duplicates), ("conflict", report.conflicts),
                       ("quarantined", report.quarantined)):
        if rows:
            say(f"{len(rows)} {what}{'s' if what != 'quarantined' else ''}:")
            for path, detail in rows[:20]:
                say(f"  {path}: {detail}")
            if len(rows) > 20:
                say(f"  … and {len(rows) - 20} more (use --json for all)")


NO_LABEL = "—"
UNLABELLED_POOLS = ("unlabeled", "review")


def status_data(ws: Workspace, config: Config) -> dict:
    """Everything `sslall status` shows, as JSON-ready data."""
    from sslall.report._runfiles import read_label_issues

    with PoolStore(ws.db_path, read_only=True) as store:
        counts = store.counts()
        rounds = store.rounds()
        last = store.last_round()
        model = model_in_use(ws, store)
    # The store decides: a round folder without a committed round is a killed round's leftover.
    checkpoint = ws.round_dir(last) if last and (ws.round_dir(last) / "model.json").exists() else None
    holder = read_lock_holder(ws) if lock_is_held(ws) else None
    return {
        "workspace": str(ws.root),
        "classes": list(config.classes),
        "pools": {p: sum(counts[p].values()) for p in POOLS},
        "per_class": {p: {str(k): v for k, v in sorted(counts[p].items(), key=lambda kv: str(kv[0]))}
                      for p in POOLS},
        "rounds": rounds,
        "latest_checkpoint": str(checkpoint) if checkpoint else None,
        "model": model,
        "holdout_warning": holdout_warning(counts["holdout"], config.classes),
        "running": holder,
        # the latest round's suspected human label errors, most suspect first (None: not searched)
        "label_issues": {"round": last, "issues": issues} if last and (
            issues := read_label_issues(ws.round_dir(last))) is not None else None,
    }


@app.command()
@cli_errors
def status(workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None) -> None:
    """Pool sizes overall and per class, rounds so far, the model in use. The class columns of
    unlabeled and review show "—": their cells have no label.

    \b
    Example:
      sslall status --json
    """
    ws, config = open_workspace(workspace)
    data = status_data(ws, config)
    if json_out:
        print_json(data)
        return
    table = Table(title=f"pools of {ws.root.name}")
    table.add_column("pool")
    for c in config.classes:
        table.add_column(c, justify="right")
    table.add_column("total", justify="right", style="bold")
    for p in POOLS:
        per = data["per_class"][p]
        other = sum(v for k, v in per.items() if k not in config.classes)
        # unlabeled and review cells carry no label (review's model guesses: `review export`)
        cells = [NO_LABEL if p in UNLABELLED_POOLS else str(per.get(c, 0)) for c in config.classes]
        total = str(data["pools"][p]) + (f" ({other} without class)" if other and p in (
            "labeled", "pseudo", "holdout") else "")
        table.add_row(p, *cells, total)
    console.print(table)
    if data["rounds"]:
        rt = Table(title="rounds")
        for col in ("round", "finished", "macro-F1", "accuracy", "ECE", "pseudo", "review"):
            rt.add_column(col, justify="right")
        for r in data["rounds"][-10:]:
            m = r.get("metrics") or {}  # None: the round had no holdout to measure on
            rt.add_row(str(r["round"]), r["finished_at"][:19], _fmt(m.get("macro_f1")),
                       _fmt(m.get("accuracy")), _fmt(m.get("ece")),
                       str(r.get("pools", {}).get("pseudo", "")),
                       str(r.get("pools", {}).get("review", "")))
        console.print(rt)
    else:
        console.print("no rounds yet")
    console.print(f"latest checkpoint: {data['latest_checkpoint'] or 'none'}")
    console.print(model_line(data["model"]))
    if data["holdout_warning"]:
        warn(data["holdout_warning"])
    if data["label_issues"]:
        found = data["label_issues"]["issues"]
        console.print(f"suspected label errors (round {data['label_issues']['round']}): "
                      f"{len(found)}" + "".join(f"\n  {i['label']} -> {i['suggested']} "
                      f"(p={i['p_suggested']:.2f})  {i['path']}" for i in found[:5]), markup=False)
    if data["running"]:
        console.print(f"running now: {data['running'].get('command')} "
                      f"(pid {data['running'].get('pid')}, since {data['running'].get('started')})")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@app.command()
@cli_errors
def check(
    workspace: WorkspaceOption = None,
    files: Annotated[bool, typer.Option("--files/--no-files", help="Also re-hash every file "
                     "(slow on big pools).")] = True,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Verify the pool store: one pool per sample, the event log replays to the current pools,
    every file still exists with the same hash. Exits 4 listing each violation.

    \b
    Example:
      sslall check --no-files
    """
    from sslall.store._integrity import check_store

    ws, config = open_workspace(workspace)
    with PoolStore(ws.db_path, read_only=True) as store:
        total = sum(store.pool_sizes().values())
        with progress_bar("hashing files", total if files else 0) as update:
            violations = check_store(store, config.classes, files=files, progress=update)
    if json_out:
        print_json({"ok": not violations, "samples": total,
                    "violations": [vars(v) for v in violations]})
    else:
        for v in violations:
            console.print(f"  {v}", markup=False)
    if violations:
        raise IntegrityError(f"{len(violations)} invariant violation(s) in {ws.db_path}")
    if not json_out:
        say(f"ok: {total} samples, every invariant holds")


@app.command()
@cli_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (one sub-folder per class).")],
    classes: Annotated[str, typer.Option(help="Comma-separated class names.")] = "L1,L2,L3",
    n: Annotated[int, typer.Option(help="Images per class.")] = 100,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same images).")] = 0,
    difficulty: Annotated[float, typer.Option(help="0 easy … 1 hard: class overlap.")] = 0.5,
    patients: Annotated[int, typer.Option(help="Also write manifest.csv with this many "
                        "patients.")] = 0,
) -> None:
    """Draw synthetic stained blood-cell images, one folder per class.

    \b
    Example:
      sslall synth cells --classes L1,L2,L3 --n 200 --size 96 --seed 1
    """
    from sslall.data._synthetic import write_dataset

    names = parse_classes(classes, key="--classes")
    if not 0 <= difficulty <= 1:
        raise ConfigError("--difficulty", f"{difficulty} is out of range", "[0, 1]")
    try:
        written = write_dataset(out, names, n, size=size, seed=seed, difficulty=difficulty,
                                patients=patients)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    say(f"wrote {len(written)} images of {len(names)} classes to {out}")


def main() -> None:
    """Console-script entry point."""
    app()


def _register_round_commands() -> None:
    from sslall.cli import _config as cli_config
    from sslall.cli import _curation as cli_curation
    from sslall.cli import _data as cli_data
    from sslall.cli import _export as cli_export
    from sslall.cli import _holdout as cli_holdout
    from sslall.cli import _insight as cli_insight
    from sslall.cli import _label as cli_label
    from sslall.cli import _models as cli_models
    from sslall.cli import _round as cli_round
    from sslall.cli import _serve as cli_serve

    cli_round.register(app)
    cli_label.register(app)
    cli_insight.register(app)
    cli_data.register(app)
    cli_models.register(app)
    cli_holdout.register(app)
    cli_curation.register(app)
    cli_export.register(app)
    cli_serve.register(app)
    cli_config.register(app)


_register_round_commands()

