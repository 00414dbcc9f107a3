"""Feature cache, streamed feature extraction, prediction and MC dropout on tiny images."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslall.data._datasets import eval_transform, transform_key
from sslall.data._images import load_rgb
from sslall.errors import ModelError
from sslall.model import _features as score
from sslall.model._backbones import BASELINE_CNN, Backbone, Classifier, create_backbone
from sslall.model._feature_cache import FeatureCache
from sslall.model._features import extract_features, mc_dropout_probs, predict
from sslall.model._heads import MLPHead

KEY = ("arch/d8", "random-1234", "eval-v1/size=32")


def _ids(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def _images(root: Path, n: int, start: int = 0) -> list[tuple[str, str]]:
    """(id, path) pairs of small random 32-px PNGs; the id stands in for the file's sha256."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        path = root / f"cell_{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        out.append((f"{i:064x}", str(path)))
    return out


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return create_backbone(BASELINE_CNN, pretrained=False)


def _count_rows(module: torch.nn.Module) -> list[int]:
    """A list that grows by each forward call's batch size."""
    seen: list[int] = []
    module.register_forward_hook(lambda _m, args, _out: seen.append(int(args[0].shape[0])))
    return seen


def test_cache_put_get_and_reopen(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 8)).astype(np.float32)
    ids = _ids(6)
    fs = FeatureCache(tmp_path).open(*KEY)
    assert len(fs) == 0 and fs.dim is None
    assert fs.put(ids[:4], feats[:4]) == 4
    assert fs.put(ids[2:], feats[2:]) == 2  # only the two new ones are written
    assert fs.put(ids[:2], feats[:2] + 1) == 0  # a cached feature is never replaced
    got, missing = fs.get([ids[5], "nope", ids[0]])
    assert missing == ["nope"]
    np.testing.assert_array_equal(got, feats[[5, 0]].astype(np.float16).astype(np.float32))
    assert got.dtype == np.float32

    again = FeatureCache(tmp_path).open(*KEY)  # a new process: the index is rebuilt from disk
    assert len(again) == 6 and again.dim == 8 and ids[3] in again
    np.testing.assert_array_equal(again.get(ids)[0], fs.get(ids)[0])
    other = FeatureCache(tmp_path).open("arch/d8", "random-9999", KEY[2])  # another key: empty
    assert len(other) == 0 and other.directory != fs.directory
    assert sorted(p.name for p in fs.directory.iterdir() if p.suffix not in (".npy", ".ids")) == ["meta.json"]


def test_cache_keeps_float32_when_float16_overflows(tmp_path):
    big = np.array([[1e6, -2.5]], dtype=np.float32)
    fs = FeatureCache(tmp_path).open(*KEY)
    fs.put(["a"], big)
    np.testing.assert_array_equal(fs.get(["a"])[0], big)
    exact = FeatureCache(tmp_path / "f32", dtype="float32").open(*KEY)
    small = np.array([[0.1, 0.2]], dtype=np.float32)
    exact.put(["b"], small)
    np.testing.assert_array_equal(exact.get(["b"])[0], small)


def test_cache_rejects_bad_rows(tmp_path):
    fs = FeatureCache(tmp_path).open(*KEY)
    with pytest.raises(ValueError, match="NaN"):
        fs.put(["a"], np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="line break"):
        fs.put(["a\nb"], np.ones((1, 2)))
    fs.put(["a"], np.ones((1, 2)))
    with pytest.raises(ValueError, match="width"):
        fs.put(["b"], np.ones((1, 3)))


