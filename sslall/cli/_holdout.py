"""CLI command `sslall holdout carve`: a holdout carved out of the labeled pool after import.

A group (`sslall holdout ...`) rather than an `add` option: `add` imports files, and re-adding
files already in the store is a no-op by design; carving moves cells the store already holds.
"""

from __future__ import annotations

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
    warn,
)
from sslall.store._pools import PoolStore
from sslall.workspace import round_lock

holdout_app = typer.Typer(help="The holdout: cells kept out of training to measure the model.",
                          no_args_is_help=True)


@holdout_app.command("carve")
@cli_errors
def carve_cmd(
    fraction: Annotated[float, typer.Option(help="Share of each class's labeled cells (whole "
                        "patients where the manifest named them) moved to the holdout.")],
    seed: Annotated[int | None, typer.Option(help="Seed of the draw (default train.seed).")] =
        None,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Move a stratified share of the labeled pool to the holdout, for a lab that imported its
    labels without --holdout-fraction. Each move is an event ("carved as holdout"); a carve
    that would leave a class without a labeled cell is refused.

    \b
    Example:
      sslall holdout carve --fraction 0.2
    """
    from sslall.store._carve import carve_holdout
    from sslall.store._holdout import holdout_warning

    ws, config = open_workspace(workspace)
    with round_lock(ws, "sslall holdout carve"), PoolStore(ws.db_path) as store:
        report = carve_holdout(store, config.classes, fraction,
                               seed=config.train.seed if seed is None else seed)
    small = holdout_warning(report.holdout, config.classes)
    if json_out:
        print_json({**report.as_dict(), "warning": small})
        return
    group = " (whole patients)" if report.by_patient else ""
    say(f"moved {report.total} labeled cell(s) to the holdout{group}: "
        + ", ".join(f"{c} {n}" for c, n in report.moved.items()))
    say("holdout now: " + ", ".join(f"{c} {n}" for c, n in report.holdout.items()))
    if small:
        warn(small)


def register(app: typer.Typer) -> None:
    """Add this module's command group to the app."""
    app.add_typer(holdout_app, name="holdout")
