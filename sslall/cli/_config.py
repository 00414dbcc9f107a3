"""CLI commands about the configuration: `sslall config show` (the workspace's effective
sslall.toml) and `sslall config schema` (its JSON Schema, for editors and CI checks)."""

from __future__ import annotations

import sys

import typer

from sslall.cli._console import JsonFlag, OutOption, WorkspaceOption, cli_errors, open_workspace, print_json

config_app = typer.Typer(help="The workspace configuration (sslall.toml): the effective values "
                         "and the schema.", no_args_is_help=True)


@config_app.command("show")
@cli_errors
def show(workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None) -> None:
    """Print the effective configuration: the workspace's sslall.toml with every key it leaves
    out at its default, as TOML (each key with its documentation) or, with --json, JSON.

    \b
    Example:
      sslall config show -w ward7
      sslall config show --json | jq .route
    """
    from sslall._schema import config_data
    from sslall.config import render_config

    _, config = open_workspace(workspace)
    if json_out:
        print_json(config_data(config))
        return
    sys.stdout.write(render_config(config))


@config_app.command("schema")
@cli_errors
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of sslall.toml: each key's type, default,
    description, allowed values and range; an editor or a CI job can check a config with it.
    Strategy and policy names are those registered now.

    \b
    Example:
      sslall config schema > sslall.schema.json
    """
    from sslall._schema import config_schema
    from sslall.decide import _acquisition, _policies  # noqa: F401 - register the live names

    print_json(config_schema())


def register(app: typer.Typer) -> None:
    """Add this module's command group to the app."""
    app.add_typer(config_app, name="config")
