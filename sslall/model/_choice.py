"""The checkpoint a workspace's model commands use: the promoted round, else the best round by
holdout macro-F1, else the last (the rule is `sslall.store._promotion.choose_round`).

No torch here, so `sslall status` can say which model is in use without loading it.
"""

from __future__ import annotations

from pathlib import Path

from sslall.errors import NotFoundError
from sslall.model._paths import META_NAME
from sslall.store._pools import PoolStore
from sslall.store._promotion import ModelChoice, Promotion, choose_round, promoted, record_promotion
from sslall.workspace import Workspace

__all__ = [
    "chosen_checkpoint", "has_checkpoint", "model_choice", "promote_round", "round_checkpoint",
]


def has_checkpoint(ws: Workspace, round_no: int) -> bool:
    """Whether `runs/round-NNNN/` still holds a checkpoint (not pruned, not removed by hand)."""
    return (ws.round_dir(round_no) / META_NAME).is_file()


def round_checkpoint(ws: Workspace, round_no: int) -> Path:
    """The folder of round `round_no`'s checkpoint (`--round N` of the model commands).

    Raises:
        NotFoundError: the round has no checkpoint folder (never run, pruned or removed).
    """
    if not has_checkpoint(ws, round_no):
        raise NotFoundError(f"round {round_no} has no checkpoint in {ws.round_dir(round_no)}")
    return ws.round_dir(round_no)


def model_choice(ws: Workspace, store: PoolStore) -> ModelChoice | None:
    """The round the model commands use and why; None before the first round."""
    entry = promoted(store)
    return choose_round(store.rounds(), entry and entry.round,
                        lambda r: has_checkpoint(ws, r))


def chosen_checkpoint(ws: Workspace) -> Path:
    """The folder of the round the model commands use (see the module docstring).

    Raises:
        NotFoundError: no round has finished yet, or the promoted round's folder is gone.
    """
    with PoolStore(ws.db_path, read_only=True) as store:
        choice = model_choice(ws, store)
    if choice is None:
        raise NotFoundError("no round has finished yet, so there is no checkpoint; run "
                            "`sslall round` first or pass --checkpoint")
    if choice.why == "promoted" and not has_checkpoint(ws, choice.round):
        raise NotFoundError(f"the promoted round {choice.round} has no checkpoint in "
                            f"{ws.round_dir(choice.round)}; promote another round or "
                            "`sslall promote --clear`")
    return ws.round_dir(choice.round)


def promote_round(ws: Workspace, store: PoolStore, round_no: int | None, by: str) -> Promotion:
    """Promote a committed round whose checkpoint folder exists (None: clear the promotion).
    The caller holds the round lock, so no prune removes the folder meanwhile.

    Raises:
        NotFoundError: `round_no` is no committed round, or its checkpoint folder is gone.
    """
    if round_no is not None:
        committed = [r["round"] for r in store.rounds()]
        if round_no not in committed:
            span = ("no round yet" if not committed else "only round 1" if committed[-1] == 1
                    else f"rounds 1-{committed[-1]}")
            raise NotFoundError(f"round {round_no} is not a finished round ({span})")
        if not has_checkpoint(ws, round_no):
            raise NotFoundError(f"round {round_no} has no checkpoint folder "
                                f"({ws.round_dir(round_no)} was pruned or removed)")
    return record_promotion(store, round_no, by)
