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


def test_review_reason_states_the_score_and_rank() -> None:
    snapshot = Snapshot(CLASSES, ROWS)
    cfg = with_overrides(config(), route={"budget": 2})
    decision = decide_pseudo_labels(cfg, snapshot, PROBS, EMB)
    routing = decide_routing(cfg, snapshot, PROBS, Scores(PROBS, EMB), decision,
                             rng=np.random.default_rng(0))
    # candidates: row 3 (margin 0.52 - 0.48) and row 4 (its pseudo label fell below 0.9)
    assert [(m.sample_id, m.reason) for m in routing.moves] == [
        (ROWS[3].id, "margin 0.04, rank 1 of 2 candidates"),
        (ROWS[4].id, "margin 0.2, rank 2 of 2 candidates")]


# Six unlabeled cells: rows 2-4 doubtful, rows 5-7 confident (p >= 0.9) but held back by the
# kNN filter (their embeddings sit on the human "B" while the model says A).
SURE_ROWS = [row(0, "labeled", "A", "import"), row(1, "labeled", "B", "import"),
             *(row(i, "unlabeled") for i in range(2, 8))]
SURE_PROBS = np.array([[0.9, 0.1], [0.1, 0.9], [0.55, 0.45], [0.6, 0.4], [0.7, 0.3],
                       [0.95, 0.05], [0.97, 0.03], [0.99, 0.01]])
SURE_EMB = np.array([[1, 0], [0, 1], [1, 0.1], [1, 0.2], [1, 0.3], [0.1, 1], [0.2, 1], [0.3, 1]],
                    dtype=np.float32)


def route_sure(**route):
    cfg = with_overrides(config(knn_k=1, knn_agreement=1.0), route={"strategy": "random", **route})
    snapshot = Snapshot(CLASSES, SURE_ROWS)
    decision = decide_pseudo_labels(cfg, snapshot, SURE_PROBS, SURE_EMB)
    return decision, [decide_routing(cfg, snapshot, SURE_PROBS, Scores(SURE_PROBS, SURE_EMB),
                                     decision, rng=np.random.default_rng(seed))
                      for seed in range(20)]


def test_confident_cells_are_never_sent_while_doubtful_ones_remain() -> None:
    decision, routings = route_sure(budget=3)
    assert not decision.selected.any()                           # kNN held all three back
    assert decision.confident.tolist() == [False] * 5 + [True] * 3
    for routing in routings:  # random scores: whatever the draw, the doubtful three go
        assert sorted(routing.review_rows.tolist()) == [2, 3, 4]
    _, routings = route_sure(budget=3, diversity="kmeans")
    assert all(sorted(r.review_rows.tolist()) == [2, 3, 4] for r in routings)


def test_confident_cells_fill_the_batch_only_after_every_doubtful_one() -> None:
    _, routings = route_sure(budget=4, strategy="least-confidence")
    routing = routings[0]
    assert routing.review_rows.tolist() == [2, 3, 4, 5]  # 1 - max p: .45 .40 .30, then .05
    assert routing.moves[3].reason == (
        "least-confidence 0.05, rank 1 of 3 confident candidates (p=0.950 passes its class "
        "threshold 0.9; no doubtful candidate left)")
    assert routing.moves[0].reason == "least-confidence 0.45, rank 1 of 3 candidates"


def test_min_uncertainty_floor_keeps_sure_cells_out() -> None:
    # 1 - max p: rows 2-4 .45 .40 .30, rows 5-7 .05 .03 .01; the floor .35 leaves rows 2 and 3
    _, routings = route_sure(budget=10, strategy="least-confidence", min_uncertainty=0.35)
    assert routings[0].review_rows.tolist() == [2, 3]
    _, routings = route_sure(budget=10, strategy="least-confidence", min_uncertainty=0.3)
    assert routings[0].review_rows.tolist() == [2, 3, 4]  # .30 is not below the floor


def test_max_review_caps_the_outstanding_queue() -> None:
    queued = [*SURE_ROWS, row(8, "review"), row(9, "review")]  # two sent earlier, unanswered
    probs = np.vstack([SURE_PROBS, [[0.5, 0.5], [0.5, 0.5]]])
    emb = np.vstack([SURE_EMB, [[1, 1], [1, 1]]]).astype(np.float32)
    snapshot = Snapshot(CLASSES, queued)

    def routed(budget: int, max_review: int) -> list[int]:
        cfg = with_overrides(config(knn_k=1, knn_agreement=1.0),
                             route={"strategy": "least-confidence", "budget": budget,
                                    "max_review": max_review})
        decision = decide_pseudo_labels(cfg, snapshot, probs, emb)
        return decide_routing(cfg, snapshot, probs, Scores(probs, emb), decision,
                              rng=np.random.default_rng(0)).review_rows.tolist()

    assert routed(budget=3, max_review=4) == [2, 3]     # 4 - 2 outstanding = 2 < budget 3
    assert routed(budget=1, max_review=4) == [2]        # the budget binds first
    assert routed(budget=3, max_review=2) == []         # queue full: nothing, never negative
    assert routed(budget=3, max_review=1) == []         # over the cap (lowered since): nothing
    assert routed(budget=3, max_review=200) == [2, 3, 4]


def test_propagation_policy_thresholds_the_graph_and_weighs_its_certainty() -> None:
    rng = np.random.default_rng(0)
    a, b = np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0])
    rows = ([row(i, "labeled", "A", "import") for i in range(3)]
            + [row(3 + i, "labeled", "B", "import") for i in range(3)]
            + [row(6, "unlabeled"), row(7, "unlabeled"), row(8, "unlabeled"),
               row(9, "pseudo", "A", "pseudo", 0.97), row(10, "holdout", "A", "import")])
    hidden = np.array([a, a, a, b, b, b,
                       a,              # 6: in A's cluster, classifier A -> pseudo A
                       a,              # 7: in A's cluster, classifier B -> classifier disagrees
                       (a + b) / 2,    # 8: between the clusters -> propagated ~0.5, not enough
                       b,              # 9: pseudo A, now in B's cluster with classifier B
                       a]) + 0.01 * rng.random((11, 4))
    probs = np.array([[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 3
                     + [[0.96, 0.04], [0.05, 0.95], [0.97, 0.03], [0.04, 0.96], [0.9, 0.1]])
    cfg = config(policy="propagation", propagation_k=3)
    snapshot = Snapshot(CLASSES, rows)
    decision = decide_pseudo_labels(cfg, snapshot, probs, np.eye(11, dtype=np.float32), hidden)
    moves = {int(m.sample_id, 16): m for m in decision.moves}
    assert decision.selected.tolist() == [False] * 6 + [True, False, False, True, False]
    assert (moves[6].label, moves[9].label) == ("A", "B")
    assert moves[6].reason.startswith("propagated ") and "p=0.960" in moves[6].reason
    assert set(moves) == {6, 9}
    assert set(decision.weights) == {rows[6].id, rows[9].id}
    assert all(0.9 < w <= 1.0 for w in decision.weights.values())
    routing = decide_routing(cfg, snapshot, probs, Scores(np.log(probs), hidden), decision,
                             rng=np.random.default_rng(0))
    assert routing.weights == decision.weights  # no hard human labels at 0.9 >= 0.6


def test_propagation_policy_without_hidden_features_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="hidden features"):
        decide_pseudo_labels(config(policy="propagation"), Snapshot(CLASSES, ROWS), PROBS, EMB)
