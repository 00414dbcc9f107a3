"""Manifests as people's tools write them: pandas' default `to_csv` (an unnamed index column
first), extra columns, `;`-separated (a spreadsheet in a decimal-comma locale) and
tab-separated files. They import, and one warning line names the columns that were ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import CLASSES, invoke, make_class_tree
from typer.testing import CliRunner

from sslall.store._importer import import_source
from sslall.store._pools import PoolStore
from sslall.store._sources import list_images, read_manifest

MAX_PIXELS = 1_000_000
INDEX = "(an unnamed index column, as pandas' to_csv writes)"


@pytest.fixture
def cells(tmp_path: Path) -> Path:
    return make_class_tree(tmp_path / "cells", per_class=2)


def frame(cells: Path) -> pd.DataFrame:
    paths = sorted(p.relative_to(cells).as_posix() for p in cells.rglob("*.png"))
    return pd.DataFrame({"path": paths, "label": [p.split("/")[0] for p in paths],
                         "patient": [f"P{i % 2}" for i in range(len(paths))]})


def labels(manifest: Path, warnings: list[str] | None = None) -> dict[str, str]:
    return {Path(e.path).name: e.label for e in read_manifest(manifest, CLASSES, warnings)}


def expected(cells: Path) -> dict[str, str]:
    return {p.name: p.parent.name for p in cells.rglob("*.png")}


def test_pandas_default_to_csv_is_read_with_one_warning(cells: Path) -> None:
    manifest = cells / "m.csv"
    frame(cells).to_csv(manifest)  # index=True: header ",path,label,patient"
    assert manifest.read_text().startswith(",path,label,patient\n0,")
    warnings: list[str] = []
    assert labels(manifest, warnings) == expected(cells)
    assert warnings == [f"manifest m.csv: ignored column(s) '' {INDEX}; only path, label, "
                        "patient are read"]


def test_a_pandas_round_trip_and_extra_columns_are_ignored_by_name(cells: Path) -> None:
    manifest = cells / "m.csv"
    frame(cells).to_csv(manifest)
    again = pd.read_csv(manifest)  # the index comes back as "Unnamed: 0"
    again["colour"] = "red"
    again.to_csv(manifest)
    assert manifest.read_text().splitlines()[0] == ",Unnamed: 0,path,label,patient,colour"
    warnings: list[str] = []
    assert labels(manifest, warnings) == expected(cells)
    assert warnings == [f"manifest m.csv: ignored column(s) '' {INDEX}, 'Unnamed: 0' {INDEX}, "
                        "'colour'; only path, label, patient are read"]


@pytest.mark.parametrize("sep", [";", "\t"], ids=["semicolon", "tab"])
def test_pandas_semicolon_and_tab_separated_files_are_sniffed(cells: Path, sep: str) -> None:
    manifest = cells / "m.csv"
    frame(cells).to_csv(manifest, sep=sep, index=False)
    warnings: list[str] = []
    assert labels(manifest, warnings) == expected(cells)
    assert warnings == []
    entries = read_manifest(manifest, CLASSES)
    assert sorted({e.patient for e in entries}) == ["P0", "P1"]


def test_hand_written_semicolon_manifest_with_commas_and_quotes(cells: Path) -> None:
    odd = cells / "L2" / "a, b.png"
    odd.write_bytes((cells / "L2" / "L2_0.png").read_bytes())
    manifest = cells / "m.txt"
    manifest.write_text('path;label;note\nL1/L1_0.png;L1;"first; quoted"\n"L2/a, b.png";L2;x\n',
                        encoding="utf-8")
    warnings: list[str] = []
    assert labels(manifest, warnings) == {"L1_0.png": "L1", "a, b.png": "L2"}
    assert warnings == ["manifest m.txt: ignored column(s) 'note'; only path, label, patient are "
                        "read"]


def test_a_one_column_manifest_keeps_commas_in_paths_out_of_the_sniffer(cells: Path) -> None:
    manifest = cells / "m.csv"
    manifest.write_text("path\nL1/L1_0.png\nL1/L1_1.png\n")
    assert [Path(p).name for p in list_images(manifest, CLASSES)] == ["L1_0.png", "L1_1.png"]


def test_import_reports_the_warning_and_imports_every_row(workspace: Path, cells: Path) -> None:
    manifest = cells / "m.csv"
    frame(cells).to_csv(manifest, sep=";")
    with PoolStore(workspace / "pools" / "pools.db") as store:
        report = import_source(store, manifest, "labeled", CLASSES, max_pixels=MAX_PIXELS,
                               workers=1)
        assert report.added == {"labeled": 6}
        assert report.warnings == [f"manifest m.csv: ignored column(s) '' {INDEX}; only path, "
                                   "label, patient are read"]
        assert report.as_dict()["warnings"] == report.warnings
        assert {s.patient for s in store.samples("labeled")} == {"P0", "P1"}


def test_sslall_add_prints_one_warning_line_and_clean_json(workspace: Path, cells: Path) -> None:
    manifest = cells / "m.csv"
    frame(cells).assign(colour="red").to_csv(manifest)
    result = invoke(CliRunner(), "add", "labeled", manifest, "-w", workspace, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["added"] == {"labeled": 6}
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: manifest m.csv: ignored column(s) '' {INDEX}, 'colour'; only "
                      "path, label, patient are read"]
