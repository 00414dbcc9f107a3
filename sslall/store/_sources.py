"""What a source names: the files of a folder (class sub-folders for labeled/holdout, any tree
for unlabeled), one image (unlabeled only) or a CSV manifest (`path`, optional `label`,
`patient`; paths relative to the manifest and never outside its folder; each file on one row
only). `sslall add` imports them and `sslall predict` reads them, so a source means the same
thing to both. Names only: nothing here opens an image.

A manifest may carry other columns, such as the unnamed index column pandas' `to_csv` writes
first (header "" or "Unnamed: 0"): they are ignored, and one warning line names them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sslall._fsutil import open_regular
from sslall.data._images import IMAGE_SUFFIXES
from sslall.errors import InputError, NotFoundError, UsageError
from sslall.store._csvtext import read_table

__all__ = ["IMPORT_POOLS", "MANIFEST_COLUMNS", "Entry", "is_image_name", "list_images", "list_source",
           "read_manifest", "walk_folder", "walk_images"]

IMPORT_POOLS = ("labeled", "unlabeled", "holdout")
MANIFEST_COLUMNS = ("path", "label", "patient")
_PANDAS_INDEX = re.compile(r"Unnamed: \d+")


@dataclass(frozen=True)
class Entry:
    """One file named by a source, before it is read."""

    path: str
    label: str | None
    patient: str | None


def list_source(source: Path, pool: str, classes: Sequence[str],
                warnings: list[str] | None = None) -> list[Entry]:
    """Validate a source and list its entries (names only, nothing is read yet); a manifest's
    ignored columns are a line appended to `warnings` (when given).

    Raises:
        UsageError: `pool` is not one a source is imported into.
        NotFoundError: `source` does not exist.
        InputError: the source is not a valid one, or its labels do not suit `pool`.
    """
    if pool not in IMPORT_POOLS:
        raise UsageError(f"cannot add to pool {pool!r} (allowed: {', '.join(IMPORT_POOLS)})")
    if not os.path.lexists(source):
        raise NotFoundError(f"source {source} does not exist")
    if source.is_file() and is_image_name(source):
        entries = [_single_image(source, pool)]
    elif source.is_file():
        entries = read_manifest(source, classes, warnings)
    elif source.is_dir():
        entries = list(walk_folder(source, pool, classes))
    else:
        raise InputError(f"source {source} is neither a folder, an image nor a CSV manifest")
    if pool == "unlabeled":
        labelled = [e.path for e in entries if e.label is not None]
        if labelled:
            raise InputError(
                f"{len(labelled)} entries have a label, e.g. {labelled[0]!r}, but the unlabeled "
                "pool takes none: add them to labeled, or remove the label column"
            )
    if pool in ("labeled", "holdout"):
        unlabeled = [e.path for e in entries if e.label is None]
        if unlabeled:
            raise InputError(
                f"{len(unlabeled)} entries have no label, e.g. {unlabeled[0]!r}; "
                f"the {pool} pool needs a label for every image"
            )
    return entries


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _single_image(path: Path, pool: str) -> Entry:
    """A source that is one image file is a source of one; only unlabeled takes it, since a file
    alone carries no class."""
    if pool != "unlabeled":
        raise InputError(
            f"{path} is a single image, and the {pool} pool needs its class: add a folder with "
            "one sub-folder per class, or a CSV manifest with path and label columns"
        )
    return Entry(os.path.abspath(path), None, None)


def walk_folder(root: Path, pool: str, classes: Sequence[str]) -> Iterator[Entry]:
    root = Path(os.path.abspath(root))
    if pool == "unlabeled":
        for entry in walk_images(root):
            yield Entry(entry, None, None)
        return
    with os.scandir(root) as listing:
        top = list(listing)
    # A symlink to a folder counts as a class folder (and is imported); an image beside the
    # class folders has no class, so the whole import is refused rather than skipping it.
    subdirs = sorted(d.name for d in top if d.is_dir())
    loose = sorted(d.name for d in top
                   if not d.is_dir() and Path(d.name).suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise InputError(
            f"folder {root} has {len(loose)} image(s) outside the class sub-folders, e.g. "
            f"{loose[0]!r}; a {pool} image's class is its sub-folder: move them into one, or "
            "add them to unlabeled"
        )
    unknown = [d for d in subdirs if d not in classes]
    if unknown:
        raise InputError(
            f"folder {root} has sub-folder(s) {unknown} that are not classes "
            f"(allowed: {', '.join(classes)})"
        )
    if not subdirs:
        raise InputError(
            f"a {pool} folder needs one sub-folder per class ({', '.join(classes)}); {root} has none"
        )
    for name in subdirs:
        for entry in walk_images(root / name):
            yield Entry(entry, name, None)


def walk_images(root: Path) -> Iterator[str]:
    """Image-named files under root, sorted, symlinks to files included, loops not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(dirpath, name)


