"""Per-row token choice (greedy, temperature, top-k, top-p) and stop-string matching.

Each row owns a ``torch.Generator`` seeded from its request, so a seeded row draws the same tokens
whatever else shares its batch.
"""

from __future__ import annotations

import secrets

import torch

from .params import SamplingParams

__all__ = ["RowSampler", "find_stop"]


class RowSampler:
    """Chooses the next token of one row from its logits.

    Args:
        params: the row's sampling parameters.
    """

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator: torch.Generator | None = None
        if params.temperature > 0:
            self.generator = torch.Generator(device="cpu")
            # A fresh seed when none is given: rows without a seed must not all draw the same sequence.
            self.generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))

    def choose(self, logits: torch.Tensor) -> int:
        """Pick one token id from a 1-D float logits vector (masked entries are ``-inf``)."""
        if self.generator is None:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        if 0 < self.params.top_k < probs.shape[-1]:
            probs = _top_k_filter(probs, self.params.top_k)
        if self.params.top_p < 1.0:
            probs = _top_p_filter(probs, self.params.top_p)
        # Sampling on CPU keeps the per-row generator on one device and the draw reproducible everywhere.
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator).item())


def _top_k_filter(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Zero all but the ``top_k`` most likely tokens and renormalise."""
    values, order = torch.topk(probs, top_k)
    filtered = torch.zeros_like(probs)
    filtered[order] = values
    return filtered / filtered.sum()


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose mass reaches ``top_p``."""
    sorted_probs, order = torch.sort(probs, descending=True)
    # Keep a token if the mass before it is still short of top_p; the top token is always kept.
    keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p
    keep[0] = True
    filtered = torch.zeros_like(probs)
    filtered[order[keep]] = sorted_probs[keep]
    return filtered / filtered.sum()


def find_stop(text: str, stops: list[str], search_from: int = 0) -> int | None:
    """Return the index where the earliest stop string starts in ``text``, or None.

    Args:
        text: the row's completion text so far.
        stops: stop strings.
        search_from: no match can start before this index (it was searched at an earlier step);
            callers pass ``len(previous_text) - max_stop_len`` so a stop split across tokens is still found.
    """
    best: int | None = None
    start = max(0, search_from)
    for stop in stops:
        at = text.find(stop, start)
        if at != -1 and (best is None or at < best):
            best = at
    return best
