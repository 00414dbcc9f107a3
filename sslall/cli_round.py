"""CLI commands of the self-training loop: round, run, review, predict, evaluate, demo."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
