"""`sslall demo`: the whole loop on synthetic cells (logic in `sslall.experiments._demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sslall.cli._console import console, say, step_progress
from sslall.config import parse_classes


def demo_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder for the demo.")] = Path("sslall-demo"),
    rounds: Annotated[int, typer.Option(help="Rounds to run.")] = 3,
    fresh: Annotated[bool, typer.Option(help="Delete an earlier demo in DIRECTORY first.")] = False,
    classes: Annotated[str, typer.Option(help="Class names.")] = "L1,L2,L3",
    per_class: Annotated[int, typer.Option(help="Synthetic cells per class.")] = 200,
    backbone: Annotated[str, typer.Option(help="Backbone.")] = "tf_efficientnet_lite0",
    image_size: Annotated[int, typer.Option(help="Input side in pixels.")] = 128,
) -> None:
    """Synthesise cells, build a workspace (few labeled, many unlabeled, a holdout) and run
    self-training rounds, a stand-in annotator answering the review queue in between.

    \b
    Example:
      sslall demo my-demo --rounds 3 --fresh
    """
    from sslall.experiments._demo import answer_review, build_demo, prepare_demo_folder
    from sslall.rounds import run_round

    names = parse_classes(classes, key="--classes")
    directory = directory.expanduser().resolve()
    prepare_demo_folder(directory, per_class=per_class, fresh=fresh)
    say(f"drawing {per_class * len(names)} synthetic cells into {directory / 'cells'}")
    demo = build_demo(directory, names, per_class=per_class, backbone=backbone,
                      image_size=image_size)
    ws, config = demo.workspace, demo.config
    say(f"workspace {ws.root}: " + ", ".join(f"{p} {n}" for p, n in demo.pool_sizes.items() if n))

    history = Table(title="demo: what each round bought")
    for col in ("round", "labeled", "pseudo", "review", "unlabeled", "macro-F1", "accuracy",
                "ECE"):
        history.add_column(col, justify="right")
    for _ in range(rounds):
        with step_progress() as update:
            result = run_round(ws, config, progress=update)
        m = result.metrics or {}
        history.add_row(str(result.round), *(str(result.pools.get(p, 0)) for p in
                        ("labeled", "pseudo", "review", "unlabeled")),
                        *(f"{m.get(k, float('nan')):.3f}" for k in ("macro_f1", "accuracy", "ece")))
        say(f"round {result.round}: macro-F1 {m.get('macro_f1', 0):.3f}, moves {result.moves}")
        answered = answer_review(ws, config, directory, result.round)
        if answered:
            say(f"  the stand-in annotator labelled {answered} review cells")
    console.print(history)
    say(f"explore it: sslall status -w {ws.root}   |   sslall check -w {ws.root}")
