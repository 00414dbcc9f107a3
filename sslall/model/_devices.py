"""Where and how training runs: the device, the mode, CPU threads for small work, seeded RNG."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sslall.config import key_setting
from sslall.errors import ConfigError, ModelError

__all__ = ["MODES", "one_cpu_thread", "resolve_device", "resolve_mode", "seeded"]

MODES = key_setting("model.mode").choices


def resolve_device(requested: str | torch.device) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda[:n]`/`mps` must be available.

    Raises:
        ModelError: the requested accelerator is not available on this machine.
        ConfigError: `requested` names no device.
    """
    text = str(requested).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError("model.device", f"'{requested}' is not a device", "auto, cpu, cuda, cuda:N, mps") \
            from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device '{requested}' was requested but CUDA is not available here "
                             f"(torch {torch.__version__}); set model.device = \"auto\" or \"cpu\"")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device '{requested}' does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError(f"device '{requested}' was requested but Apple MPS is not available here; "
                             "set model.device = \"auto\" or \"cpu\"")
    elif device.type != "cpu":
        raise ConfigError("model.device", f"'{requested}' is not supported", "auto, cpu, cuda, cuda:N, mps")
    return device


def resolve_mode(mode: str, device: torch.device, *, last_stage_fits: bool = False) -> str:
    """`head`, `last-stage` or `finetune` for `model.mode`.

    `auto` fine-tunes on CUDA. On a CPU it trains the last stage (`last-stage`) when
    `last_stage_fits` (trained weights whose last stage sslall can cut: the unlabeled cells'
    pseudo labels then shape the representation, BENCHMARKS.md "Issue 16"), else a head on
    cached features.

    Raises:
        ConfigError: `mode` is not one of `MODES`.
    """
    if mode in MODES and mode != "auto":
        return mode
    if mode == "auto":
        if torch.device(device).type == "cuda":
            return "finetune"
        return "last-stage" if last_stage_fits else "head"
    raise ConfigError("model.mode", f"'{mode}' is not a mode", ", ".join(MODES))


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run small CPU tensor work (a head on features) on one intra-op thread.

    A head's matrices are too small to gain from more cores (BENCHMARKS.md, "Head mode"), and on
    a busy machine (a shared node, a nightly job beside others) extra threads wait for each
    other: the "Scoring" section measured small tensor ops 20x slower on two threads than on one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a forked RNG so the caller's random state is left as it was."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
