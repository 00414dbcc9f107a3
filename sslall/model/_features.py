"""Batched inference: frozen-backbone features (through the on-disk cache), logits, embeddings,
MC dropout.

The CPU path lives on the feature cache (`sslall.model._feature_cache`): a frozen backbone
scores ~15-40 images/s on two cores, so `extract_features` computes only what the cache lacks
and appends it there.

Scoring streams: images are decoded in DataLoader workers, batches run under
`torch.inference_mode` (channels_last + bf16 autocast on CUDA), and large outputs go to a
memory-mapped `.npy` in a work directory instead of memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from sslall._progress import Progress
from sslall.config import PreprocessConfig
from sslall.data._datasets import ImageDataset, eval_transform, make_loader, transform_key
from sslall.decide._scores import Scores
from sslall.errors import ModelError
from sslall.model._backbones import Backbone, Classifier, turn
from sslall.model._distributed import Dist, broadcast, gather_rows, shard_bounds
from sslall.model._feature_cache import FeatureCache, FeatureSet
from sslall.model._heads import head_sizes

__all__ = ["extract_features", "mc_dropout_probs", "predict"]

Sample = tuple[str, str]

FLUSH_ROWS = 4096  # features kept in memory before they are written to the cache
MEMMAP_BYTES = 256 * 2**20  # outputs larger than this go to a memory-mapped file (if a work dir is given)


def extract_features(
    backbone: Backbone, samples: Sequence[Sample], *, image_size: int, cache: FeatureCache,
    batch_size: int = 64, device: torch.device | str = "cpu", num_workers: int = 0,
    max_pixels: int = 50_000_000, progress: Progress | None = None, dist: Dist | None = None,
    work_dir: str | Path | None = None, backbone_name: str | None = None, flush_rows: int = FLUSH_ROWS,
    preprocess: PreprocessConfig | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None, kind: str = "",
    step: str = "features", verify_ids: bool = False,
) -> np.ndarray:
    """Features [N, D] float32 of `samples` ((sha256 id, path) pairs), computing only the uncached.

    Missing features are computed in streamed batches and appended to `cache` every
    `flush_rows` rows, so memory stays bounded and a kill loses at most one flush. The result is
    read back from the cache (into a memory-mapped `features.npy` in `work_dir` when large).
    `progress(step, done, total)` counts samples, cached ones included. `backbone_name` overrides
    the architecture name used in the cache key (default: timm's architecture or the class name).
    Under torchrun (`dist`, every rank calls this) the uncached images are split into one
    contiguous shard per rank and the shards are sent to rank 0, which alone opens and writes
    the cache and returns the features; the other ranks return an empty [0, D] array.
    `preprocess` runs before the transform and is part of the cache key. `forward` replaces the
    backbone's pooled features with another [n, D] output of its module (the flattened maps of
    `LastStage.frozen_maps`); `kind` names that output in the cache key, so the two never mix.
    With `verify_ids` (ids that are the sha256 of each file, as a round's are) every image is
    decoded from the bytes that were hashed, so no feature is cached under an id its bytes no
    longer have.

    Raises:
        UnreadableImage: an image can no longer be decoded.
        ChangedFile: with `verify_ids`, a file's bytes no longer hash to its id.
        ModelError: the backbone returns something other than finite [n, D] features.
    """
    if forward is not None and not kind:
        raise ValueError("extract_features: a custom `forward` needs a `kind` for its cache key")
    ids = [str(sample_id) for sample_id, _ in samples]
    name = (backbone_name or _architecture(backbone)) + (f"/{kind}" if kind else "")
    store = _open_store(cache, dist, name, backbone.weights_id,
                        transform_key(image_size, backbone.mean, backbone.std, preprocess))
    todo: dict[str, str] = {}
    for sample_id, path in samples if store is not None else ():
        if str(sample_id) not in store and str(sample_id) not in todo:
            todo[str(sample_id)] = str(path)
    todo = broadcast(dist, todo)  # rank 0's list: the others never look at the cache
    total = len(dict.fromkeys(ids))
    done = total - len(todo)
    if progress is not None:
        progress(step, done, total)
    if todo:
        transform = eval_transform(image_size, backbone.mean, backbone.std, preprocess)
        dataset = ImageDataset(list(todo.values()), transform, max_pixels=max_pixels,
                               ids=list(todo) if verify_ids else None)
        todo_ids = list(todo)
        lo, hi = shard_bounds(len(todo_ids), dist)
        if dist is not None:
            dataset = Subset(dataset, range(lo, hi))  # items keep their index into todo_ids
        pending_ids: list[str] = []
        pending: list[np.ndarray] = []
        batches = _stream(backbone.module, dataset, batch_size, device, num_workers,
                          forward=forward or backbone.features)
        with contextlib.closing(batches):
            for index, feats in batches:
                _check_features(feats, name)
                pending_ids += [todo_ids[i] for i in index]
                pending.append(feats)
                done += len(index)
                if store is not None and len(pending_ids) >= flush_rows:
                    store.put(pending_ids, np.concatenate(pending))
                    pending_ids, pending = [], []
                if progress is not None:
                    progress(step, done, total)
        if store is not None and pending_ids:
            store.put(pending_ids, np.concatenate(pending))
            pending = []
        if dist is not None:  # rank 0 passes nothing: its own shard is in the cache already

            def cache_rows(at: int, rows: np.ndarray) -> None:  # the others' shards follow rank 0's
                store.put(todo_ids[hi + at : hi + at + len(rows)], rows)

            mine = np.concatenate(pending) if pending else np.zeros((0, 1), np.float32)
            gather_rows(dist, mine, cache_rows if store is not None else None)
    if store is None:
        return np.zeros((0, backbone.num_features), np.float32)
    dim = store.dim if store.dim is not None else backbone.num_features
    out = _allocate(work_dir, "features.npy", (len(ids), dim))
    for start in range(0, len(ids), flush_rows):
        chunk, missing = store.get(ids[start : start + flush_rows])
        if missing:  # another process cannot remove shards, so this is a bug, not a user error
            raise RuntimeError(f"feature cache lost {len(missing)} features it had just written")
        out[start : start + len(chunk)] = chunk
    return out


def predict(
    model: Classifier, samples: Sequence[Sample], *, image_size: int, mean: Sequence[float],
    std: Sequence[float], batch_size: int = 64, device: torch.device | str = "cpu",
    num_workers: int = 0, max_pixels: int = 50_000_000, progress: Progress | None = None,
    work_dir: str | Path | None = None, mc_samples: int = 0, seed: int = 0,
    preprocess: PreprocessConfig | None = None, step: str = "score", verify_ids: bool = False,
) -> Scores:
    """Logits and embeddings (the backbone's pooled features) of every sample, streamed.

    For finetune mode, where features change every round and cannot be cached. With
    `mc_samples` > 0, also MC-dropout probabilities of the head over the embeddings (BALD).
    Arrays larger than 256 MiB go to memory-mapped `.npy` files in `work_dir` when one is given.
    `progress(step, done, total)` after each batch. `verify_ids` as in `extract_features`.
    """
    ids = [str(sample_id) for sample_id, _ in samples]
    dataset = ImageDataset([str(p) for _, p in samples],
                           eval_transform(image_size, mean, std, preprocess),
                           max_pixels=max_pixels, ids=ids if verify_ids else None)
    width, n_classes = head_sizes(model.head)
    logits = np.zeros((len(ids), n_classes), dtype=np.float32)
    embeddings: np.ndarray | None = None
    done = 0

    def forward(x: torch.Tensor) -> torch.Tensor:
        emb = model.features(x).float()
        turned = model.features(turn(x)).float() if model.turned_view else None
        with torch.autocast(x.device.type, enabled=False):  # the head in float32, not bf16
            return torch.cat([emb, model.head_logits(emb, turned).float()], dim=1)

    batches = _stream(model, dataset, batch_size, device, num_workers, forward=forward)
    with contextlib.closing(batches):
        for index, out in batches:
            if embeddings is None:
                embeddings = _allocate(work_dir, "embeddings.npy", (len(ids), out.shape[1] - n_classes))
            embeddings[index] = out[:, :-n_classes]
            logits[index] = out[:, -n_classes:]
            done += len(index)
            if progress is not None:
                progress(step, done, len(ids))
    if embeddings is None:
        embeddings = np.zeros((0, width), dtype=np.float32)
    mc = None
    if mc_samples > 0:
        mc = mc_dropout_probs(model.head, embeddings, T=mc_samples, seed=seed, device=device)
    return Scores(logits, embeddings, mc, ids=ids)


def mc_dropout_probs(
    head: nn.Module, features: np.ndarray, T: int = 10, temperature: float = 1.0, seed: int = 0, *,
    batch_size: int = 8192, device: torch.device | str | None = None,
) -> np.ndarray:
    """[T, N, C] float32 softmax(head(features) / temperature) with dropout on, for BALD.

    Only the dropout layers are switched to training mode (normalisation layers stay in eval),
    no gradient is kept, the global RNG is left untouched, and `seed` makes the masks repeatable.
    """
    if T < 1:
        raise ValueError(f"T (MC samples) must be positive, got {T}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    device = torch.device(device) if device is not None else next(head.parameters()).device
    n_classes = head_sizes(head)[1]
    out = np.empty((T, len(features), n_classes), dtype=np.float32)
    modes = {m: m.training for m in head.modules()}
    head.to(device).eval()
    for module in head.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    try:
        with _fork_rng(device), torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(features), batch_size):
                x = torch.as_tensor(np.asarray(features[start : start + batch_size]), device=device).float()
                for t in range(T):
                    probs = torch.softmax(head(x).float() / temperature, dim=1)
                    out[t, start : start + len(x)] = probs.cpu().numpy()
    finally:
        for module, mode in modes.items():
            module.train(mode)
    return out


# --- implementation ---------------------------------------------------------------------


def _stream(
    module: nn.Module, dataset: ImageDataset, batch_size: int, device: torch.device | str,
    num_workers: int, *, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (dataset indices, float32 outputs) per batch, in eval mode; the module's training
    flag and memory format are restored afterwards (safetensors needs contiguous weights)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    was_training = module.training
    module.eval().to(device)
    if cuda:
        module.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    try:
        with torch.inference_mode():
            for x, index in loader:
                x = x.to(device, non_blocking=True)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    out = (forward or module)(x)
                yield index.numpy(), out.float().cpu().numpy()
    finally:
        if cuda:
            module.to(memory_format=torch.contiguous_format)
        module.train(was_training)


def _open_store(cache: FeatureCache, dist: Dist | None, *key: str) -> FeatureSet | None:
    """The feature set of `key`; None on ranks other than 0, which never touch the cache."""
    return cache.open(*key) if dist is None or dist.is_main else None


def _check_features(feats: np.ndarray, backbone: str) -> None:
    if feats.ndim != 2 or not np.isfinite(feats).all():
        problem = "non-finite" if feats.ndim == 2 else "unpooled"
        raise ModelError(
            f"backbone {backbone} gave {problem} features of shape {tuple(feats.shape)}; "
            "expected finite [batch, D] (try model.device = \"cpu\" to rule out mixed precision)"
        )


def _allocate(work_dir: str | Path | None, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A float32 array: a fresh memory-mapped .npy in `work_dir` when large, else in memory."""
    if work_dir is None or shape[0] * shape[1] * 4 <= MEMMAP_BYTES:
        return np.zeros(shape, dtype=np.float32)
    path = Path(work_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # maps of an older file stay valid; we write a new inode
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)


def _architecture(backbone: Backbone) -> str:
    cfg = getattr(backbone.module, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    scales = f"/s{backbone.scales}" if backbone.scales else ""
    return f"{arch or type(backbone.module).__name__}/d{backbone.num_features}{scales}"



def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Fork the CPU RNG (and the device's, on CUDA) so seeding inside leaves the caller's alone."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)
