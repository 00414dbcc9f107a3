"""CLI command for Label Studio's ML backend: `sslall serve` (see `sslall.labelstudio._backend`).

Ctrl-C stops it with exit 130 and SIGTERM with exit 0, like the other long commands: the server
stops taking requests and a webhook pull in progress finishes first (it holds the round lock).
"""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from sslall.cli._console import WorkspaceOption, cli_errors, open_workspace, say


class _Terminated(Exception):
    """SIGTERM arrived."""


def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on; keep 127.0.0.1 unless Label "
                    "Studio runs on another machine (nothing here checks who calls).")] =
        "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9090,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (default: "
                      "model.device).")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Serve the model in use to Label Studio as an ML backend (/health, /setup, /predict,
    /webhook): tasks get its prediction live, and annotations are pulled as they are made.

    \b
    Example:
      sslall serve --port 9090
      # Label Studio: project Settings -> Model -> Connect Model, URL http://127.0.0.1:9090
    """
    from sslall.labelstudio._backend import Backend
    from sslall.labelstudio._http import make_server

    ws, config = open_workspace(workspace)
    backend = Backend(ws, config, device=device or config.model.device)
    server = make_server(backend, host, port)
    url = f"http://{server.server_address[0]}:{server.server_address[1]}"
    say(f"serving {backend.model_version()} of {ws.root} to Label Studio at {url} (Ctrl-C stops)")

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated

    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, on_term) if main else None
    # Ctrl-C stops, even when started with SIGINT ignored (a parent that set SIG_IGN)
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    try:
        server.serve_forever(poll_interval=0.2)
    except _Terminated:
        say("stopped (SIGTERM)")
    finally:
        server.server_close()
        backend.wait_idle()
        if before is not None:
            signal.signal(signal.SIGTERM, before)
        if before_int is not None:
            signal.signal(signal.SIGINT, before_int)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("serve")(cli_errors(serve_cmd))