def test_cache_ignores_what_a_killed_writer_left(tmp_path):
    fs = FeatureCache(tmp_path).open(*KEY)
    fs.put(_ids(3), np.ones((3, 4), np.float32))
    d = fs.directory
    (d / ".00000000000000000001-1-ab.npy.1-cd.tmp").write_bytes(b"\x93NUMPY partial")  # mid-write
    np.save(d / "00000000000000000002-1-ef.npy", np.zeros((2, 4), np.float16))  # killed before .ids
    (d / "00000000000000000003-1-gh.ids").write_text("x\ny\n")  # .ids whose features are gone
    np.save(d / "00000000000000000004-1-ij.npy", np.zeros((5, 4), np.float16))  # rows != ids
    (d / "00000000000000000004-1-ij.ids").write_text("p\nq\n")
    reopened = FeatureCache(tmp_path).open(*KEY)
    assert len(reopened) == 3
    assert reopened.get(["x", "p"])[1] == ["x", "p"]
    assert reopened.put(["x"], np.full((1, 4), 2.0)) == 1  # still writable
    old = os.path.getmtime(d / ".00000000000000000001-1-ab.npy.1-cd.tmp") - 2 * 3600
    for name in (".00000000000000000001-1-ab.npy.1-cd.tmp", "00000000000000000002-1-ef.npy"):
        os.utime(d / name, (old, old))
    FeatureCache(tmp_path).open(*KEY)  # stale leftovers are swept on open
    assert not (d / ".00000000000000000001-1-ab.npy.1-cd.tmp").exists()
    assert not (d / "00000000000000000002-1-ef.npy").exists()


def test_refresh_sees_another_writer(tmp_path):
    reader = FeatureCache(tmp_path).open(*KEY)
    writer = FeatureCache(tmp_path).open(*KEY)
    writer.put(["a", "b"], np.ones((2, 3)))
    assert "a" not in reader
    reader.refresh()
    assert len(reader) == 2


def test_extract_features_computes_each_feature_once(tmp_path, backbone):
    samples = _images(tmp_path / "img", 7)
    seen = _count_rows(backbone.module)
    calls = []
    first = extract_features(backbone, samples + samples[:2], image_size=32,
                             cache=FeatureCache(tmp_path / "cache"), batch_size=3,
                             progress=lambda step, d, t: calls.append((d, t)) if step == "features"
                             else pytest.fail(step))
    assert sum(seen) == 7  # duplicates are computed once
    assert first.shape == (9, backbone.num_features) and first.dtype == np.float32
    np.testing.assert_array_equal(first[7:], first[:2])
    assert calls[0] == (0, 7) and calls[-1] == (7, 7)

    seen.clear()
    second = extract_features(backbone, samples, image_size=32, cache=FeatureCache(tmp_path / "cache"),
                              batch_size=3)
    assert seen == []  # a later round never recomputes a feature it has
    np.testing.assert_array_equal(second, first[:7])

    more = _images(tmp_path / "img", 2, start=7)
    third = extract_features(backbone, more + samples[:1], image_size=32,
                             cache=FeatureCache(tmp_path / "cache"), batch_size=3)
    assert sum(seen) == 2
    np.testing.assert_array_equal(third[2], first[0])

    direct = backbone.module.eval()(eval_transform(32, backbone.mean, backbone.std)(
        load_rgb(samples[0][1], max_pixels=10**6))[None])
    np.testing.assert_allclose(first[0], direct[0].detach().numpy(), rtol=2e-3, atol=2e-3)


def test_killed_extraction_keeps_what_was_flushed(tmp_path, backbone):
    samples = _images(tmp_path / "img", 8)
    cache_dir = tmp_path / "cache"

    def die(step, done, total):
        if done >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(backbone, samples, image_size=32, cache=FeatureCache(cache_dir), batch_size=2,
                         flush_rows=4, progress=die)
    seen = _count_rows(backbone.module)
    extract_features(backbone, samples, image_size=32, cache=FeatureCache(cache_dir), batch_size=2)
    assert sum(seen) == 4  # the first 4 were flushed before the kill


def test_extract_features_to_memmap(tmp_path, backbone, monkeypatch):
    monkeypatch.setattr(score, "MEMMAP_BYTES", 0)
    out = extract_features(backbone, _images(tmp_path / "img", 3), image_size=32,
                           cache=FeatureCache(tmp_path / "cache"), work_dir=tmp_path / "work")
    assert isinstance(out, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "work" / "features.npy"), out)


