"""CLI commands of the self-training loop: round, run, review (predict and evaluate are in
`_predict`)."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
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
    step_progress,
    warn,
    write_output,
)
from sslall.config import Config, with_overrides
from sslall.errors import ConfigError, UsageError
from sslall.store._pools import PoolStore
from sslall.store._records import POOLS

Threshold = Annotated[float | None, typer.Option(help="Calibrated confidence for a pseudo label "
                      "(pseudo.threshold).")]
Policy = Annotated[str | None, typer.Option(help="fixed, adaptive or propagation (pseudo.policy).")]
Strategy = Annotated[str | None, typer.Option(help="margin, entropy, least-confidence, bald, "
                     "coreset, typiclust or random (route.strategy).")]
Budget = Annotated[int | None, typer.Option(help="Cells sent to review (route.budget).")]
Route = Annotated[str | None, typer.Option(help="retrain, labelstudio or both (route.route).")]
Mode = Annotated[str | None, typer.Option(help="auto, head, last-stage or finetune (model.mode).")]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (model.device).")]
NProc = Annotated[int, typer.Option(help="Processes (GPUs) to run on: launches torchrun with the "
                   "same arguments (`torchrun --nproc_per_node N -m sslall ...`).")]

FLAGS = {"pseudo.threshold": "--threshold", "pseudo.policy": "--policy",
         "route.strategy": "--strategy", "route.budget": "--budget", "route.route": "--route",
         "model.mode": "--mode", "model.device": "--device"}


def round_config(config: Config, threshold: float | None, policy: str | None,
                 strategy: str | None, budget: int | None, route: str | None, mode: str | None,
                 device: str | None) -> Config:
    """The workspace config with the command's flags applied, validated like the file."""
    try:
        return with_overrides(
            config, pseudo={"threshold": threshold, "policy": policy},
            route={"strategy": strategy, "budget": budget, "route": route},
            model={"mode": mode, "device": device},
        )
    except ConfigError as exc:
        flag = FLAGS.get(exc.key)
        if flag:
            raise ConfigError(flag, exc.problem, exc.allowed) from None
        raise


def _show_round(result, classes: tuple[str, ...]) -> None:
    table = Table(title=f"round {result.round}")
    table.add_column("moves")
    table.add_column("n", justify="right")
    for move, n in sorted(result.moves.items()):
        table.add_row(move, str(n))
    if not result.moves:
        table.add_row("(none)", "0")
    console.print(table)
    metrics = Table(title="holdout metrics")
    for col in ("metric", "this round", "previous"):
        metrics.add_column(col, justify="right")
    now, before = result.metrics or {}, result.previous_metrics or {}
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "ece"):
        metrics.add_row(key, _fmt(now.get(key)), _fmt(before.get(key)))
    if result.metrics is None:
        console.print("no holdout: metrics need `sslall add holdout` or --holdout-fraction")
    else:
        console.print(metrics)
    console.print("pools: " + ", ".join(f"{p} {result.pools.get(p, 0)}" for p in POOLS))


