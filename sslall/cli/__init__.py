"""The `sslall` command line (Typer): parsing and printing only; nothing imports it."""

from sslall.cli._app import app, main

__all__ = ["app", "main"]
