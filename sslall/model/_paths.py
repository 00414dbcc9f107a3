"""A checkpoint's two file names and where they lie, without torch: the CLI checks a checkpoint
path (and answers a wrong one) before it pays for importing torch (`sslall.model._checkpoints`
reads the files)."""

from __future__ import annotations

from pathlib import Path

from sslall.errors import NotFoundError

__all__ = ["META_NAME", "WEIGHTS_NAME", "check_checkpoint_files", "checkpoint_pair"]

WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"


def checkpoint_pair(path: Path) -> tuple[Path, Path] | None:
    """(weights, meta) for a checkpoint folder or either file of the pair (a `.json` or
    `.safetensors` of another name pairs with its namesake); None for any other path."""
    if path.is_dir():
        return path / WEIGHTS_NAME, path / META_NAME
    if path.suffix in (".json", ".safetensors"):
        if path.name in (WEIGHTS_NAME, META_NAME):
            return path.with_name(WEIGHTS_NAME), path.with_name(META_NAME)
        return path.with_suffix(".safetensors"), path.with_suffix(".json")
    return None


def check_checkpoint_files(path: Path) -> None:
    """Check that the checkpoint `path` names exists: its two files, or for a path that is no
    checkpoint's (`checkpoint_pair` None), the path itself, left to `load_checkpoint` to judge.

    Raises:
        NotFoundError: the path, or one of the pair's files, does not exist.
    """
    pair = checkpoint_pair(path)
    if pair is None:
        if not path.exists():
            raise NotFoundError(f"checkpoint not found: {path}")
        return
    for needed in pair:
        if not needed.is_file():
            raise NotFoundError(f"checkpoint file not found: {needed}")
