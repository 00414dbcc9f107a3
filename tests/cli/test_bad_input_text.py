"""Text a person typed or a program wrote, wrong in every way we know of, through the CLI: other
encodings, NUL bytes, rich markup characters, NaN and infinity, class names with whitespace,
duplicated or extra CSV columns, `init` on a file. Each is one line (no traceback), its exit code,
and the store as it was. One workspace for the module (2 labeled cells per class, no round).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLASSES, invoke, make_class_tree, write_image
from test_bad_input import one_error_line

from sslall.store._pools import PoolStore


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("bad-text")
    runner = CliRunner()
    ws = root / "ws"
    assert invoke(runner, "init", ws, "--classes", ",".join(CLASSES), "--backbone",
                  "baseline-cnn", "--image-size", "32").exit_code == 0
    make_class_tree(root / "cells", per_class=2)
    assert invoke(runner, "add", "labeled", root / "cells", "-w", ws, "--workers",
                  "1").exit_code == 0
    with PoolStore(ws / "pools" / "pools.db") as store:
        sid = next(store.samples("labeled")).id
        from sslall.store._records import Move
        store.apply_moves([Move(sid, "review", from_pool="labeled", prediction=CLASSES[0])],
                          round_no=0, actor="test")
    return ws


def pools(ws: Path) -> dict[str, int]:
    with PoolStore(ws / "pools" / "pools.db") as store:
        return store.pool_sizes()


def _cell(ws: Path) -> str:
    return sorted((ws.parent / "cells" / CLASSES[0]).glob("*.png"))[0].name


def manifest(data: bytes) -> Callable[[Path], list]:
    """`sslall add labeled` of a manifest holding `data` (paths relative to the cells folder)."""
    def make(ws: Path) -> list:
        path = ws.parent / "cells" / CLASSES[0] / "m.csv"
        path.write_bytes(data.replace(b"CELL", _cell(ws).encode()))
        return ["add", "labeled", path]
    return make


def unlabeled_manifest(data: bytes) -> Callable[[Path], list]:
    def make(ws: Path) -> list:
        return ["add", "unlabeled", manifest(data)(ws)[2]]
    return make


def review_file(data: bytes) -> Callable[[Path], list]:
    """`sslall review import` of a file holding `data` (SID is the review sample's id)."""
    def make(ws: Path) -> list:
        with PoolStore(ws / "pools" / "pools.db") as store:
            sid = next(store.samples("review")).id
        path = ws.parent / "review.csv"
        path.write_bytes(data.replace(b"SID", sid.encode()))
        return ["review", "import", "--csv", path]
    return make


def config(old: str, new: str | bytes) -> Callable[[Path], list]:
    """`sslall status` on a workspace whose sslall.toml has `old` replaced by `new`."""
    def make(ws: Path) -> list:
        text = (ws / "sslall.toml").read_bytes()
        assert old.encode() in text
        replacement = new if isinstance(new, bytes) else new.encode()
        (ws / "sslall.toml").write_bytes(text.replace(old.encode(), replacement, 1))
        return ["status"]
    return make


def flags(*args: str) -> Callable[[Path], list]:
    return lambda ws: list(args)


def init_at(where: Callable[[Path], Path], *extra: str) -> Callable[[Path], list]:
    return lambda ws: ["init", where(ws), "--classes", "A,B", *extra]


def a_file(ws: Path) -> Path:
    path = ws.parent / "a-file.txt"
    path.write_text("not a folder\n")
    return path


CLASSES_LINE = 'classes = ["L1", "L2", "L3"]'

# name: (what to run, exit code, what the one line says)
CASES: dict[str, tuple[Callable[[Path], list], int, str]] = {
    "manifest-latin1-byte": (manifest(b"path,label\ncaf\xe9.png,L1\n"), 2,
                             "is not UTF-8 text (it holds the byte 0xe9)"),
    "manifest-latin1-header": (manifest(b"path,l\xe9bel\nCELL,L1\n"), 2, "is not UTF-8 text"),
    "manifest-utf16": (manifest("path,label\nCELL,L1\n".encode("utf-16")), 2,
                       "is not UTF-8 text (it holds the byte 0xff)"),
    "manifest-nul-byte": (manifest(b"path,label\nCELL\0,L1\n"), 2, "NUL byte on line 2"),
    "manifest-column-twice": (manifest(b"path,label,label\nCELL,L1,L2\n"), 2,
                              "names column(s) ['label'] more than once"),
    "manifest-path-column-twice": (manifest(b"path,path\nCELL,CELL\n"), 2,
                                   "names column(s) ['path'] more than once"),
    "manifest-extra-field": (manifest(b"path,label\nCELL,L1,surprise\n"), 2,
                             "line 2 has 3 fields but the header has 2 column(s)"),
    "manifest-empty-file": (manifest(b""), 2, "has no 'path' column (columns: none"),
    "manifest-empty-path": (manifest(b"path,label\n,L1\n"), 2, "line 2: empty path"),
    "manifest-markup-label": (manifest(b"path,label\nCELL,[/red]\n"), 2,
                              "label '[/red]' is not a class"),
    "manifest-bold-markup-label": (manifest(b"path,label\nCELL,[bold]L1\n"), 2,
                                   "label '[bold]L1' is not a class"),
    "manifest-label-into-unlabeled": (unlabeled_manifest(b"path,label\nCELL,L1\n"), 2,
                                      "the unlabeled pool takes none"),
    "review-latin1-byte": (review_file(b"sample_id,label\nSID,L\xe91\n"), 2,
                           "review file review.csv is not UTF-8 text"),
    "review-nul-byte": (review_file(b"sample_id,label\nSID,L1\0\n"), 2, "NUL byte on line 2"),
    "review-no-label-column": (review_file(b"sample_id\nSID\n"), 2, "lacks column(s) ['label']"),
    "review-column-twice": (review_file(b"sample_id,label,label\nSID,L1,L2\n"), 2,
                            "names column(s) ['label'] more than once"),
    "review-extra-field": (review_file(b"sample_id,label\nSID,L1,L2\n"), 2,
                           "line 2 has 3 fields"),
    "config-threshold-nan": (config("threshold = 0.", "threshold = nan #"), 2,
                             "'pseudo.threshold': nan is not a finite number"),
    "config-threshold-inf": (config("threshold = 0.", "threshold = inf #"), 2,
                             "'pseudo.threshold': inf is not a finite number"),
    "config-lr-minus-inf": (config("lr = 0.001", "lr = -inf #"), 2,
                            "'train.lr': -inf is not a finite number"),
    "config-budget-nan": (config("budget = ", "budget = nan #"), 2,
                          "'route.budget': nan is not a finite number"),
    "config-class-trailing-newline": (config(CLASSES_LINE, 'classes = ["L1\\n", "L2", "L3"]'),
                                      2, "class name 'L1\\n' is not allowed"),
    "config-class-leading-space": (config(CLASSES_LINE, 'classes = [" L1", "L2", "L3"]'), 2,
                                   "class name ' L1' is not allowed"),
    "config-class-trailing-space": (config(CLASSES_LINE, 'classes = ["L1 ", "L2", "L3"]'), 2,
                                    "class name 'L1 ' is not allowed"),
    "config-class-markup": (config(CLASSES_LINE, 'classes = ["[/red]", "L2", "L3"]'), 2,
                            "class name '[/red]' is not allowed"),
    "config-latin1-byte": (config("[train]\n", b"# caf\xe9\n[train]\n"), 2, "is not UTF-8 text"),
    "config-nul-byte": (config("[train]\n", b"[train]\0\n"), 2, "is not valid TOML"),
    "flag-threshold-nan": (flags("round", "--threshold", "nan"), 2,
                           "'--threshold': nan is not a finite number"),
    "flag-threshold-inf": (flags("round", "--threshold", "inf"), 2,
                           "'--threshold': inf is not a finite number"),
    "flag-holdout-fraction-nan": (lambda ws: ["add", "labeled", ws.parent / "cells",
                                              "--holdout-fraction", "nan"], 2, "out of range"),
    "flag-difficulty-nan": (lambda ws: ["synth", ws.parent / "synth", "--difficulty", "nan"], 2,
                            "'--difficulty': nan is out of range"),
    "flag-class-markup": (init_at(lambda ws: ws.parent / "w-markup", "--classes", "A,[/red]"), 2,
                          "class name '[/red]' is not allowed"),
    "init-on-a-file": (init_at(a_file), 2, "it exists and is not a folder"),
    "init-under-a-file": (init_at(lambda ws: a_file(ws) / "ws"), 2,
                          "cannot create a workspace at"),
    "init-image-size-60000": (init_at(lambda ws: ws.parent / "w-big", "--image-size", "60000"),
                              2, "'model.image_size': 60000 is out of range"),
    "missing-source-with-markup": (lambda ws: ["add", "unlabeled", ws.parent / "[/red]"], 3,
                                   "/[/red] does not exist"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_input_mistake_is_one_line_and_nothing_changes(ws: Path, runner, name: str) -> None:
    make, code, needle = CASES[name]
    toml = (ws / "sslall.toml").read_bytes()
    before = pools(ws)
    try:
        args = make(ws)
        if args[0] not in ("init", "synth"):
            args += ["-w", ws]
        result = invoke(runner, "--quiet", *args)
    finally:
        (ws / "sslall.toml").write_bytes(toml)
    assert result.exit_code == code, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert needle in line and "please report it" not in line, line
    assert pools(ws) == before
    assert invoke(runner, "check", "-w", ws).exit_code == 0


def test_markup_in_file_names_and_workspace_paths_prints_as_text(ws: Path, runner,
                                                                 tmp_path: Path) -> None:
    """Names holding rich markup ("[/red]", "[bold]") are printed as they are, after the work
    is committed, never raising (a MarkupError used to end such a command after its commit)."""
    root = tmp_path / "[bold]lab[/red]"
    result = invoke(runner, "init", root, "--classes", "A,B")
    assert result.exit_code == 0 and f"created workspace {root}" in result.stdout
    folder = tmp_path / "[red]cells"
    write_image(folder / "[/red].png", 1, size=32)
    (folder / "[bold]empty.png").write_bytes(b"")
    result = invoke(runner, "add", "unlabeled", folder, "-w", root, "--workers", "1")
    assert result.exit_code == 0, result.stderr
    assert f"{folder / '[bold]empty.png'}: empty" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    result = invoke(runner, "status", "-w", root)
    assert result.exit_code == 0 and f"pools of {root.name}" in result.stdout
    assert invoke(runner, "check", "-w", root).exit_code == 0


def test_json_commands_print_only_json_on_stdout(ws: Path, runner) -> None:
    """Every `--json` command's stdout is one JSON document; human lines go to stderr."""
    commands = [["status"], ["check"], ["add", "labeled", ws.parent / "cells", "--workers", "1"],
                ["review", "export", "--csv", ws.parent / "queue.csv"]]
    for args in commands[:3]:
        result = invoke(runner, *args, "-w", ws, "--json")
        assert result.exit_code == 0, (args, result.stderr)
        assert isinstance(json.loads(result.stdout), dict)
    result = invoke(runner, *commands[3], "-w", ws)       # no --json: its line is on stdout
    assert result.exit_code == 0 and " review rows to " in result.stdout
    result = invoke(runner, "status", "-w", ws)           # and without --json, stdout again
    assert "pools of" in result.stdout
