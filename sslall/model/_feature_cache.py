"""The on-disk feature cache: frozen-backbone features, computed once and read back every round.

A feature is computed once per (image sha256, backbone, weights, eval transform) and read back
on every later round. Layout under the cache directory:

    <sha256(key)[:16]>/meta.json          the key: backbone, weights_id, transform
    <sha256(key)[:16]>/<shard>.npy        features [n, D], float16 (float32 if out of range)
    <sha256(key)[:16]>/<shard>.ids        the n sample ids, one per line (the commit marker)

Shards are append-only and each file is written to a hidden `.tmp` name, fsynced, then renamed, the
`.ids` file last: a shard counts only once its `.ids` exists and its row count matches, so a
process killed mid-write leaves at worst an ignored temp or orphan file (swept after an hour).
`get` returns features exactly as stored (float16 rounded, then float32), so a fresh
computation and a cache hit give the same numbers. Knows nothing of torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sslall._fsutil import fsync_dir, write_atomic
from sslall.errors import ModelError

__all__ = ["FeatureCache", "FeatureSet"]

log = logging.getLogger(__name__)

_FORMAT = 1
_STALE_SECONDS = 3600.0
_FP16_MAX = float(np.finfo(np.float16).max)


class FeatureSet:
    """The cached features of one (backbone, weights_id, transform) key; see the module docstring.

    The id -> (shard, row) index is built once when the set is opened and kept up to date by
    `put`; `refresh()` picks up shards that another process wrote since.
    """

    def __init__(self, directory: Path, key: dict[str, str], *, dtype: np.dtype) -> None:
        self.directory = directory
        self.key = dict(key)
        self.dtype = np.dtype(dtype)
        self._shards: list[np.ndarray] = []
        self._loaded: set[str] = set()
        self._index: dict[str, tuple[int, int]] = {}
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / "meta.json"
        if meta_path.is_file():
            stored = json.loads(meta_path.read_text(encoding="utf-8"))
            if stored.get("key") != self.key:
                raise ModelError(f"feature cache {directory} belongs to another key: {stored.get('key')}")
        else:
            meta = {"format": _FORMAT, "key": self.key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
        self._sweep_stale()
        self.refresh()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._index

    @property
    def dim(self) -> int | None:
        """Feature width D, or None while the set is empty."""
        return int(self._shards[0].shape[1]) if self._shards else None

    def refresh(self) -> None:
        """Index the complete shards not seen yet (the first indexed copy of an id wins)."""
        for ids_path in sorted(self.directory.glob("*.ids")):
            name = ids_path.name[: -len(".ids")]
            if name in self._loaded or name.startswith("."):
                continue
            try:
                ids = ids_path.read_text(encoding="utf-8").splitlines()
                feats = np.load(self.directory / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                log.warning("feature cache: skipping unreadable shard %s (%s)", ids_path, exc)
                continue
            if feats.ndim != 2 or len(feats) != len(ids) or (self.dim not in (None, feats.shape[1])):
                log.warning("feature cache: skipping inconsistent shard %s %s", ids_path, feats.shape)
                continue
            self._loaded.add(name)
            shard = len(self._shards)
            self._shards.append(feats)
            for row, sample_id in enumerate(ids):
                self._index.setdefault(sample_id, (shard, row))

    def get(self, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """(float32 features [n_found, D] of the ids present, in `ids` order; the missing ids)."""
        hits = [self._index.get(sample_id) for sample_id in ids]
        missing = [sample_id for sample_id, hit in zip(ids, hits, strict=True) if hit is None]
        found = np.array([hit for hit in hits if hit is not None], dtype=np.int64).reshape(-1, 2)
        shards, rows = found[:, 0], found[:, 1]
        out = np.empty((len(found), self.dim or 0), dtype=np.float32)
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            where = where[np.argsort(rows[where], kind="stable")]  # sequential reads of the map
            out[where] = self._shards[int(shard)][rows[where]]
        return out, missing

    def put(self, ids: Sequence[str], features: np.ndarray) -> int:
        """Append the features of ids not cached yet as one new shard; returns how many were written."""
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != len(ids):
            raise ValueError(f"features must be [{len(ids)}, D], got shape {features.shape}")
        if self.dim is not None and features.shape[1] != self.dim:
            raise ValueError(f"features have width {features.shape[1]}, this cache holds {self.dim}")
        if not np.isfinite(features).all():
            raise ValueError("features contain NaN or infinite values; refusing to cache them")
        keep: dict[str, int] = {}
        for row, sample_id in enumerate(ids):
            sample_id = str(sample_id)
            if not sample_id or any(c in sample_id for c in "\r\n"):
                raise ValueError(f"sample id {sample_id!r} is empty or holds a line break")
            if sample_id not in self._index and sample_id not in keep:
                keep[sample_id] = row
        if not keep:
            return 0
        rows = np.fromiter(keep.values(), dtype=np.int64, count=len(keep))
        dtype = self.dtype
        if dtype == np.float16 and np.abs(features[rows]).max(initial=0.0) > _FP16_MAX:
            dtype = np.dtype(np.float32)
        block = np.ascontiguousarray(features[rows], dtype=dtype)
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        buffer = io.BytesIO()
        np.save(buffer, block, allow_pickle=False)
        write_atomic(self.directory / f"{name}.npy", buffer.getvalue())
        write_atomic(self.directory / f"{name}.ids", ("\n".join(keep) + "\n").encode("utf-8"))
        fsync_dir(self.directory)
        self.refresh()
        return len(keep)

    def _sweep_stale(self) -> None:
        """Delete temp files and orphan feature files a killed writer left over an hour ago."""
        now = time.time()
        for path in self.directory.iterdir():
            orphan = path.suffix == ".npy" and not path.with_suffix(".ids").exists()
            if not (_is_temp(path) or orphan):
                continue
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > _STALE_SECONDS:
                    path.unlink()


class FeatureCache:
    """On-disk cache of frozen-backbone features, one `FeatureSet` per (backbone, weights, transform).

    `dtype` is the storage type (float16 halves the disk; values beyond its range are kept
    float32). Opened sets are remembered by this instance, so their index is built once.
    """

    def __init__(self, directory: str | Path, *, dtype: str = "float16") -> None:
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise ValueError(f"feature cache dtype must be float16 or float32, got {dtype}")
        self.directory = Path(directory)
        self.dtype = np.dtype(dtype)
        self._sets: dict[str, FeatureSet] = {}

    def open(self, backbone: str, weights_id: str, transform: str) -> FeatureSet:
        """The feature set of one key (created on first use)."""
        key = {"backbone": str(backbone), "weights_id": str(weights_id), "transform": str(transform)}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        if digest not in self._sets:
            self._sets[digest] = FeatureSet(self.directory / digest, key, dtype=self.dtype)
        return self._sets[digest]


def _is_temp(path: Path) -> bool:
    """A file `fsutil.write_atomic` was writing when its process died."""
    return path.name.startswith(".") and path.name.endswith(".tmp")
