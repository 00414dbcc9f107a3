"""Backbones, heads and safetensors checkpoints (tiny models, CPU, seconds); offline ImageNet
weights are in test_offline_weights.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from sslall._fsutil import sha256_file
from sslall.errors import ModelError, NotFoundError
from sslall.model._backbones import (
    BASELINE_CNN,
    Classifier,
    build_classifier_from_checkpoint,
    create_backbone,
)
from sslall.model._checkpoints import load_checkpoint, save_checkpoint
from sslall.model._heads import EnsembleHead, MLPHead
from sslall.model._offline_weights import LITE0

META = {
    "classes": ["blast", "lymphocyte", "neutrophil"],
    "backbone": BASELINE_CNN,
    "image_size": 64,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "temperature": 1.3,
    "round": 2,
    "dropout": 0.2,
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sslall-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> None:
    """Converted weights go to a temp cache, never ~/.cache; no offline flag leaks in."""
    monkeypatch.setenv("SSLALL_CACHE_DIR", str(shared_cache))
    monkeypatch.delenv("SSLALL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# --- backbones ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim", "native"), [(BASELINE_CNN, 128, 128), ("resnet18", 512, 224)])
def test_backbone_returns_pooled_features(name: str, dim: int, native: int) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=False)
    with torch.no_grad():
        out = backbone.module.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, dim) == (2, backbone.num_features)
    assert backbone.input_size == native
    assert len(backbone.mean) == len(backbone.std) == 3
    assert backbone.weights_id.startswith("random-")


def test_random_weights_id_tells_seeds_apart() -> None:
    ids = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        ids.append(create_backbone(BASELINE_CNN, pretrained=False).weights_id)
    assert ids[0] == ids[1] != ids[2]


@pytest.mark.parametrize(
    ("name", "suggested"), [("resnet18x", "resnet18"), ("efficientnet_lite", "efficientnet_lite0")]
)
def test_unknown_backbone_suggests_close_names(name: str, suggested: str) -> None:
    with pytest.raises(ModelError) as err:
        create_backbone(name, pretrained=False)
    message = _one_line(err)
    assert f"unknown backbone '{name}'" in message
    assert "did you mean" in message and suggested in message


def test_hub_weights_without_network_fail_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    started = time.monotonic()
    with pytest.raises(ModelError) as err:
        create_backbone("resnet18", pretrained=True)
    assert time.monotonic() - started < 10
    message = _one_line(err)
    assert "resnet18" in message and 'weights = "' in message and LITE0 in message


def test_offline_flag_refuses_hub_without_probing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("SSLALL_OFFLINE", "1")
    monkeypatch.setattr("sslall.model._hub_weights._probe",
                        lambda host, port: pytest.fail("probed the network"))
    with pytest.raises(ModelError, match="offline mode is on"):
        create_backbone("resnet18", pretrained=True)


def test_hub_weights_come_from_the_local_hub_cache_when_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.manual_seed(5)
    full = timm.create_model("resnet18", pretrained=False)
    save_file(full.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("SSLALL_OFFLINE", "1")

    backbone = create_backbone("resnet18", pretrained=True)
    assert backbone.weights_id == "hub-resnet18.a1_in1k"
    assert torch.equal(backbone.module.state_dict()["conv1.weight"], full.state_dict()["conv1.weight"])


# --- weights files --------------------------------------------------------------------------


def test_weights_from_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    full = timm.create_model("resnet18", pretrained=False, num_classes=7)  # its `fc` is dropped
    path = tmp_path / "resnet18.safetensors"
    save_file(full.state_dict(), str(path))
    backbone = create_backbone("resnet18", pretrained=False, weights=str(path))
    assert backbone.weights_id == f"file-{sha256_file(path)[:12]}"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = full.eval().forward_head(full.forward_features(x), pre_logits=True)
        assert torch.equal(backbone.module.eval()(x), expected)


def test_weights_from_an_sslall_checkpoint_use_its_backbone_part(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = Classifier(create_backbone(BASELINE_CNN, pretrained=False).module, MLPHead(128, 3))
    save_checkpoint(tmp_path, model.state_dict(), META)
    for weights in (tmp_path, tmp_path / "model.safetensors"):
        backbone = create_backbone(BASELINE_CNN, pretrained=True, weights=str(weights))
        for key, value in backbone.module.state_dict().items():
            assert torch.equal(value, model.backbone.state_dict()[key])


def test_weights_for_another_architecture_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cnn.safetensors"
    save_file(create_backbone(BASELINE_CNN, pretrained=False).module.state_dict(), str(path))
    with pytest.raises(ModelError) as err:
        create_backbone("resnet18", pretrained=False, weights=str(path))
    assert "missing" in _one_line(err)


@pytest.mark.parametrize("filename", ["weights.pth", "weights.safetensors", "weights.bin"])
def test_pickled_weights_are_refused(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    torch.save(create_backbone(BASELINE_CNN, pretrained=False).module.state_dict(), path)
    with pytest.raises(ModelError) as err:
        create_backbone(BASELINE_CNN, pretrained=False, weights=str(path))
    message = _one_line(err)
    assert "refusing to unpickle" in message and "safetensors" in message


def test_missing_weights_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        create_backbone(BASELINE_CNN, pretrained=False, weights=str(tmp_path / "nope.safetensors"))


# --- head and classifier --------------------------------------------------------------------


def test_mlp_head_keeps_dropout_for_mc_sampling() -> None:
    torch.manual_seed(0)
    head = MLPHead(16, 3)
    linear = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(16, 64), (64, 64), (64, 3)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in head.modules()) == 2
    x = torch.randn(8, 16)
    head.eval()
    assert torch.equal(head(x), head(x))
    head.train()
    assert not torch.equal(head(x), head(x))


# --- checkpoints ----------------------------------------------------------------------------


def _classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier(create_backbone(BASELINE_CNN, pretrained=False).module, MLPHead(128, 3))
    model.train()
    model(torch.randn(4, 3, 32, 32))  # move the BN running stats away from their defaults
    return model.eval()


def test_checkpoint_round_trip_rebuilds_identical_logits(tmp_path: Path) -> None:
    model = _classifier()
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), META)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.json", "model.safetensors"]
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    for where in ("ckpt", "ckpt/model.json", "ckpt/model.safetensors"):
        state, meta = load_checkpoint(tmp_path / where)
        assert {k: meta[k] for k in META} == META
        assert set(state) == set(model.state_dict())
        rebuilt = build_classifier_from_checkpoint(state, meta)
        with torch.no_grad():
            assert torch.equal(rebuilt(x), expected)
            assert torch.equal(rebuilt.features(x), model.features(x))
        assert rebuilt.head.dropout == META["dropout"]


def test_checkpoint_missing_meta_keys_are_refused(tmp_path: Path) -> None:
    meta = {k: v for k, v in META.items() if k not in ("temperature", "round")}
    with pytest.raises(ModelError, match="temperature, round"):
        save_checkpoint(tmp_path, _classifier().state_dict(), meta)
    assert not list(tmp_path.iterdir())

    save_checkpoint(tmp_path, _classifier().state_dict(), META)
    stored = json.loads((tmp_path / "model.json").read_text())
    del stored["classes"]
    (tmp_path / "model.json").write_text(json.dumps(stored))
    with pytest.raises(ModelError, match="missing classes"):
        load_checkpoint(tmp_path)


def test_checkpoint_refuses_pickles_and_mismatched_pairs(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _classifier(0).state_dict(), META)
    meta_text = (tmp_path / "model.json").read_text()
    save_checkpoint(tmp_path / "other", _classifier(1).state_dict(), META)

    (tmp_path / "other" / "model.json").write_text(meta_text)  # weights from another save
    with pytest.raises(ModelError, match="sha256 differs"):
        load_checkpoint(tmp_path / "other")

    torch.save(_classifier().state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(ModelError, match="refusing to unpickle"):
        load_checkpoint(tmp_path)

    (tmp_path / "model.json").unlink()
    with pytest.raises(NotFoundError):
        load_checkpoint(tmp_path)


# --- multi-scale features -------------------------------------------------------------------


def test_multiscale_features_append_pooled_stages_and_survive_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = create_backbone("resnet18", pretrained=False)
    multi = create_backbone("resnet18", pretrained=False, scales=2)
    assert multi.scales == 2
    assert multi.num_features == plain.num_features + 256 + 512  # layer3 + layer4 pooled
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = multi.features(x)
        final = multi.module(x)
        layer3 = multi.module.layer3(multi.module.layer2(multi.module.layer1(
            multi.module.maxpool(multi.module.act1(multi.module.bn1(multi.module.conv1(x)))))))
    assert feats.shape == (2, multi.num_features)
    assert torch.allclose(feats[:, -plain.num_features:], final, atol=1e-5)  # final features last
    assert torch.allclose(feats[:, :256], layer3.mean(dim=(2, 3)), atol=1e-5)

    model = Classifier(multi.module, MLPHead(multi.num_features, 3), multi.scales).eval()
    meta = {**META, "backbone": "resnet18", "feature_scales": 2}
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), meta)
    rebuilt = build_classifier_from_checkpoint(*load_checkpoint(tmp_path / "ckpt"))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        assert rebuilt.features(x).shape == (2, multi.num_features)


def test_multiscale_is_ignored_by_a_backbone_without_stages() -> None:
    backbone = create_backbone(BASELINE_CNN, pretrained=False, scales=2)
    assert (backbone.scales, backbone.num_features) == (0, 128)
    assert create_backbone("resnet18", pretrained=False, scales=9).scales == 5  # all it has


def test_ensemble_head_averages_probabilities_and_survives_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    members = [MLPHead(128, 3, hidden=(8,)) for _ in range(3)]
    head = EnsembleHead(members).eval()
    x = torch.randn(5, 128)
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(dim=1) for m in members]).mean(dim=0)
        assert torch.allclose(head(x).softmax(dim=1), mean, atol=1e-6)
    model = Classifier(create_backbone(BASELINE_CNN, pretrained=False).module, head).eval()
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), META)
    rebuilt = build_classifier_from_checkpoint(*load_checkpoint(tmp_path / "ckpt"))
    assert isinstance(rebuilt.head, EnsembleHead) and len(rebuilt.head.members) == 3
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))
