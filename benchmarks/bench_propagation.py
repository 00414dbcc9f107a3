"""Offline, round 1 of head mode: label propagation (issue 16, item 1b) against self-training.

Chosen on a VALIDATION split carved from the training tree (the test split is never read here).
Usage (the training tree as `bench_simulate.split` makes it, a feature cache from a simulate):

    python benchmarks/bench_propagation.py ROOT FRACTION SEED CACHE
    # ROOT holds data/train/<class>/...; e.g. /tmp/b/pbc 0.02 0 /tmp/b/pbc/cache-head

Round-1 setting: stratified start labels (fraction F, 30 % of them holdout), the rest of the
training tree is the unlabeled pool except a stratified validation set of 1500 cells whose
labels only score the variants.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from sslall._fsutil import sha256_file
from sslall.config import Config
from sslall.decide._metrics import fit_temperature, softmax
from sslall.decide._propagation import PropagationParams, certainty, propagate_labels
from sslall.model._backbones import create_backbone
from sslall.model._heads import EnsembleHead, MLPHead, head_hidden, head_logits
from sslall.model._learner import cached_inputs
from sslall.model._train import train_head

root = Path(sys.argv[1])  # .../pbc
fraction = float(sys.argv[2])
seed = int(sys.argv[3])
train_dir = root / "data" / "train"
classes = sorted(d.name for d in train_dir.iterdir())
files, y = [], []
for c, cls in enumerate(classes):
    for f in sorted((train_dir / cls).iterdir()):
        files.append(f)
        y.append(c)
y = np.array(y)
ids_file = root / "ids.txt"
if ids_file.exists():
    ids = ids_file.read_text().split()
else:
    ids = [sha256_file(f) for f in files]
    ids_file.write_text("\n".join(ids))
cfg = Config(classes=tuple(classes))
backbone = create_backbone(cfg.model.backbone, pretrained=True, weights="", scales=cfg.model.feature_scales)
t = time.time()
x = cached_inputs(cfg, backbone, None, list(zip(ids, map(str, files), strict=True)),
                  cache_dir=Path(sys.argv[4]), device=torch.device("cpu"))
print("features", x.shape, round(time.time() - t, 1), "s", flush=True)

rng = np.random.default_rng(seed)
val, start = [], []
for c in range(len(classes)):
    rows = rng.permutation(np.flatnonzero(y == c))
    nv = round(1500 * len(rows) / len(y))
    ns = max(2, round(fraction * len(rows)))
    val += list(rows[:nv])
    start += list(rows[nv:nv + ns])
val, start = np.array(val), np.array(start)
hold = np.concatenate([rng.permutation(start[y[start] == c])[: max(1, round(0.3 * (y[start] == c).sum()))]
                       for c in range(len(classes))])
lab = np.setdiff1d(start, hold)
unl = np.setdiff1d(np.arange(len(y)), np.concatenate([val, start]))
print(f"labeled {len(lab)} holdout {len(hold)} unlabeled {len(unl)} val {len(val)}", flush=True)
C = len(classes)


def fit(rows, labels, weights, k=5):
    members = []
    for m in range(k):
        r = train_head(x[rows], labels, weights, x[hold], y[hold], num_classes=C, seed=seed * 100 + m)
        h = MLPHead(x.shape[1], C)
        h.load_state_dict(r.state)
        members.append(h)
    head = EnsembleHead(members).eval()
    lo = head_logits(head, x, torch.device("cpu"), 256)
    temp = fit_temperature(lo[hold], y[hold])
    return head, softmax(lo, temp)


def score(probs):
    return f1_score(y[val], probs[val].argmax(1), average="macro")


head, p = fit(lab, y[lab], np.ones(len(lab), np.float32))
base = score(p)
print(f"supervised val macro-F1 {base:.4f}", flush=True)
conf = p[unl].max(1)
pred = p[unl].argmax(1)
acc_clf = (pred == y[unl]).mean()
print(f"classifier acc on unlabeled {acc_clf:.4f}")
H = head_hidden(head, x, torch.device("cpu"), 256)
seeds = np.concatenate([lab])
results = {}
for name, emb in (("hidden", H), ("logp", np.log(np.clip(p, 1e-8, 1)))):
    for k in (10, 50):
        t = time.time()
        z = propagate_labels(emb, seeds, y[seeds], C, PropagationParams(k=k))
        w = certainty(z)
        zp = z[unl].argmax(1)
        print(f"LP {name} k={k}: acc {(zp == y[unl]).mean():.4f} agree-with-clf {(zp == pred).mean():.3f} "
              f"{time.time() - t:.1f}s; certainty mean {w[unl].mean():.3f}", flush=True)
        for tau in (0.5, 0.7, 0.9):
            ok = (z[unl].max(1) >= tau) & (zp == pred)
            prec = (zp[ok] == y[unl][ok]).mean() if ok.any() else float("nan")
            print(f"   zmax>={tau} & agree: coverage {ok.mean():.3f} precision {prec:.4f}")
        results[(name, k)] = z

# variants: retrain with pseudo labels; score on val
def retrain(sel, labels, weights, tag):
    rows = np.concatenate([lab, unl[sel]])
    yy = np.concatenate([y[lab], labels[sel]])
    ww = np.concatenate([np.ones(len(lab)), weights[sel]]).astype(np.float32)
    _, p2 = fit(rows, yy, ww)
    prec = (labels[sel] == y[unl][sel]).mean() if sel.any() else float("nan")
    print(f"{tag}: n={sel.sum()} precision {prec:.4f} val macro-F1 {score(p2):.4f} "
          f"(delta {score(p2) - base:+.4f})", flush=True)


retrain(conf >= 0.9, pred, conf, "self-training p>=0.9 w=conf")
retrain(conf >= 0.7, pred, conf, "self-training p>=0.7 w=conf")
for key, z in results.items():
    zu = z[unl]
    zp, zw = zu.argmax(1), certainty(zu)
    counts = np.bincount(zp, minlength=C).astype(float)
    cw = np.where(counts > 0, counts.sum() / (C * np.maximum(counts, 1)), 0)
    balanced = zw * cw[zp] / max(cw[zp].mean(), 1e-9) * zw.mean()
    retrain(np.ones(len(unl), bool), zp, balanced, f"LP {key} all, w=certainty*class")
    retrain(np.ones(len(unl), bool), zp, zw, f"LP {key} all, w=certainty")
    ok = (zu.max(1) >= 0.7) & (zp == pred)
    retrain(ok, zp, zw, f"LP {key} zmax>=0.7 & agree, w=certainty")
    ok = (zu.max(1) >= 0.5) & (zp == pred)
    retrain(ok, zp, np.ones(len(zp)), f"LP {key} zmax>=0.5 & agree, w=1")
