"""Head training on toy features, a one-epoch fine-tune on tiny images, device and mode choice."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslall.config import AugmentConfig
from sslall.errors import ConfigError, ModelError
from sslall.model import _train as train
from sslall.model._backbones import BASELINE_CNN, Classifier, create_backbone
from sslall.model._devices import resolve_device, resolve_mode
from sslall.model._finetune import finetune
from sslall.model._heads import MLPHead
from sslall.model._train import TrainSet, train_head

FAST = dict(hidden=(16,), dropout=0.1, epochs=15, batch_size=16, lr=1e-2, patience=5, seed=3)


def _blobs(n_per_class=40, classes=3, dim=6, seed=0):
    """Well separated Gaussian blobs: class c is centred at 4 * e_c."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(scale=0.5, size=(len(y), dim)).astype(np.float32)
    x[np.arange(len(y)), y] += 4.0
    return x, y


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _predict(state, x, classes=3):
    head = MLPHead(x.shape[1], classes, hidden=FAST["hidden"], dropout=FAST["dropout"]).eval()
    head.load_state_dict(state)
    with torch.no_grad():
        return head(torch.as_tensor(x)).argmax(1).numpy()


@pytest.mark.parametrize("balance", ["sampler", "loss", "none"])
def test_train_head_learns_separable_blobs(balance):
    x, y = _blobs()
    vx, vy = _blobs(seed=1)
    calls, names = [], set()
    result = train_head(x, y, np.ones(len(y)), vx, vy, num_classes=3, class_balance=balance,
                        progress=lambda step, e, n: (names.add(step), calls.append(e)), **FAST)
    assert max(h["val_macro_f1"] for h in result.history) == 1.0
    assert result.history[result.best_epoch - 1]["val_macro_f1"] == 1.0
    assert (_predict(result.state, vx) == vy).all()
    assert calls == list(range(1, len(result.history) + 1)) and result.seconds > 0
    assert names == {"train"}
    assert set(result.history[0]) == {"epoch", "train_loss", "val_macro_f1", "val_loss", "lr", "seconds"}
    assert all(h["lr"] == FAST["lr"] and h["seconds"] > 0 for h in result.history)
    assert sum(h["seconds"] for h in result.history) <= result.seconds


def test_train_head_is_reproducible_and_leaves_global_rng_alone():
    x, y = _blobs()
    rng_state = torch.get_rng_state()
    a = train_head(x, y, np.ones(len(y)), x, y, num_classes=3, **FAST)
    assert torch.equal(torch.get_rng_state(), rng_state)
    b = train_head(x, y, np.ones(len(y)), x, y, num_classes=3, **FAST)
    assert _states_equal(a.state, b.state) and a.history == [  # wall time is no training result
        {**h, "train_loss": pytest.approx(h["train_loss"]), "seconds": a.history[i]["seconds"]}
        for i, h in enumerate(b.history)]
    c = train_head(x, y, np.ones(len(y)), x, y, num_classes=3, **{**FAST, "seed": 4})
    assert not _states_equal(a.state, c.state)


def test_zero_weight_rows_are_ignored_and_weights_matter():
    x, y = _blobs()
    wrong = (y + 1) % 3  # the same points, labelled wrongly
    xs, ys = np.concatenate([x, x, x]), np.concatenate([y, wrong, wrong])
    kw = dict(num_classes=3, class_balance="none", **{**FAST, "epochs": 10})
    clean = train_head(x, y, np.ones(len(y)), **kw)
    ignored = train_head(xs, ys, np.r_[np.ones(len(y)), np.zeros(2 * len(y))], **kw)
    assert _states_equal(clean.state, ignored.state)  # weight 0 == not there at all
    counted = train_head(xs, ys, np.ones(3 * len(y)), **kw)
    assert (_predict(counted.state, x) == wrong).mean() > 0.9  # 2:1 for the wrong labels
    outweighed = train_head(xs, ys, np.r_[np.full(len(y), 5.0), np.ones(2 * len(y))], **kw)
    assert (_predict(outweighed.state, x) == y).mean() > 0.9  # 5:2 for the right ones


