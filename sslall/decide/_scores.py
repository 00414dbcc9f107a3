"""What a model says about a list of rows, as plain arrays: the one type the model layer hands to
the decisions (pseudo labels, routing, acquisition)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Scores:
    """Model outputs in row order; arrays may be memory-mapped files in a work directory.

    `logits` [N, C] float32, `embeddings` [N, D] float32 (the backbone's pooled features),
    `mc_probs` [T, N, C] float32 when MC-dropout samples were drawn, `ids` the rows' sample ids
    when the caller scored samples by id, `hidden` [N, H] float32 the trained head's last hidden
    layer (the features this round's labels shaped; label propagation's graph) when computed.
    """

    logits: np.ndarray
    embeddings: np.ndarray
    mc_probs: np.ndarray | None = None
    ids: list[str] | None = None
    hidden: np.ndarray | None = None
