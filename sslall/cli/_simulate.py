"""`sslall simulate`: what each label buys, with the data set's own labels as the annotator."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sslall._fsutil import write_atomic
from sslall.cli._console import (
    JsonFlag,
    OutOption,
    console,
    is_quiet,
    print_json,
    say,
    step_progress,
    warn,
)
from sslall.config import Config
from sslall.errors import ConfigError, UsageError


def simulate_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Class-per-folder images the loop may use.")],
    test_dir: Annotated[Path, typer.Option(help="Class-per-folder images used only for the "
                        "reported test metrics.")],
    label_fraction: Annotated[float | None, typer.Option(help="Stratified fraction of DATA_DIR "
                              "labeled at the start (holdout included).")] = None,
    labels_per_class: Annotated[int | None, typer.Option(help="Or: labels per class at the "
                                "start (holdout included).")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds to run.")] = 5,
    budget: Annotated[int | None, typer.Option(help="Oracle labels per round (the review queue) "
                                            "[default: 20].")] = None,
    threshold: Annotated[float | None, typer.Option(help="Pseudo-label threshold [default: 0.9].")] = None,
    policy: Annotated[str | None, typer.Option(
        help="fixed, adaptive or propagation [default: fixed].")] = None,
    strategy: Annotated[str | None, typer.Option(help="Acquisition strategy [default: margin].")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone [default: tf_efficientnet_lite0].")] = None,
    mode: Annotated[str | None, typer.Option(help="auto, head, last-stage or finetune "
                                                  "[default: auto].")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input side in pixels [default: 224].")] = None,
    holdout_share: Annotated[float, typer.Option(help="Share of the starting labels kept as "
                             "the holdout (validation + calibration).")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the split and of training.")] = 0,
    baselines: Annotated[bool, typer.Option(help="Also train on the starting labels alone and "
                         "on all of DATA_DIR's labels.")] = False,
    work: Annotated[Path | None, typer.Option(help="Folder for the simulation's workspace "
                    "(default: a new temporary folder; reuse a cache with --cache).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Feature cache folder to share between "
                     "simulations (frozen features are then computed once).")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="An sslall.toml (any "
                           "sections; classes come from DATA_DIR) as the base; flags override it.")] = None,
    json_out: JsonFlag = False, out: OutOption = None,
    legacy_json: Annotated[list[str] | None, typer.Argument(hidden=True, metavar="OLD_JSON_FILE",
                                                            show_default=False)] = None,
) -> None:
    """Run the real round engine with DATA_DIR's labels playing the annotator and report, round
    by round, labels, pseudo labels, their precision and test metrics.

    \b
    Example:
      sslall simulate train/ --test-dir test/ --label-fraction 0.05 --rounds 5 --baselines
      sslall simulate train/ --test-dir test/ --label-fraction 0.05 --out report.json
    """
    legacy = _legacy_json_file(legacy_json, json_out)
    from sslall.config import load_config, with_overrides
    from sslall.experiments._simulate import SimulationSpec, link_cache, run_simulation

    if (label_fraction is None) == (labels_per_class is None):
        raise UsageError("give exactly one of --label-fraction and --labels-per-class")
    if label_fraction is not None and not 0 < label_fraction < 1:
        raise ConfigError("--label-fraction", f"{label_fraction} is out of range", "(0, 1)")
    if labels_per_class is not None and labels_per_class < 2:
        raise ConfigError("--labels-per-class", f"{labels_per_class} is too small", ">= 2")
    if not 0 < holdout_share < 1:
        raise ConfigError("--holdout-share", f"{holdout_share} is out of range", "(0, 1)")
    base = (load_config(config_file, default_classes=("a", "b")) if config_file is not None
            else Config(classes=("a", "b")))
    config = with_overrides(
        base, model={"backbone": backbone, "mode": mode,
                                           "image_size": image_size},
        pseudo={"threshold": threshold, "policy": policy},
        route={"budget": budget, "strategy": strategy},
    )
    work_dir = (work or Path(tempfile.mkdtemp(prefix="sslall-simulate-"))).resolve()
    if (work_dir / "workspace").exists():
        raise UsageError(f"{work_dir}/workspace exists; give a new --work folder")
    if cache is not None:
        link_cache(work_dir, cache)
    spec = SimulationSpec(data_dir.resolve(), test_dir.resolve(), work_dir, config, rounds,
                          label_fraction, labels_per_class, holdout_share, seed, baselines)
    table = Table(title="simulation")
    for col in ("round", "labeled", "pseudo", "pseudo prec.", "oracle", "test acc",
                "test macro-F1", "ECE", "s"):
        table.add_column(col, justify="right")

    def on_round(row: dict) -> None:
        t = row["test"]
        prec = "-" if row["pseudo_precision"] is None else f"{row['pseudo_precision']:.3f}"
        table.add_row(str(row["round"]), str(row["labeled"]), str(row["pseudo"]), prec,
                      str(row["oracle_labels"]), f"{t['accuracy']:.3f}", f"{t['macro_f1']:.3f}",
                      f"{t['ece']:.3f}", f"{row['seconds']:.0f}")
        say(f"round {row['round']}: test macro-F1 {t['macro_f1']:.3f}, pseudo {row['pseudo']} "
            f"(precision {prec}), oracle labels {row['oracle_labels']}")

    with step_progress() as update:
        report = run_simulation(spec, progress=update, on_round=on_round)
    if legacy is not None:
        write_atomic(legacy, json.dumps(report, indent=2))
        say(f"report written to {legacy}")
    elif json_out:
        print_json(report)  # stdout, or the --out file
    if not json_out or out is not None or legacy is not None:
        if not is_quiet():
            console.print(table)
            for name, m in report.get("baselines", {}).items():
                console.print(f"{name}: {m['labels']} labels, test macro-F1 {m['macro_f1']:.3f}, "
                              f"accuracy {m['accuracy']:.3f}")


def _legacy_json_file(extra: list[str] | None, json_out: bool) -> Path | None:
    """The FILE of the old `--json FILE` form (`--json` is now a flag, so FILE arrives as an
    extra argument): still written, with a deprecation warning; `--json -` is plain `--json`.

    Raises:
        UsageError: extra arguments without `--json` (they were never allowed).
    """
    if not extra:
        return None
    if not json_out or len(extra) != 1:
        raise UsageError(f"unexpected argument(s): {' '.join(extra)}")
    if extra[0] == "-":
        return None
    warn(f"--json {extra[0]} is deprecated: --json prints to stdout; use --out {extra[0]}")
    return Path(extra[0])
