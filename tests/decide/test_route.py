"""Pseudo-label decisions and routing on hand-made probabilities with known right answers."""

import numpy as np

from sslall.config import Config, with_overrides
from sslall.decide._route import decide_pseudo_labels, decide_routing
from sslall.decide._scores import Scores
from sslall.store._records import Sample
from sslall.store._snapshot import Snapshot

CLASSES = ("A", "B")


def row(i: int, pool: str, label: str | None = None, source: str | None = None,
        confidence: float | None = None) -> Sample:
    return Sample(f"{i:064x}", f"/x/{i}.png", pool, label, source, confidence, None, 1.0, None, 0,
                  None, "t", "t")


def config(**pseudo) -> Config:
    return with_overrides(Config(classes=CLASSES),
                          pseudo={"threshold": 0.9, "class_cap": False, "knn_agreement": 0.0,
                                  **pseudo},
                          route={"budget": 1, "diversity": "none", "hard_threshold": 0.6})


ROWS = [
    row(0, "labeled", "A", "import"),
    row(1, "labeled", "B", "import"),
    row(2, "unlabeled"),                          # confident A -> pseudo A
    row(3, "unlabeled"),                          # unsure -> stays, or review
    row(4, "pseudo", "B", "pseudo", 0.95),        # now unsure -> back to unlabeled
    row(5, "pseudo", "A", "pseudo", 0.97),        # still confident A -> no move
    row(6, "pseudo", "A", "pseudo", 0.93),        # now confident B -> relabelled
    row(7, "holdout", "B", "import"),
]
PROBS = np.array([[0.55, 0.45], [0.1, 0.9], [0.96, 0.04], [0.52, 0.48], [0.6, 0.4],
                  [0.97, 0.03], [0.05, 0.95], [0.2, 0.8]])
EMB = np.eye(8, dtype=np.float32)


def test_pseudo_labels_and_self_correction() -> None:
    snapshot = Snapshot(CLASSES, ROWS)
    decision = decide_pseudo_labels(config(), snapshot, PROBS, EMB)
    moves = {m.sample_id: m for m in decision.moves}
    ids = [r.id for r in ROWS]
    assert set(moves) == {ids[2], ids[4], ids[6]}
    assert (moves[ids[2]].to_pool, moves[ids[2]].label) == ("pseudo", "A")
    assert moves[ids[4]].to_pool == "unlabeled" and "self-correction" in moves[ids[4]].reason
    assert (moves[ids[6]].to_pool, moves[ids[6]].label) == ("pseudo", "B")
    assert decision.selected.tolist() == [False, False, True, False, False, True, True, False]
    assert decision.per_class == {"A": 2, "B": 1}


def test_human_labels_are_never_candidates() -> None:
    probs = PROBS.copy()
    probs[0] = [0.01, 0.99]  # the model is sure the human was wrong
    decision = decide_pseudo_labels(config(), Snapshot(CLASSES, ROWS), probs, EMB)
    assert ROWS[0].id not in {m.sample_id for m in decision.moves}


def test_knn_disagreement_blocks_a_confident_pseudo_label() -> None:
    emb = np.zeros((8, 2), dtype=np.float32)
    emb[:, 0] = 1.0
    emb[1] = [0.0, 1.0]
    emb[2] = [0.1, 1.0]  # row 2 sits next to the human "B" although the model says A
    decision = decide_pseudo_labels(config(knn_k=1, knn_agreement=1.0), Snapshot(CLASSES, ROWS),
                                    PROBS, emb)
    assert ROWS[2].id not in {m.sample_id for m in decision.moves}


def test_routing_upweights_unsure_human_labels_and_sends_the_least_certain_to_review() -> None:
    snapshot = Snapshot(CLASSES, ROWS)
    cfg = config()
    decision = decide_pseudo_labels(cfg, snapshot, PROBS, EMB)
    routing = decide_routing(cfg, snapshot, PROBS, Scores(PROBS, EMB), decision,
                             rng=np.random.default_rng(0))
    assert routing.weights == {ROWS[0].id: cfg.train.hard_weight}  # p(A) = 0.55 < 0.6
    assert [m.sample_id for m in routing.moves] == [ROWS[3].id]    # margin 0.04 is the smallest
    assert routing.moves[0].to_pool == "review" and routing.moves[0].prediction == "A"
    labelstudio = with_overrides(cfg, route={"route": "labelstudio"})
    assert decide_routing(labelstudio, snapshot, PROBS, Scores(PROBS, EMB), decision,
                          rng=np.random.default_rng(0)).weights == {}