def test_a_custom_forward_is_cached_under_its_own_kind(tmp_path, backbone):
    images = _images(tmp_path / "img", 3)
    cache = FeatureCache(tmp_path / "cache")
    pooled = extract_features(backbone, images, image_size=32, cache=cache)
    doubled = extract_features(backbone, images, image_size=32, cache=cache, kind="doubled",
                               forward=lambda x: 2 * backbone.features(x))
    np.testing.assert_allclose(doubled, 2 * pooled, rtol=1e-2, atol=1e-3)  # float16 in the cache
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 2
    with pytest.raises(ValueError, match="kind"):
        extract_features(backbone, images, image_size=32, cache=cache, forward=backbone.features)


def test_extract_features_rejects_non_finite_features(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 4), float("nan"))

    bb = Backbone(Broken(), 4, (0.5,) * 3, (0.5,) * 3, 32, "broken")
    with pytest.raises(ModelError, match="non-finite"):
        extract_features(bb, _images(tmp_path / "img", 2), image_size=32, cache=FeatureCache(tmp_path / "c"))
    key = transform_key(32, bb.mean, bb.std)
    assert len(FeatureCache(tmp_path / "c").open("Broken/d4", "broken", key)) == 0


def test_predict_logits_embeddings_and_mc(tmp_path, backbone):
    samples = _images(tmp_path / "img", 5)
    torch.manual_seed(0)
    model = Classifier(backbone.module, MLPHead(backbone.num_features, 3, hidden=(16,), dropout=0.5))
    model.train()
    scores = predict(model, samples, image_size=32, mean=backbone.mean, std=backbone.std, batch_size=2,
                     mc_samples=4)
    assert model.training  # the caller's mode is restored
    assert scores.ids == [s for s, _ in samples]
    assert scores.logits.shape == (5, 3) and scores.embeddings.shape == (5, backbone.num_features)
    feats = extract_features(backbone, samples, image_size=32, cache=FeatureCache(tmp_path / "c"),
                             backbone_name="test")
    np.testing.assert_allclose(scores.embeddings, feats, rtol=2e-3, atol=2e-3)
    with torch.no_grad():
        expected = model.head.eval()(torch.as_tensor(scores.embeddings)).numpy()
    np.testing.assert_allclose(scores.logits, expected, rtol=1e-5, atol=1e-5)
    assert scores.mc_probs.shape == (4, 5, 3)


def test_predict_with_the_turned_view_averages_both_views_and_keeps_upright_embeddings(
        tmp_path, backbone):
    samples = _images(tmp_path / "img", 3)
    torch.manual_seed(0)
    model = Classifier(backbone.module, MLPHead(backbone.num_features, 3, hidden=(16,)),
                       turned_view=True).eval()
    scores = predict(model, samples, image_size=32, mean=backbone.mean, std=backbone.std)
    to_tensor = eval_transform(32, backbone.mean, backbone.std)
    x = torch.stack([to_tensor(load_rgb(p, max_pixels=10**6)) for _, p in samples])
    with torch.inference_mode():
        upright = model.features(x)
        both = model(x).numpy()
    np.testing.assert_allclose(scores.logits, both, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores.embeddings, upright.numpy(), rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        assert not np.allclose(both, model.head(upright).numpy(), atol=1e-4)


def test_mc_dropout_probs():
    torch.manual_seed(0)
    head = MLPHead(8, 3, hidden=(32,), dropout=0.5).eval()
    feats = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    state = torch.get_rng_state()
    a = mc_dropout_probs(head, feats, T=5, seed=1, batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert not head.training and not any(m.training for m in head.modules())
    assert a.shape == (5, 10, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
    assert np.ptp(a, axis=0).max() > 1e-3  # dropout masks differ across passes
    np.testing.assert_array_equal(a, mc_dropout_probs(head, feats, T=5, seed=1, batch_size=4))
    assert not np.array_equal(a, mc_dropout_probs(head, feats, T=5, seed=2, batch_size=4))
    flat = mc_dropout_probs(head, feats, T=2, temperature=100.0, seed=1)
    assert flat.max() < a.max()
    no_drop = MLPHead(8, 3, hidden=(32,), dropout=0.0)
    b = mc_dropout_probs(no_drop, feats, T=3)
    np.testing.assert_allclose(b[0], b[2])