def read_manifest(path: Path, classes: Sequence[str], warnings: list[str] | None = None
                  ) -> list[Entry]:
    """The entries of a CSV manifest, in order; its ignored columns are a line appended to
    `warnings` (when given).

    Raises:
        InputError: the file is unreadable or not a valid manifest (see the module docstring).
    """
    root = path.parent.resolve()
    try:
        handle = open_regular(path, "r", newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read manifest {path}: {exc.strerror}") from None
    with handle:
        columns, rows = read_table(handle, f"manifest {path.name}")
    if "path" not in columns:
        raise InputError(
            f"manifest {path.name} has no 'path' column (columns: {', '.join(columns) or 'none'}; "
            "expected path and optionally label, patient)"
        )
    ignored = [c for c in columns if c not in MANIFEST_COLUMNS]
    if ignored and warnings is not None:
        warnings.append(_ignored_line(path.name, ignored))
    return list(_manifest_entries(path.name, root, rows, classes))


def _ignored_line(name: str, ignored: list[str]) -> str:
    named = ", ".join(repr(c) + (" (an unnamed index column, as pandas' to_csv writes)"
                                 if c == "" or _PANDAS_INDEX.fullmatch(c) else "") for c in ignored)
    return (f"manifest {name}: ignored column(s) {named}; only "
            f"{', '.join(MANIFEST_COLUMNS)} are read")


def _manifest_entries(name: str, root: Path, rows: list[tuple[int, dict[str, str]]],
                      classes: Sequence[str]) -> Iterator[Entry]:
    seen: dict[str, int] = {}
    for line, row in rows:
        raw = (row.get("path") or "").strip()
        if not raw:
            raise InputError(f"manifest {name} line {line}: empty path")
        label = (row.get("label") or "").strip() or None
        if label is not None and label not in classes:
            raise InputError(
                f"manifest {name} line {line}: label {label!r} is not a class "
                f"(allowed: {', '.join(classes)})"
            )
        full = Path(raw) if Path(raw).is_absolute() else root / raw
        if not full.resolve().is_relative_to(root):
            raise InputError(
                f"manifest {name} line {line}: path {raw!r} is outside the "
                f"manifest's folder {root}"
            )
        full_str = os.path.abspath(full)
        if full_str in seen:
            raise InputError(
                f"manifest {name} line {line}: path {raw!r} is already on line "
                f"{seen[full_str]}; list each file once"
            )
        seen[full_str] = line
        yield Entry(full_str, label, (row.get("patient") or "").strip() or None)



def list_images(source: Path, classes: Sequence[str], warnings: list[str] | None = None
                ) -> list[str]:
    """Every image a folder or a CSV manifest names, in order: a folder's image files
    (recursively, sorted, joined to the folder as given), or a manifest's `path` column
    (relative to the manifest's folder and never outside it, each file once; a `label`, when
    given, must be one of `classes`; its ignored columns are a line appended to `warnings`).

    Raises:
        NotFoundError: `source` does not exist.
        InputError: the manifest is not a valid one (the rules of `sslall add`), or the folder or
            manifest names no image.
    """
    if not os.path.lexists(source):
        raise NotFoundError(f"{source} does not exist")
    if source.is_dir():
        paths = list(walk_images(source))
    else:
        paths = [e.path for e in read_manifest(source, classes, warnings)]
    if not paths:
        raise InputError(f"{source} names no image file")
    return paths
