"""Which rows a round trains on and what each weighs (`sslall.model._learner.training_rows`)."""

import dataclasses

import numpy as np
import pytest

from sslall.config import Config, with_overrides
from sslall.model._heads import EnsembleHead, MLPHead, head_hidden
from sslall.model._learner import training_rows
from sslall.store._records import Sample
from sslall.store._snapshot import Snapshot

CLASSES = ("A", "B")


def row(i: int, pool: str, label: str | None, confidence: float | None = None,
        weight: float = 1.0) -> Sample:
    source = {"labeled": "import", "holdout": "import", "pseudo": "pseudo"}.get(pool)
    return Sample(f"{i:064x}", f"/x/{i}.png", pool, label, source, confidence, None, weight, None,
                  0, None, "t", "t")


ROWS = [row(0, "labeled", "A"), row(1, "labeled", "B", weight=2.0),
        row(2, "pseudo", "A", 0.9), row(3, "pseudo", "B", 0.8, weight=0.5),
        row(4, "unlabeled", None), row(5, "holdout", "A"), row(6, "review", None)]


def test_human_rows_weigh_their_weight_and_pseudo_rows_confidence_times_weight():
    rows, y, w = training_rows(Config(classes=CLASSES), Snapshot(CLASSES, ROWS))
    assert rows.tolist() == [0, 1, 2, 3]
    assert y.tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(w, [1.0, 2.0, 0.9, 0.8 * 0.5])


def test_a_constant_pseudo_weight_is_scaled_by_the_rounds_certainty_too():
    cfg = with_overrides(Config(classes=CLASSES), train={"pseudo_weight": 0.5})
    _, _, w = training_rows(cfg, Snapshot(CLASSES, ROWS))
    np.testing.assert_allclose(w, [1.0, 2.0, 0.5, 0.25])


@pytest.mark.parametrize("members", [1, 3])
def test_head_hidden_is_the_last_hidden_layer_of_each_member(members):
    import torch

    torch.manual_seed(0)
    heads = [MLPHead(6, 2, hidden=(5, 4), dropout=0.5) for _ in range(members)]
    head = heads[0] if members == 1 else EnsembleHead(heads)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    got = head_hidden(head, x, torch.device("cpu"), batch=3)
    want = np.concatenate([h.eval().layers[:-1](torch.as_tensor(x)).detach().numpy() for h in heads], 1)
    assert got.shape == (10, 4 * members)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # eval mode: dropout off, batches joined
    assert (got >= 0).all()  # after the ReLU


def test_rows_with_a_weight_of_zero_still_appear_for_the_trainer_to_drop():
    rows = [dataclasses.replace(ROWS[2], weight=0.0)]
    _, _, w = training_rows(Config(classes=CLASSES), Snapshot(CLASSES, rows))
    assert w.tolist() == [0.0]
