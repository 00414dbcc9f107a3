"""CLI commands for Label Studio: `sslall label push|pull|status` and `sslall labelstudio up|down`.

The API key is never printed: `up` prints the path of the file that holds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

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
)
from sslall.store._pools import PoolStore
from sslall.store._records import Sample

T = TypeVar("T")

label_app = typer.Typer(help="Send the review queue to Label Studio and take the answers back.",
                        no_args_is_help=True)
server_app = typer.Typer(help="A local Label Studio server on 127.0.0.1, for trying the loop "
                         "(install it with `make labelstudio`).", no_args_is_help=True)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "sslall" / "labelstudio"


def _locked(fn: Callable[..., T], workspace: Path | None, command: str) -> T:
    """`fn(store, config, base=...)` holding the workspace lock (pushes and pulls write)."""
    from sslall.workspace import round_lock

    ws, config = open_workspace(workspace)
    with round_lock(ws, command), PoolStore(ws.db_path) as store:
        return fn(store, config, base=ws.root)


DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="The server's data folder (database, media, credentials) "
    "[default: $XDG_DATA_HOME/sslall/labelstudio].", show_default=False)]


@label_app.command("push")
@cli_errors
def push_cmd(
    with_cam: Annotated[bool, typer.Option("--with-cam", help="Attach a Grad-CAM overlay "
                        "(where the model looked) to each new task, shown under the cell.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint for --with-cam (default: "
                          "the promoted round, else the best by holdout macro-F1).")] = None,
    workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Send every review cell not yet sent as a task with the model's guess pre-selected;
    creates the project on first use. Pushing twice never makes a second task for a cell.

    \b
    Example:
      export LABEL_STUDIO_API_KEY=...   # or set labelstudio.api_key_file
      sslall label push --with-cam
    """
    from functools import partial

    from sslall.labelstudio._push import push

    overlay = _cam_overlay(workspace, checkpoint) if with_cam else None
    report = _locked(partial(push, overlay=overlay), workspace, "sslall label push")
    if json_out:
        print_json(report.as_dict())
        return
    made = " (created it)" if report.created_project else ""
    say(f"pushed {report.pushed} task(s) to Label Studio project {report.project_id}{made}; "
        f"{report.already} already there" + (f", {report.recovered} recovered from an "
                                              "interrupted push" if report.recovered else "")
        + (f"; {report.refreshed} open task(s) got the newest round's guess"
           if report.refreshed else ""))


def _cam_overlay(workspace: Path | None, checkpoint: Path | None) -> Callable[[Sample], Path]:
    """sample -> its Grad-CAM overlay, written under WORKSPACE/cam/ as JPEG (small enough to
    travel inside the task; the model loads once, on the first task that needs it)."""
    from sslall.cli._insight import resolve_checkpoint

    ws, _ = open_workspace(workspace)
    source = resolve_checkpoint(checkpoint, workspace)
    folder = ws.root / "cam"
    explainers: list = []

    def overlay(sample: Sample) -> Path:
        from sslall.report._gradcam import Explainer

        if not explainers:
            explainers.append(Explainer(source))
        picture, _, _ = explainers[0].overlay(sample.path)
        folder.mkdir(exist_ok=True)
        target = folder / f"{sample.id[:16]}.cam.jpg"
        picture.save(target, quality=90)
        return target

    return overlay


@label_app.command("pull")
@cli_errors
def pull_cmd(workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None) -> None:
    """Take finished annotations back: review -> labeled (label_source labelstudio), a skipped
    task -> unlabeled. Labels that are not classes are rejected and listed. Pulling twice
    changes nothing the second time.

    \b
    Example:
      sslall label pull --json
    """
    from sslall.labelstudio._pull import pull

    report = _locked(pull, workspace, "sslall label pull")
    if json_out:
        print_json(report.as_dict())
        return
    say(f"labeled {report.labeled} ({report.agree} agree with the model, {report.disagree} "
        f"disagree), skipped {report.skipped}, already pulled {report.already}")
    if report.elsewhere:
        say(f"{report.elsewhere} answer(s) for cells no longer in review were set aside")
    for line in report.rejected:
        say(f"  rejected {line}")


@label_app.command("status")
@cli_errors
def status_cmd(workspace: WorkspaceOption = None, json_out: JsonFlag = False, out: OutOption = None) -> None:
    """Per class of the model's guess: queued (not sent yet), pushed, annotated (waiting for a
    pull) and pending (waiting for an annotator).

    \b
    Example:
      sslall label status
    """
    from sslall.labelstudio._project import status

    ws, config = open_workspace(workspace)
    with PoolStore(ws.db_path) as store:
        data = status(store, config, base=ws.root)
    if json_out:
        print_json(data)
        return
    table = Table(title=f"Label Studio project {data['project']!r} "
                  f"(id {data['project_id'] or 'not created yet'}) at {data['url']}")
    keys = ("queued", "pushed", "annotated", "pending")
    table.add_column("model's guess")
    for k in keys:
        table.add_column(k, justify="right")
    for cls, row in data["per_class"].items():
        table.add_row(cls, *(str(row[k]) for k in keys))
    table.add_row("total", *(str(data["total"][k]) for k in keys), style="bold")
    console.print(table)


@server_app.command("up")
@cli_errors
def up_cmd(
    data_dir: DataDir = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    document_root: Annotated[Path | None, typer.Option(
        help="Serve local files under this folder (labelstudio.images = \"local-files\").")] = None,
    json_out: JsonFlag = False, out: OutOption = None,
) -> None:
    """Start a Label Studio server on 127.0.0.1 and print its URL, the user and password it
    set, and the file holding its API key. The first start migrates a database (~30-60 s).

    \b
    Example:
      sslall labelstudio up --port 8080 --document-root ~/cells
    """
    from sslall.labelstudio._server import up

    info = up((data_dir or default_data_dir()).expanduser(), port,
              document_root=document_root.expanduser().resolve() if document_root else None)
    creds = info.credentials
    if json_out:
        print_json({"url": info.url, "pid": info.pid, "data_dir": str(info.data_dir),
                    "username": creds.username, "password": creds.password,
                    "api_key_file": str(creds.key_file)})
        return
    say(f"Label Studio is up at {info.url} (pid {info.pid}, data in {info.data_dir})")
    say(f"  log in as {creds.username} with password {creds.password}")
    say(f"  API key in {creds.key_file}: set labelstudio.api_key_file to it, or "
        f"export LABEL_STUDIO_API_KEY=\"$(cat {creds.key_file})\"")
    say(f"  in sslall.toml: [labelstudio] url = \"{info.url}\"")


@server_app.command("down")
@cli_errors
def down_cmd(data_dir: DataDir = None) -> None:
    """Stop the server `sslall labelstudio up` started with this data folder.

    \b
    Example:
      sslall labelstudio down
    """
    from sslall.labelstudio._server import down

    pid = down((data_dir or default_data_dir()).expanduser())
    say(f"stopped Label Studio (pid {pid})" if pid else "no Label Studio server was running "
        "from that data folder")


def register(app: typer.Typer) -> None:
    """Add this module's command groups to the app."""
    app.add_typer(label_app, name="label")
    app.add_typer(server_app, name="labelstudio")
