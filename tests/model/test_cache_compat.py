"""Workspaces written before the layer reorganisation keep working: no cache key or stored name
depends on a module's path, so a round finds the features an older version cached.

The GOLDEN_* values were produced by the pre-reorganisation code at commit f0d6962 (flat modules:
sslall/score.py, sslall/data.py, sslall/models.py) on the same inputs. A round of that code on a
workspace, followed by a round of the reorganised code on the same workspace, wrote no new
feature shard. A changed value here means existing caches, checkpoints or workspaces no longer
match: bump the format deliberately, never by moving a module.
"""

import json
import re
import sqlite3
from pathlib import Path

import torch
from conftest import invoke
from safetensors import safe_open
from test_rounds import copy_ws, template_ws  # noqa: F401  (module-scoped fixture)

from sslall.config import PreprocessConfig
from sslall.data._datasets import transform_key
from sslall.model._backbones import BaselineCNN
from sslall.model._checkpoints import write_safetensors
from sslall.model._features import FeatureCache
from sslall.model._offline_weights import LITE0, OFFLINE_WEIGHTS

GOLDEN_TRANSFORM = ("eval-v1/rgb-v1/shorter-side+centre-crop/size=32/mean=0.5,0.5,0.5"
                    "/std=0.25,0.25,0.25")
GOLDEN_PREPROCESSED_TRANSFORM = (
    "eval-v1/rgb-v1/shorter-side+centre-crop/size=64/mean=0.485,0.456,0.406"
    "/std=0.229,0.224,0.225/preprocess=stain=macenko+clahe=2.0x8+mask=s0.2,h0.0-360.0,white")
# the cache folder of ("BaselineCNN/d128", "file-0123456789ab", GOLDEN_TRANSFORM)
GOLDEN_DIGEST = "c576c7806f53e882"
GOLDEN_CACHE_META = {"format": 1, "key": {"backbone": "BaselineCNN/d128", "transform":
                     GOLDEN_TRANSFORM, "weights_id": "file-0123456789ab"}}
# what a round of baseline-cnn at 32 px stores (its mean and std are 0.5)
GOLDEN_ROUND_KEY = {"backbone": "BaselineCNN/d128", "transform": "eval-v1/rgb-v1/shorter-side+"
                    "centre-crop/size=32/mean=0.5,0.5,0.5/std=0.5,0.5,0.5"}
# + "turned_view" (2026-12-02, added; a checkpoint without it loads as false)
GOLDEN_MODEL_JSON = ["backbone", "classes", "dropout", "feature_scales", "format_version",
                     "head_hidden", "image_size", "mean", "metrics", "mode", "preprocess", "round",
                     "std", "temperature", "turned_view", "weights_id", "weights_sha256"]
GOLDEN_BACKBONE_STATE = [f"backbone.features.{i}.weight" for i in (0, 4, 8, 12)] + [
    f"backbone.features.{i}.{p}" for i in (1, 5, 9, 13)
    for p in ("bias", "num_batches_tracked", "running_mean", "running_var", "weight")]
# the offline lite0 weights' id (in every feature-cache key) and converted file, as before the
# offline-weights code left _checkpoints.py (commit 18a91c1)
GOLDEN_LITE0_WEIGHTS_ID = "lite0-offline-5793442"
GOLDEN_LITE0_CACHE_NAME = "tf_efficientnet_lite0-5793442-m1.safetensors"
GOLDEN_HEAD_STATE = [f"head.members.{m}.layers.{layer}.{p}" for m in range(5)
                     for layer in (0, 3, 6) for p in ("bias", "weight")]

# "sslall.toml" and "sslall.log" are file names; anything else dotted is a module path
MODULE_PATH = re.compile(r"sslall\.(?!toml\b|log\b)[A-Za-z_]")


def test_transform_keys_and_cache_folders_are_the_pre_reorganisation_ones(tmp_path: Path) -> None:
    assert transform_key(32, (0.5,) * 3, (0.25,) * 3) == GOLDEN_TRANSFORM
    preprocess = PreprocessConfig(stain_norm="macenko", clahe=True, mask=True)
    assert transform_key(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), preprocess) == (
        GOLDEN_PREPROCESSED_TRANSFORM)
    FeatureCache(tmp_path).open("BaselineCNN/d128", "file-0123456789ab", GOLDEN_TRANSFORM)
    assert [p.name for p in tmp_path.iterdir()] == [GOLDEN_DIGEST]
    meta = json.loads((tmp_path / GOLDEN_DIGEST / "meta.json").read_text())
    assert {k: v for k, v in meta.items() if k != "created"} == GOLDEN_CACHE_META


def test_offline_lite0_weights_keep_their_id_and_cache_name() -> None:
    spec = OFFLINE_WEIGHTS[LITE0]
    assert (spec.weights_id, spec.cache_name) == (GOLDEN_LITE0_WEIGHTS_ID, GOLDEN_LITE0_CACHE_NAME)


def test_a_round_stores_what_the_pre_reorganisation_code_stored_and_reuses_it(
        template_ws: Path, tmp_path: Path, runner) -> None:  # noqa: F811
    ws = copy_ws(template_ws, tmp_path)
    # fixed weights: random ones are drawn anew each round, and so is their feature key
    torch.manual_seed(0)
    sha = write_safetensors(ws / "start.safetensors", BaselineCNN().state_dict())
    config = ws / "sslall.toml"
    weights = f'pretrained = false\nweights = "{ws / "start.safetensors"}"'
    config.write_text(config.read_text().replace("pretrained = false", weights))
    assert invoke(runner, "round", "-w", ws, "--json").exit_code == 0

    features = ws / "cache" / "features"
    (folder,) = features.iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    assert sorted(meta) == ["created", "format", "key"] and meta["format"] == 1
    assert meta["key"] == {**GOLDEN_ROUND_KEY, "weights_id": f"file-{sha[:12]}"}
    FeatureCache(tmp_path / "again").open(**meta["key"])
    assert [p.name for p in (tmp_path / "again").iterdir()] == [folder.name]

    run = ws / "runs" / "round-0001"
    assert sorted(json.loads((run / "model.json").read_text())) == GOLDEN_MODEL_JSON
    with safe_open(str(run / "model.safetensors"), "pt") as weights_file:
        assert sorted(weights_file.keys()) == sorted(GOLDEN_BACKBONE_STATE + GOLDEN_HEAD_STATE)
        assert weights_file.metadata() == {"format": "sslall-checkpoint"}
    for text in _stored_text(ws):
        assert not MODULE_PATH.search(text), MODULE_PATH.search(text)

    # the next round finds every feature under the same key (last-stage mode: test_last_stage.py)
    shards = sorted(features.glob("*/*.ids"))
    assert invoke(runner, "round", "-w", ws, "--json").exit_code == 0
    assert sorted(features.glob("*/*.ids")) == shards and [*features.iterdir()] == [folder]


def _stored_text(ws: Path) -> list[str]:
    """Every text the workspace keeps (JSON, CSV, TOML, the pool store's rows and schema); the
    log, whose lines name the logger that wrote them, is no key and is left out."""
    texts = [p.read_text() for p in ws.rglob("*") if p.suffix in (".json", ".csv", ".toml")]
    with sqlite3.connect(ws / "pools" / "pools.db") as conn:
        texts.extend(conn.iterdump())
    return texts