def test_early_stopping_keeps_the_best_epoch(monkeypatch):
    x, y = _blobs()
    # (macro-F1, loss) per epoch: an F1 tie goes to the lower loss, an equal one to the earlier epoch
    scores = iter([(0.5, 1.0), (0.9, 0.8), (0.9, 0.9), (0.9, 0.4), (0.9, 0.4)] + [(0.6, 0.3)] * 5)
    snapshots = []

    def scripted(head, val_x, val_y, device, *_):
        snapshots.append({k: v.clone() for k, v in head.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(train, "_head_scores", scripted)
    result = train_head(x, y, np.ones(len(y)), x, y, num_classes=3, **{**FAST, "patience": 3})
    assert result.best_epoch == 4
    assert [h["epoch"] for h in result.history] == list(range(1, 8))  # stopped 3 epochs after the best
    assert _states_equal(result.state, snapshots[3])


@pytest.mark.parametrize("balance", ["sampler", "none"])
@pytest.mark.parametrize(("rows", "cap", "drawn"), [
    (1000, 0, 1000),  # no cap: every row once
    (1000, 96, 96),  # capped: the same rows an epoch however many pseudo labels accumulate
    (70, 0, train.MIN_EPOCH_ROWS),  # a small set is repeated up to the minimum
    (70, 100, 100),  # a cap below the minimum wins: the user asked for it
])
def test_an_epoch_draws_at_most_max_epoch_rows(balance, rows, cap, drawn):
    x, y = _blobs(n_per_class=rows // 2, classes=2)
    seen: list[int] = []

    def count(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(len(batch))
        return batch

    model = torch.nn.Linear(x.shape[1], 2)
    train.fit_rows(model, train.param_groups(model, 1e-2, 0.0), x, y, np.ones(len(y), np.float32),
                   None, None, num_classes=2, epochs=2, batch_size=32, lr=1e-2, class_balance=balance,
                   patience=5, seed=0, device=torch.device("cpu"), augment=count,
                   max_epoch_rows=cap)
    assert sum(seen) == 2 * drawn


def test_without_validation_trains_all_epochs_and_keeps_the_last():
    x, y = _blobs(10)
    result = train_head(x, y, np.ones(len(y)), np.zeros((0, 6)), np.zeros(0), num_classes=3,
                        **{**FAST, "epochs": 4})
    assert result.best_epoch == 4 and len(result.history) == 4
    assert result.history[-1]["val_macro_f1"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(class_balance="oversample"), "class_balance"),
        (dict(train_w=-1.0), "weights"),
        (dict(train_w=0.0), "positive weight"),
        (dict(train_y=7), "class indices"),
        (dict(num_classes=1), "num_classes"),
    ],
)
def test_train_head_rejects_bad_input(change, message):
    x, y = _blobs(5)
    args = dict(train_y=y, train_w=np.ones(len(y)), num_classes=3, **FAST)
    for key in ("train_w", "train_y"):
        if key in change:
            change = {**change, key: np.full(len(y), change[key])}
    with pytest.raises(ValueError, match=message):
        train_head(x, **{**args, **change})


def test_divergence_is_a_one_line_model_error():
    x, y = _blobs(5)
    with pytest.raises(ModelError, match="diverged"):
        train_head(np.full_like(x, 3e38), y, np.ones(len(y)), num_classes=3, **FAST)


def test_train_set_validates_lengths():
    ts = TrainSet(np.zeros((3, 2)), [0, 1, 0], [1.0, 0.5, 2.0])
    assert len(ts) == 3 and ts.labels.dtype == np.int64
    with pytest.raises(ValueError, match="equal lengths"):
        TrainSet(["a.png"], [0, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        TrainSet(["a.png"], [0], [-1.0])


def _tiny_images(root: Path, n: int) -> tuple[list[str], np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(n):
        label = i % 2
        arr = np.full((32, 32, 3), 40 + 160 * label, dtype=np.uint8)
        arr += np.random.default_rng(i).integers(0, 30, arr.shape, dtype=np.uint8)
        path = root / f"c{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
        labels.append(label)
    return paths, np.array(labels)


@pytest.mark.parametrize("with_val", [True, False])
def test_finetune_one_epoch_on_tiny_images(tmp_path, with_val):
    paths, y = _tiny_images(tmp_path / "img", 9)
    torch.manual_seed(0)
    bb = create_backbone(BASELINE_CNN, pretrained=False)
    model = Classifier(bb.module, MLPHead(bb.num_features, 2, hidden=(8,), dropout=0.1))
    steps = []
    result = finetune(
        model, paths, y, np.r_[np.ones(8), 0.0], paths[:4] if with_val else [], y[:4] if with_val else None,
        image_size=32, mean=bb.mean, std=bb.std, augment=AugmentConfig(), epochs=1, batch_size=4,
        lr=1e-3, weight_decay=1e-4, class_balance="sampler", patience=2, seed=0, device="cpu",
        progress=lambda name, s, t: steps.append((s, t)) if name == "train" else pytest.fail(name),
    )
    assert set(result.state) == set(model.state_dict())
    assert _states_equal(result.state, model.state_dict())  # the model holds the kept weights
    assert not model.training and result.best_epoch == 1 and len(result.history) == 1
    assert steps == [(1, 2), (2, 2)]  # 8 weighted rows in batches of 4; the weight-0 row dropped
    assert (result.history[0]["val_macro_f1"] is not None) == with_val
    assert result.history[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine schedule's end


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ModelError) as err:
            resolve_device(name)
        assert "\n" not in str(err.value) and "not available" in str(err.value)
    with pytest.raises(ConfigError, match="model.device"):
        resolve_device("tpu-ish")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ModelError, match="1 CUDA device"):
        resolve_device("cuda:3")


def test_resolve_mode():
    assert resolve_mode("auto", torch.device("cpu")) == "head"
    assert resolve_mode("auto", torch.device("cpu"), last_stage_fits=True) == "last-stage"
    assert resolve_mode("auto", torch.device("cuda"), last_stage_fits=True) == "finetune"
    assert resolve_mode("head", torch.device("cpu"), last_stage_fits=True) == "head"
    assert resolve_mode("auto", torch.device("cuda")) == "finetune"
    assert resolve_mode("finetune", torch.device("cpu")) == "finetune"
    assert resolve_mode("head", torch.device("cuda")) == "head"
    assert resolve_mode("last-stage", torch.device("cuda")) == "last-stage"
    with pytest.raises(ConfigError, match="model.mode"):
        resolve_mode("both", torch.device("cpu"))


def test_finetune_is_reproducible_on_cpu(tmp_path):
    paths, y = _tiny_images(tmp_path / "img", 6)

    def run():
        torch.manual_seed(0)
        bb = create_backbone(BASELINE_CNN, pretrained=False)
        model = Classifier(bb.module, MLPHead(bb.num_features, 2, hidden=(8,), dropout=0.1))
        return finetune(model, paths, y, np.ones(6), image_size=32, mean=bb.mean, std=bb.std,
                        augment=AugmentConfig(), epochs=2, batch_size=4, lr=1e-3, seed=5,
                        class_balance="loss").state

    assert _states_equal(run(), run())
