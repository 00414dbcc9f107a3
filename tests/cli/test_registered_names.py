"""A strategy and a policy registered from user code are valid `--strategy` / `--policy` values
of the in-process CLI, drive the round, and an unknown name is one line listing the valid ones."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke
from test_rounds import build_workspace

from sslall.decide._acquisition import STRATEGIES, register_strategy
from sslall.decide._policies import POLICIES, register_policy
from sslall.store._pools import PoolStore


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    return build_workspace(tmp_path_factory.mktemp("registered"), CliRunner())


@pytest.fixture
def user_names():
    """`last-rows` (the highest row indices first) and `fixed-copy` (a logged fixed threshold),
    registered the way user code would, and removed again after the test."""
    calls: list[float] = []

    @register_strategy("last-rows")
    def last_rows(ctx) -> np.ndarray:
        return np.arange(len(ctx.probs), dtype=np.float64)

    @register_policy("fixed-copy")
    def fixed_copy(probs, *, threshold, labeled_counts) -> np.ndarray:
        calls.append(threshold)
        return np.full(probs.shape[1], threshold)

    yield calls
    del STRATEGIES["last-rows"], POLICIES["fixed-copy"]


def test_registered_strategy_and_policy_run_a_round(ws: Path, runner, user_names) -> None:
    result = invoke(runner, "round", "-w", ws, "--strategy", "last-rows", "--policy", "fixed-copy",
                    "--threshold", "0.8", "--budget", "3", "--json")
    assert result.exit_code == 0, result.stderr
    assert user_names == [0.8]
    with PoolStore(ws / "pools" / "pools.db") as store:
        reasons = [s.reason for s in store.samples() if s.pool == "review"]
    # the strategy's own score (the row index among the candidates) and its rank: k-means
    # diversity picks among the top 9 (route.candidate_factor 3 x budget 3)
    assert len(reasons) == 3
    assert all(re.fullmatch(r"last-rows \d+, rank [1-9] of \d+ (confident )?candidates.*", r)
               for r in reasons), reasons


def test_unknown_names_are_one_line_with_the_registered_ones(ws: Path, runner, user_names) -> None:
    result = invoke(runner, "round", "-w", ws, "--strategy", "last-row")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: config key '--strategy': got 'last-row'; did you mean 'last-rows'? (allowed: "
        "margin, entropy, least-confidence, bald, coreset, typiclust, random, last-rows)")
    result = invoke(runner, "round", "-w", ws, "--policy", "fixed-cpy")
    assert result.exit_code == 2
    assert "did you mean 'fixed-copy'? (allowed: fixed, adaptive, propagation, fixed-copy)" in result.stderr


def test_a_name_no_longer_registered_is_refused(ws: Path, runner) -> None:
    result = invoke(runner, "round", "-w", ws, "--strategy", "last-rows")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: config key '--strategy': got 'last-rows' (allowed: margin, entropy, "
        "least-confidence, bald, coreset, typiclust, random)")
