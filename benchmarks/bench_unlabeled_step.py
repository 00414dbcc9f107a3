"""One or two self-training steps of last-stage mode outside the loop: which unlabeled cells
a student should train on, and how (pbc-128, validation split only).

A teacher (the last stage of tf_efficientnet_lite0 at 224 px, both views, trained on the 2 %
starting labels `sslall simulate` draws) labels the unlabeled cells with its calibrated
probabilities (temperature fitted on the holdout); a fresh student trains on the labels plus:

- `hard0.9`: the cells at calibrated confidence >= 0.9, at their predicted class, weighted by
  their confidence (what the fixed policy does, without its class cap and kNN filter);
- `hardall`: every unlabeled cell at its predicted class, weighted by its confidence (what
  `train.unlabeled_weight = 1` added in the loop at commit 5583bf1, since reverted);
- `soft`, `soft0.5`: the teacher's calibrated probabilities as soft targets, on every cell or
  on the cells at confidence >= 0.5.

Each student becomes the next step's teacher. Macro-F1 is on the split's validation part (the
mean of both views' logits). The maps come from a feature cache a last-stage `sslall
simulate` on the same images filled (`--cache`); nothing is extracted when it is warm.

    python benchmarks/bench_unlabeled_step.py --split /work/b/ssl/choose --cache CACHE
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslall._fsutil import sha256_file
from sslall.config import Config
from sslall.decide._metrics import classification_metrics, fit_temperature
from sslall.experiments._simulate import SimulationSpec, class_folders, initial_split
from sslall.model._backbones import create_backbone, final_pool_only
from sslall.model._devices import seeded
from sslall.model._heads import MLPHead
from sslall.model._last_stage import (
    STAGE_LR_FACTOR,
    _pooled_width,
    flip_maps,
    split_last_stage,
    stage_embeddings,
)
from sslall.model._learner import cached_inputs
from sslall.model._train import BestEpoch, _head_scores, param_groups, sampler_weights
from sslall.store._sources import list_source


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", type=Path, required=True, help="a folder with train/ and test/")
    ap.add_argument("--cache", type=Path, required=True, help="an sslall simulate --cache folder")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["hard0.9", "hardall", "soft", "soft0.5"])
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    classes = class_folders(args.split / "train")
    cfg = Config(classes=classes)
    t, dev, n_cls = cfg.train, torch.device("cpu"), len(classes)
    train = list_source(args.split / "train", "labeled", classes)
    entries = train + list_source(args.split / "test", "labeled", classes)
    y = np.array([classes.index(e.label) for e in entries])
    val = np.arange(len(train), len(entries))
    backbone = final_pool_only(create_backbone(cfg.model.backbone, pretrained=True,
                                               scales=cfg.model.feature_scales))
    pristine = {k: v.clone() for k, v in backbone.module.state_dict().items()}
    stage = split_last_stage(backbone.module, cfg.model.backbone)
    samples = [(sha256_file(e.path), e.path) for e in entries]
    views = [cached_inputs(cfg, backbone, stage, samples, cache_dir=args.cache, device=dev,
                           turned=turned) for turned in (False, True)]
    shape = stage.map_shape

    def logits(model: tuple[nn.Module, dict], rows: np.ndarray) -> np.ndarray:
        """A (head, last-stage weights) pair's mean logits of both views: the stage is one
        module that every training overwrites, so each model carries its own weights."""
        head, stage_state = model
        stage.load_state_dict(stage_state)
        out = []
        for maps in views:
            with torch.inference_mode():
                emb = torch.from_numpy(stage_embeddings(stage, maps, dev, rows=rows))
                out.append(head.eval()(emb).numpy())
        return (out[0] + out[1]) / 2

    def fit(rows: np.ndarray, targets: np.ndarray, w: np.ndarray, held: np.ndarray, seed: int):
        """The round's last-stage training (both views, flips, early stopping on the holdout,
        the epoch cap) with a soft cross-entropy, so one-hot labels and soft targets mix; the
        trained (head, last-stage weights)."""
        backbone.module.load_state_dict(pristine)
        x = np.concatenate([views[0][rows], views[1][rows]])
        target = torch.as_tensor(np.concatenate([targets, targets]).astype(np.float32))
        weight = np.concatenate([w, w]).astype(np.float32)
        weight = torch.as_tensor(weight / weight.mean())
        draw = torch.as_tensor(sampler_weights(target.argmax(1).numpy(), n_cls))
        with seeded(seed, dev):
            head = MLPHead(_pooled_width(stage, shape, dev), n_cls, hidden=t.head_hidden, dropout=t.dropout)
            model = nn.Sequential(stage, head)
            optimizer = torch.optim.AdamW([
                *param_groups(stage.trainable_parameters(), t.lr * STAGE_LR_FACTOR, t.weight_decay),
                *param_groups(head, t.lr, t.weight_decay)])
            xt, best = torch.as_tensor(x), BestEpoch(t.patience)
            generator = torch.Generator().manual_seed(seed)
            for epoch in range(1, t.epochs + 1):
                model.train()
                order = torch.multinomial(draw, min(max(len(x), 512), t.stage_epoch_rows),
                                          replacement=True, generator=generator)
                for start in range(0, len(order), t.batch_size):
                    idx = order[start : start + t.batch_size]
                    batch = flip_maps(xt[idx].reshape(len(idx), *shape), generator, hflip=True, vflip=True)
                    loss = (-(target[idx] * F.log_softmax(model(batch), 1)).sum(1) * weight[idx]).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                f1, nll = _head_scores(model, views[0][held], y[held], dev, 256)
                if best.update(epoch, f1, nll, model):
                    break
            model.load_state_dict(best.state)
        return head, {k: v.detach().clone() for k, v in stage.state_dict().items()}

    def macro_f1(model: tuple[nn.Module, dict]) -> float:
        return classification_metrics(y[val], logits(model, val).argmax(1), None, list(classes))["macro_f1"]

    eye = np.eye(n_cls, dtype=np.float32)
    for seed in args.seeds:
        spec = SimulationSpec(args.split / "train", args.split / "test", args.split, cfg, 1,
                              label_fraction=0.02, seed=seed)
        at = {e.path: i for i, e in enumerate(train)}
        labeled, holdout, unlabeled = (np.sort([at[e.path] for e in part])
                                       for part in initial_split(train, spec))
        teacher = fit(labeled, eye[y[labeled]], np.ones(len(labeled)), holdout, seed)
        print(json.dumps({"seed": seed, "variant": "labels", "step": 0,
                          "macro_f1": round(macro_f1(teacher), 4)}), flush=True)
        for variant in args.variants:
            current = teacher
            for step in range(1, args.steps + 1):
                started = time.perf_counter()
                temperature = fit_temperature(logits(current, holdout), y[holdout])
                p = torch.softmax(torch.from_numpy(logits(current, unlabeled)) / temperature, 1).numpy()
                confidence, guess = p.max(1), p.argmax(1)
                floor = {"hard0.9": 0.9, "soft0.5": 0.5}.get(variant, 0.0)
                keep = confidence >= floor
                targets = p[keep] if variant.startswith("soft") else eye[guess[keep]]
                w = np.ones(keep.sum()) if variant.startswith("soft") else confidence[keep]
                current = fit(np.concatenate([labeled, unlabeled[keep]]),
                              np.concatenate([eye[y[labeled]], targets]),
                              np.concatenate([np.ones(len(labeled)), w]), holdout, seed)
                print(json.dumps({"seed": seed, "variant": variant, "step": step,
                                  "macro_f1": round(macro_f1(current), 4),
                                  "unlabeled_used": int(keep.sum()),
                                  "guess_precision": round(float((guess[keep] == y[unlabeled][keep]).mean()),
                                                           4),
                                  "temperature": round(temperature, 3),
                                  "seconds": round(time.perf_counter() - started)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
