"""The last stage of a backbone trained on cached maps (`model.mode = "last-stage"`)."""

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import invoke
from test_rounds import copy_ws, template_ws  # noqa: F401  (module-scoped fixture)

from sslall.errors import ModelError
from sslall.model._backbones import BaselineCNN
from sslall.model._checkpoints import write_safetensors
from sslall.model._inference import Predictor
from sslall.model._last_stage import flip_maps, split_last_stage, stage_embeddings, train_last_stage

FAMILIES = ["baseline-cnn", "tf_efficientnet_lite0", "resnet18", "convnext_atto"]


def _module(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "baseline-cnn":
        return BaselineCNN()
    return timm.create_model(name, pretrained=False, num_classes=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_last_stage_of_frozen_maps_is_the_whole_backbone(name: str) -> None:
    module = _module(name).eval()
    stage = split_last_stage(module, name)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        whole = module(x)
        maps = stage.frozen_maps(x)
        assert maps.ndim == 2 and maps.shape[1] == int(np.prod(stage.map_shape))
        assert torch.allclose(stage(maps), whole, atol=1e-5)
    # the stage's parameters are the backbone's own, and only the last stage's
    own = {id(p) for p in module.parameters()}
    trainable = {id(p) for p in stage.trainable_parameters()}
    assert trainable and trainable < own


def test_set_input_size_learns_the_map_shape_without_images() -> None:
    module = _module("tf_efficientnet_lite0").train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    stage = split_last_stage(module)
    stage.set_input_size(64)
    assert stage.map_shape == (192, 2, 2)
    assert module.training  # left as it was, and no BatchNorm statistic moved
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_an_architecture_without_a_known_cut_is_one_clear_error() -> None:
    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    with pytest.raises(ModelError, match=r'last-stage.*vit_tiny_patch16_224.*supports.*head or finetune'):
        split_last_stage(module, "vit_tiny_patch16_224")


def test_flip_maps_is_seeded_and_only_flips() -> None:
    maps = torch.arange(4, dtype=torch.float32).reshape(1, 1, 2, 2).repeat(100, 1, 1, 1)
    a = flip_maps(maps, torch.Generator().manual_seed(1), hflip=True, vflip=True)
    b = flip_maps(maps, torch.Generator().manual_seed(1), hflip=True, vflip=True)
    assert torch.equal(a, b)
    variants = {tuple(m.flatten().tolist()) for m in a}
    base = maps[0, 0]
    allowed = {tuple(v.flatten().tolist()) for v in (base, base.flip(1), base.flip(0), base.flip(0).flip(1))}
    assert variants == allowed  # all four, and nothing else
    assert torch.equal(flip_maps(maps, torch.Generator(), hflip=False, vflip=False), maps)


def _blob_maps(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps of baseline-cnn's last block input (64 x 4 x 4) whose class shows in their mean."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    maps = rng.normal(size=(len(y), 128, 4, 4)).astype(np.float32)
    for c in range(3):
        maps[y == c, c * 20:(c + 1) * 20] += 2.0
    return maps.reshape(len(y), -1), y


def _train(seed: int = 0, weights: np.ndarray | None = None):
    stage = split_last_stage(_module("baseline-cnn"))
    stage.set_input_size(32)
    x, y = _blob_maps(20, seed=1)
    w = np.ones(len(y)) if weights is None else weights
    head, result = train_last_stage(
        stage, x, y, w, x, y, num_classes=3, hidden=(16,), dropout=0.1, lr=3e-3,
        weight_decay=1e-4, epochs=4, batch_size=16, class_balance="sampler", patience=3, seed=seed,
        device=torch.device("cpu"), hflip=True, vflip=True)
    return stage, head, result, x, y


def test_train_last_stage_learns_keeps_the_best_epoch_and_is_reproducible() -> None:
    before = {k: v.clone() for k, v in _module("baseline-cnn").state_dict().items()}
    stage, head, result, x, y = _train()
    emb = stage_embeddings(stage, x, torch.device("cpu"), batch_size=7)
    pred = head(torch.from_numpy(emb)).argmax(1).numpy()
    assert (pred == y).mean() > 0.9
    assert result.best_epoch == max(range(1, len(result.history) + 1),
                                    key=lambda e: (result.history[e - 1]["val_macro_f1"],
                                                   -result.history[e - 1]["val_loss"], -e))
    after = stage.module.state_dict()
    # the frozen first blocks are untouched; the last block moved
    assert torch.equal(after["features.0.weight"], before["features.0.weight"])
    assert not torch.equal(after["features.12.weight"], before["features.12.weight"])
    stage2, head2, _, _, _ = _train()
    for a, b in zip(stage.module.state_dict().values(), stage2.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(head.state_dict().values(), head2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_rows_of_weight_zero_cannot_influence_training() -> None:
    x, y = _blob_maps(20, seed=1)
    w = np.ones(len(y))
    w[::2] = 0.0
    absurd = x.copy()
    absurd[::2] = 1e6  # the weight-0 rows changed beyond recognition: nothing may move

    def fit(maps: np.ndarray) -> dict:
        stage = split_last_stage(_module("baseline-cnn"))
        stage.set_input_size(32)
        head, _ = train_last_stage(
            stage, maps, y, w, x[1::2], y[1::2], num_classes=3, hidden=(16,), dropout=0.1, lr=3e-3,
            weight_decay=1e-4, epochs=3, batch_size=16, class_balance="sampler", patience=3, seed=0,
            device=torch.device("cpu"), hflip=True, vflip=True)
        return {**stage.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}

    a, b = fit(x), fit(absurd)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("turned", [True, False])
def test_last_stage_round_checkpoint_predicts_like_the_round(template_ws: Path,  # noqa: F811
                                                             tmp_path: Path, runner,
                                                             turned: bool) -> None:
    ws = copy_ws(template_ws, tmp_path)
    # fixed starting weights: random ones are drawn anew each round, and so are their maps
    write_safetensors(ws / "start.safetensors", _module("baseline-cnn").state_dict())
    config = ws / "sslall.toml"
    weights = f'pretrained = false\nweights = "{ws / "start.safetensors"}"'
    config.write_text(config.read_text().replace("pretrained = false", weights)
                      + f"\n[augment]\nturned_view = {str(turned).lower()}\n")
    result = invoke(runner, "round", "-w", ws, "--mode", "last-stage", "--json")
    assert result.exit_code == 0, result.stderr
    run = ws / "runs" / "round-0001"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode"] == "last-stage" and metrics["metrics"]["macro_f1"] is not None
    meta = json.loads((run / "model.json").read_text())
    assert meta["mode"] == "last-stage" and meta["feature_scales"] == 0
    assert meta["turned_view"] is turned
    # the checkpoint is a whole-image model: its predictions match the round's, made from maps
    # (with `turned`, the mean over both views: from images turned here, from maps there)
    import csv

    with (run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))[:12]
    predictor = Predictor(run / "model.safetensors")
    for row, pred in zip(rows, predictor.predict([r["path"] for r in rows]), strict=True):
        assert predictor.classes[int(pred.probs.argmax())] == row["prediction"]
        assert abs(float(pred.probs.max()) - float(row["confidence"])) < 0.02
    # the maps are cached under their own key, beside (never mixed with) head-mode features
    keys = [json.loads(m.read_text())["key"]["backbone"]
            for m in (ws / "cache" / "features").glob("*/meta.json")]
    assert any(k.endswith("/maps-before-last-stage") for k in keys)
    assert any(k.endswith("/maps-before-last-stage/turned-90") for k in keys) is turned
    shards = sorted((ws / "cache" / "features").glob("*/*.ids"))
    result = invoke(runner, "round", "-w", ws, "--mode", "last-stage", "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted((ws / "cache" / "features").glob("*/*.ids")) == shards  # round 2: all cached


@pytest.mark.parametrize("weights", [True, False])
def test_auto_mode_trains_the_last_stage_of_trained_weights_on_a_cpu(
        template_ws: Path, tmp_path: Path, runner, weights: bool) -> None:  # noqa: F811
    ws = copy_ws(template_ws, tmp_path)
    config = ws / "sslall.toml"
    config.write_text(config.read_text().replace('mode = "head"', 'mode = "auto"'))
    if weights:  # a weights file counts as trained weights; random ones stay in head mode
        write_safetensors(ws / "start.safetensors", _module("baseline-cnn").state_dict())
        config.write_text(config.read_text().replace(
            "pretrained = false", f'pretrained = false\nweights = "{ws / "start.safetensors"}"'))
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    meta = json.loads((ws / "runs" / "round-0001" / "model.json").read_text())
    assert meta["mode"] == ("last-stage" if weights else "head")
    if weights:
        assert meta["feature_scales"] == 0


def test_last_stage_of_an_unsupported_backbone_is_one_line(template_ws: Path,  # noqa: F811
                                                          tmp_path: Path, runner) -> None:
    ws = copy_ws(template_ws, tmp_path)
    config = ws / "sslall.toml"
    text = config.read_text().replace('backbone = "baseline-cnn"', 'backbone = "vit_tiny_patch16_224"')
    config.write_text(text.replace("image_size = 32", "image_size = 32\n"))
    result = invoke(runner, "round", "-w", ws, "--mode", "last-stage")
    assert result.exit_code != 0
    assert "last-stage" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_a_turned_view_classifier_averages_the_image_and_the_image_turned_90_degrees() -> None:
    from sslall.model._backbones import Classifier
    from sslall.model._heads import MLPHead

    module = _module("baseline-cnn").eval()
    head = MLPHead(module.num_features, 3, hidden=(8,)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        upright = head(module(x))
        turned = head(module(torch.rot90(x, 1, (2, 3))))
        both = Classifier(module, head, turned_view=True)(x)
        assert torch.allclose(both, (upright + turned) / 2, atol=1e-6)
        assert torch.allclose(Classifier(module, head)(x), upright)
        assert not torch.allclose(both, upright, atol=1e-4)