def _show_labelstudio(result) -> None:
    """What the round's pull and push did, and one warning line per failure."""
    ls = result.labelstudio
    if ls:
        pull, push = ls["pull"], ls["push"] or {}
        if not pull.get("error"):
            say(f"Label Studio: pulled {pull['labeled']} label(s), {pull['skipped']} skip(s)")
        if push and not push.get("error"):
            say(f"Label Studio: pushed {push['pushed']} task(s)")
    for line in result.warnings:
        warn(line)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def round_cmd(
    threshold: Threshold = None, policy: Policy = None, strategy: Strategy = None,
    budget: Budget = None, route: Route = None, mode: Mode = None, device: Device = None,
    nproc: NProc = 1, workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Run one self-training round: verify files, train, calibrate, score, pseudo-label,
    route to review, record. Exits 75 at once if another round holds the workspace.

    \b
    Example:
      sslall round --threshold 0.9 --policy adaptive --strategy margin --budget 20
      sslall round --nproc 4        (or: torchrun --nproc_per_node 4 -m sslall round)
    """
    ws, config = open_workspace(workspace)
    config = round_config(config, threshold, policy, strategy, budget, route, mode, device)
    _refuse_if_busy(ws)
    if nproc != 1:
        raise typer.Exit(_launch(nproc))
    from sslall.model._distributed import teardown  # torch: only once the round will run

    dist = _join(config)
    result = _one_round(ws, config, dist)
    teardown(dist)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return
    if json_out:
        print_json(result.summary())
    elif not _quiet():
        _show_round(result, config.classes)
    say(f"round {result.round} recorded in {result.run_dir}")
    _show_labelstudio(result)


def run_cmd(
    rounds: Annotated[int, typer.Option(help="Maximum number of rounds.")] = 3,
    threshold: Threshold = None, policy: Policy = None, strategy: Strategy = None,
    budget: Budget = None, route: Route = None, mode: Mode = None, device: Device = None,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Repeat rounds until --rounds or until a round makes no pseudo-label or label change.

    A round counts as a change when it adds, removes or relabels a pseudo label, quarantines a
    file, or trains on human labels that arrived since the previous round (Label Studio
    answers, review import, add labeled). Cells sent to review alone are no change: the next
    round would learn from the same labels, so the run stops.

    \b
    Example:
      sslall run --rounds 5 --threshold 0.95
    """
    from sslall.model._distributed import broadcast, teardown

    if rounds < 1:
        raise UsageError("--rounds must be at least 1")
    ws, config = open_workspace(workspace)
    config = round_config(config, threshold, policy, strategy, budget, route, mode, device)
    results = []
    dist = _join(config)  # under torchrun: rank 0 decides when to stop, the others follow
    for _ in range(rounds):
        result = _one_round(ws, config, dist)
        if result is not None:
            results.append(result.summary())
            if not json_out and not _quiet():
                _show_round(result, config.classes)
            _show_labelstudio(result)
        if not broadcast(dist, result is not None and result.changed):
            if result is not None:
                say(f"round {result.round} made no pseudo-label or label change; stopping")
            break
    teardown(dist)
    if dist is not None and not dist.is_main:
        return
    if json_out:
        print_json(results)


def _refuse_if_busy(ws) -> None:
    """Exit 75 before loading torch when another round holds the lock (a scheduled job on a busy
    workspace answers in a fraction of a second). Only a shortcut: rank 0 still takes the lock.
    Skipped under torchrun, where every rank must reach the same place."""
    import os

    from sslall.errors import LockBusy
    from sslall.model._launcher import record_exit_code
    from sslall.workspace import lock_is_held, read_lock_holder

    if os.environ.get("WORLD_SIZE", "1") in ("", "1") and lock_is_held(ws):
        holder = read_lock_holder(ws)
        record_exit_code(LockBusy.exit_code)  # torchrun --nproc_per_node 1 reports 1 otherwise
        raise LockBusy(holder.get("pid"), holder.get("started"), holder.get("command"))


def _launch(nproc: int) -> int:
    """`--nproc N`: this same command under torchrun, minus `--nproc`; rank 0's exit code."""
    from sslall.model._launcher import launch, world_size_from_env

    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    if world_size_from_env() > 1:
        raise UsageError("--nproc launches torchrun; inside torchrun leave it out")
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        argv.append(arg)
    return launch(nproc, argv)


def _join(config: Config):
    """Join torchrun's process group when launched by it (None for a single process)."""
    from sslall.model._devices import resolve_device
    from sslall.model._distributed import setup

    return setup(resolve_device(config.model.device))


def _one_round(ws, config: Config, dist):
    """One round (progress bars on rank 0 only); rank 0 records its exit code for `--nproc`."""
    from sslall.errors import SslallError
    from sslall.model._launcher import record_exit_code
    from sslall.rounds import run_round

    main = dist is None or dist.is_main
    try:
        with step_progress() if main else nullcontext(None) as update:
            result = run_round(ws, config, progress=update, dist=dist)
    except SslallError as exc:
        if main:
            record_exit_code(exc.exit_code)
        raise
    return result


def _quiet() -> bool:
    from sslall.cli._console import is_quiet

    return is_quiet()


review_app = typer.Typer(help="Label the review queue by hand (CSV), without Label Studio.",
                         no_args_is_help=True)


@review_app.command("export")
@cli_errors
def review_export(
    out: OutOption = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Deprecated: --out FILE.",
                                                   hidden=True)] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Print the review queue as CSV, or write it to --out FILE; fill its `label` column (a
    class, or `skip`) and apply it with `sslall review import FILE`.

    \b
    Example:
      sslall review export --out queue.csv
    """
    from sslall.store._review_csv import export_review, review_csv

    target = out or _deprecated_csv(csv_path, "--out")
    ws, _ = open_workspace(workspace)
    with PoolStore(ws.db_path, read_only=True) as store:
        if target is None:
            text, _n = review_csv(store)
            write_output(text)
            return
        n = export_review(store, target)
    say(f"wrote {n} review rows to {target}")


@review_app.command("import")
@cli_errors
def review_import(
    csv_file: Annotated[Path | None, typer.Argument(metavar="FILE", help="The filled-in "
                        "review CSV.", show_default=False)] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Deprecated: give FILE.",
                                                   hidden=True)] = None,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Apply labels from a filled-in review CSV: review -> labeled (or unlabeled for `skip`).

    \b
    Example:
      sslall review import queue.csv
    """
    from sslall.store._review_csv import import_review
    from sslall.workspace import round_lock

    if (csv_file is None) == (csv_path is None):
        raise UsageError("give the filled-in review CSV: sslall review import FILE")
    source = csv_file or _deprecated_csv(csv_path, "FILE")
    ws, config = open_workspace(workspace)
    with round_lock(ws, "sslall review import"), PoolStore(ws.db_path) as store:
        report = import_review(store, source, config.classes)
    if json_out:
        print_json(vars(report))
        return
    say(f"labeled {report.labeled}, skipped {report.skipped}, still pending {report.pending}")
    for line in report.rejected:
        say(f"  rejected {line}")


def _deprecated_csv(path: Path | None, instead: str) -> Path | None:
    """The review commands' old `--csv FILE` (`--csv` now only ever means "print CSV"): still
    honoured, with a warning naming what replaces it."""
    if path is not None:
        warn(f"--csv FILE is deprecated here; give {instead} instead")
    return path


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    from sslall.cli._demo import demo_cmd
    from sslall.cli._predict import evaluate_cmd, predict_cmd
    from sslall.cli._simulate import simulate_cmd

    app.command("round")(cli_errors(round_cmd))
    app.command("run")(cli_errors(run_cmd))
    app.add_typer(review_app, name="review")
    app.command("predict")(cli_errors(predict_cmd))
    app.command("evaluate")(cli_errors(evaluate_cmd))
    app.command("demo")(cli_errors(demo_cmd))
    app.command("simulate")(cli_errors(simulate_cmd))
