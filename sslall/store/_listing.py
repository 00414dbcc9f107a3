"""The images a folder or manifest names, for a command that reads images without importing
them (`sslall predict`): the same folder walk and manifest reading as `sslall add`, so a source
means the same thing to both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sslall.errors import InputError, NotFoundError
from sslall.store._importer import _read_manifest, _walk_images

__all__ = ["list_images"]


def list_images(source: Path, classes: Sequence[str]) -> list[str]:
    """Every image a folder or a CSV manifest names, in order: a folder's image files
    (recursively, sorted, joined to the folder as given), or a manifest's `path` column
    (relative to the manifest's folder and never outside it, each file once; a `label`, when
    given, must be one of `classes`).

    Raises:
        NotFoundError: `source` does not exist.
        InputError: the manifest is not a valid one (the rules of `sslall add`), or the folder or
            manifest names no image.
    """
    if not os.path.lexists(source):
        raise NotFoundError(f"{source} does not exist")
    if source.is_dir():
        paths = list(_walk_images(source))
    else:
        paths = [e.path for e in _read_manifest(source, classes)]
    if not paths:
        raise InputError(f"{source} names no image file")
    return paths
