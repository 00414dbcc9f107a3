"""Pretrained timm weights from the Hugging Face hub, failing fast when offline.

Weights come from the local Hugging Face cache when it holds them; otherwise a download is tried
only after a ~3 s TCP probe of the host (or of the HTTPS proxy) succeeds, and only when no
offline flag (`SSLALL_OFFLINE`, `HF_HUB_OFFLINE`) is set. Without a network this fails within
seconds with one line, instead of hanging in retries.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlsplit

import timm
from torch import nn

from sslall.errors import ModelError, first_line
from sslall.model._offline_weights import LITE0

__all__ = ["hub_module"]

_PROBE_TIMEOUT_S = 3.0
_HINT = f'set weights = "path/to/weights.safetensors" or use the offline default backbone {LITE0}'


def hub_module(name: str) -> tuple[nn.Module, str]:
    """(timm model `name` with its hub weights, weights id): from the local Hugging Face cache,
    else downloaded if the host is reachable.

    Raises:
        ModelError: timm has no pretrained weights for `name`, or they cannot be had (offline,
            unreachable host, a failed download).
    """
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise ModelError(f"backbone '{name}': {first_line(exc)}") from exc
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ModelError(
            f"timm has no pretrained weights for '{name}'; set pretrained = false "
            'or weights = "path/to/weights.safetensors"'
        )
    arch = timm.models.get_arch_name(name)
    weights_id = f"hub-{arch}.{cfg.tag}" if cfg.tag else f"hub-{arch}"
    cached = _hf_cached_file(cfg.hf_hub_id, cfg.hf_hub_filename)
    if cached is None:
        problem = _network_problem(bool(cfg.hf_hub_id), cfg.url or "")
        if problem:
            raise ModelError(f"cannot download pretrained weights for '{name}': {problem}; {_HINT}")
    overlay = {"file": cached} if cached else None
    try:
        module = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"loading pretrained weights for '{name}' failed: {first_line(exc)}; {_HINT}"
        ) from exc
    return module, weights_id


def _hf_cached_file(repo_id: str | None, filename: str | None) -> str | None:
    """Path of the model's safetensors in the local Hugging Face cache, or None."""
    filename = filename or "model.safetensors"
    if not repo_id or not filename.endswith(".safetensors"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def _network_problem(hf_hub: bool, url: str) -> str | None:
    """Why the weights host cannot be reached (offline flag, no route), or None if it can."""
    for flag in ("SSLALL_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"offline mode is on ({flag})"
    target = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hf_hub else url
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or "").strip()
    if proxy and "://" not in proxy:
        proxy = f"http://{proxy}"
    parts = urlsplit(proxy or target)
    if not parts.hostname:
        return f"cannot tell the host of {proxy or target!r}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    error = _probe(parts.hostname, port)
    return f"{parts.hostname}:{port} is unreachable ({error})" if error else None


def _probe(host: str, port: int) -> str | None:
    """Open and close a TCP connection within ~3 s (DNS included, via a daemon thread)."""
    outcome: dict[str, str] = {}

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                outcome["ok"] = ""
        except OSError as exc:
            outcome["error"] = first_line(exc)

    thread = threading.Thread(target=attempt, name="sslall-probe", daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 0.5)
    if "ok" in outcome:
        return None
    return outcome.get("error", f"no answer in {_PROBE_TIMEOUT_S:.0f} s")
