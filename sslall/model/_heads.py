"""Heads on backbone features: the MLP head and an ensemble of heads.

`MLPHead` is the seeds' "two FC-64 layers"; its dropout stays in the module so MC dropout (BALD)
is `head.train()`. `EnsembleHead` averages several heads' probabilities. `head_logits` and
`head_hidden` run a head over cached feature rows in batches. Pure torch: no timm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from sslall.errors import ModelError
from sslall.model._devices import one_cpu_thread

__all__ = ["EnsembleHead", "MLPHead", "head_hidden", "head_logits", "head_sizes", "hidden_features"]


class MLPHead(nn.Module):
    """Linear-ReLU-Dropout per hidden layer, then a linear layer to the class logits."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.2
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1 or any(int(h) < 1 for h in hidden):
            raise ValueError(
                f"MLPHead sizes must be positive: in={in_features}, "
                f"classes={num_classes}, hidden={tuple(hidden)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        layers: list[nn.Module] = []
        width = in_features
        for size in self.hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(self.dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class EnsembleHead(nn.Module):
    """Several heads on the same features; the output is the log of their mean probability.

    Log-probabilities are valid logits (softmax gives the mean back), so temperature scaling,
    thresholds and MC dropout treat an ensemble like one head. Heads of different seeds disagree
    where a few dozen labels leave the boundary open, which steadies rounds and calibration.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one head")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([m(x).float().log_softmax(dim=-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


def head_sizes(head: nn.Module) -> tuple[int, int]:
    """(input width, number of classes) of a head: its first and last linear layers.

    Raises:
        ModelError: the head has no linear layer.
    """
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ModelError(f"head {type(head).__name__} has no linear layer")
    return int(layers[0].in_features), int(layers[-1].out_features)


def hidden_features(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's last hidden layer for inputs ``x``: the features the labels have shaped.

    For an `EnsembleHead` the members' hidden layers are concatenated; a head without hidden
    layers gives its input back. Used for label propagation's kNN graph
    (`sslall.decide._propagation`), which needs features trained on this round's labels.
    """
    if isinstance(head, EnsembleHead):
        return torch.cat([hidden_features(m, x) for m in head.members], dim=1)
    if isinstance(head, MLPHead):
        return head.layers[:-1](x)
    raise TypeError(f"no hidden layer to read in {type(head).__name__}")


def head_logits(head: nn.Module, features: np.ndarray, device: torch.device, batch: int
                 ) -> np.ndarray:
    """The head's logits [N, C] of features [N, D], in batches, on one CPU thread."""
    return _head_batches(head, head, features, device, batch, head_sizes(head)[1])


def head_hidden(head: nn.Module, features: np.ndarray, device: torch.device, batch: int
                ) -> np.ndarray:
    """The head's last hidden layer [N, H] of features [N, D] (`hidden_features`), in batches."""
    width = sum(h.hidden[-1] if h.hidden else head_sizes(h)[0]
                for h in (head.members if isinstance(head, EnsembleHead) else [head]))
    return _head_batches(head, lambda x: hidden_features(head, x), features, device, batch, width)


def _head_batches(head: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor],
                  features: np.ndarray, device: torch.device, batch: int, width: int) -> np.ndarray:
    head = head.to(device).eval()
    out = []
    with torch.inference_mode(), one_cpu_thread() if device.type == "cpu" else nullcontext():
        for start in range(0, len(features), batch):
            chunk = torch.as_tensor(np.asarray(features[start:start + batch]), device=device)
            out.append(fn(chunk.float()).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)
