"""`sslall export-data`: hand the labelled cells to another tool.

The human-labelled cells (the labeled pool; with `include_holdout` the holdout too; with
`pseudo_above` the pseudo-labelled cells whose confidence is at least that) are written either
as a tree DEST/<pool>/<class>/<file> (copies, hard links or symlinks) with DEST/manifest.csv
(rewritten on each export), or as one CSV manifest naming the files where they are. Each file
is re-hashed first: one whose bytes changed since import (or that is gone) is not exported, and
reported. An existing image file in DEST is never overwritten.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from sslall._fsutil import open_regular, sha256_file, temp_path, write_atomic
from sslall._progress import Progress
from sslall.errors import SslallError, UsageError
from sslall.store._pools import PoolStore
from sslall.store._records import Sample

__all__ = ["COLUMNS", "FORMATS", "LINKS", "ExportReport", "export_data"]

FORMATS = ("folders", "csv")
LINKS = ("copy", "hard", "symlink")
COLUMNS = ("path", "label", "label_source", "confidence", "pool", "sample_id")
MANIFEST = "manifest.csv"


@dataclass
class ExportReport:
    """What an export wrote; `changed`, `missing` and `exists` hold paths not written."""

    dest: str
    format: str
    exported: Counter = field(default_factory=Counter)  # (pool, label) -> files
    already_there: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    exists: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        per_pool: dict[str, dict[str, int]] = {}
        for (pool, label), n in sorted(self.exported.items()):
            per_pool.setdefault(pool, {})[label] = n
        return {"dest": self.dest, "format": self.format,
                "exported": sum(self.exported.values()), "per_pool": per_pool,
                "already_there": self.already_there,
                "changed": self.changed, "missing": self.missing, "exists": self.exists}


def _selected(store: PoolStore, pseudo_above: float | None,
              include_holdout: bool) -> list[Sample]:
    pools = ["labeled"] + (["holdout"] if include_holdout else [])
    rows = list(store.samples(pools))
    if pseudo_above is not None:
        rows += [s for s in store.samples("pseudo")
                 if s.confidence is not None and s.confidence >= pseudo_above]
    return rows


def _row(sample: Sample, path: str) -> list[str]:
    source = "pseudo" if sample.pool == "pseudo" else "human"
    conf = "" if source == "human" or sample.confidence is None else f"{sample.confidence:.4f}"
    return [path, sample.label or "", source, conf, sample.pool, sample.id]


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return out.getvalue()


def _source_ok(sample: Sample, link: str) -> tuple[str, bytes | None]:
    """("ok", the bytes to copy or None for a link), or ("changed" | "missing", None) when the
    file at the sample's path is not its bytes or cannot be read."""
    try:
        if link == "copy":
            with open_regular(sample.path) as handle:
                data = handle.read()
            return ("ok", data) if sha256(data).hexdigest() == sample.id else ("changed", None)
        return ("ok", None) if sha256_file(sample.path) == sample.id else ("changed", None)
    except OSError:
        return "missing", None


def _place(sample: Sample, target: Path, link: str, data: bytes | None) -> None:
    """Write one verified file at `target`, never over an existing one."""
    if link == "copy":
        tmp = temp_path(target)
        try:
            with open(tmp, "xb") as handle:
                handle.write(data or b"")
            os.link(tmp, target)  # fails, rather than replaces, when target exists
        finally:
            tmp.unlink(missing_ok=True)
    elif link == "hard":
        os.link(sample.path, target)
    else:
        os.symlink(os.path.abspath(sample.path), target)


def _name(sample: Sample, used: set[str]) -> str:
    name = os.path.basename(sample.path)
    if name in used:
        stem, suffix = os.path.splitext(name)
        name = f"{stem}-{sample.id[:12]}{suffix}"
    used.add(name)
    return name


def _export_tree(rows: list[Sample], dest: Path, link: str, report: ExportReport,
                 progress: Progress | None) -> list[list[str]]:
    used: dict[tuple[str, str], set[str]] = {}
    written = []
    for done, s in enumerate(rows, 1):
        folder = dest / s.pool / (s.label or "")
        target = folder / _name(s, used.setdefault((s.pool, s.label or ""), set()))
        rel = target.relative_to(dest).as_posix()
        if os.path.lexists(target):
            try:
                same = sha256_file(target) == s.id
            except OSError:
                same = False
            if same:
                report.already_there += 1
                written.append(_row(s, rel))
            else:
                report.exists.append(str(target))
        else:
            state, data = _source_ok(s, link)
            if state == "ok":
                folder.mkdir(parents=True, exist_ok=True)
                _place(s, target, link, data)
                report.exported[(s.pool, s.label)] += 1
                written.append(_row(s, rel))
            else:
                (report.changed if state == "changed" else report.missing).append(s.path)
        if progress:
            progress("export", done, len(rows))
    return written


def _export_csv(rows: list[Sample], report: ExportReport,
                progress: Progress | None) -> list[list[str]]:
    written = []
    for done, s in enumerate(rows, 1):
        state, _ = _source_ok(s, "hard")
        if state == "ok":
            report.exported[(s.pool, s.label)] += 1
            written.append(_row(s, s.path))
        else:
            (report.changed if state == "changed" else report.missing).append(s.path)
        if progress:
            progress("export", done, len(rows))
    return written


def export_data(store: PoolStore, workspace: Path, dest: Path, *, fmt: str = "folders",
                link: str = "copy", pseudo_above: float | None = None,
                include_holdout: bool = False, force: bool = False,
                progress: Progress | None = None) -> ExportReport:
    """Export the labelled cells to `dest`; see the module docstring.

    Raises:
        UsageError: an unknown format or link kind, a confidence outside [0, 1], `dest` inside
            the workspace, a non-empty `dest` folder (or an existing CSV) without `force`,
            links asked for a CSV, or a hard link across filesystems.
        SslallError: `dest` cannot be written (no permission, a full disk).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")
    if link not in LINKS:
        raise UsageError(f"unknown link kind {link!r} (allowed: {', '.join(LINKS)})")
    if fmt == "csv" and link != "copy":
        raise UsageError("--link applies to the folder format; a CSV names the files in place")
    if pseudo_above is not None and not 0 <= pseudo_above <= 1:
        raise UsageError(f"--pseudo-above {pseudo_above} is outside [0, 1]")
    dest = Path(os.path.abspath(dest))
    if dest.resolve().is_relative_to(workspace.resolve()):
        raise UsageError(f"{dest} is inside the workspace {workspace}; export somewhere else")
    if fmt == "folders":
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"{dest} exists and is not a folder")
        if dest.is_dir() and any(dest.iterdir()) and not force:
            raise UsageError(f"{dest} is not empty; choose an empty folder, or --force to add to "
                             "it (existing files are never overwritten)")
    elif dest.exists() and not force:
        raise UsageError(f"{dest} exists; choose another name, or --force to replace it")
    report = ExportReport(str(dest), fmt)
    rows = _selected(store, pseudo_above, include_holdout)
    try:
        if fmt == "csv":
            write_atomic(dest, _csv_text(_export_csv(rows, report, progress)))
            return report
        dest.mkdir(parents=True, exist_ok=True)
        written = _export_tree(rows, dest, link, report, progress)
        write_atomic(dest / MANIFEST, _csv_text(written))  # sslall's own index of the tree
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise UsageError(f"cannot hard-link into {dest}: it is on another filesystem than "
                             "the images; use --link symlink, or copies") from None
        raise SslallError(f"cannot write the export to {dest}: {exc.strerror or exc}") from None
    return report
