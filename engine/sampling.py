"""Token choice for a whole batch (greedy, temperature, top-k, top-p) and stop-string matching.

:func:`choose_tokens` picks every row's next token in a few tensor ops on the logits' device and one transfer
to the host for the batch: greedy rows take the ``argmax``; sampled rows are filtered (top-k, then top-p on
what is left) and drawn with the Gumbel-max trick from noise their own ``torch.Generator`` gives, so a seeded row draws the
same tokens whatever else shares its batch (every operation is row-wise, and the draw does not move with the
last bits of the logits). The generators stay on the CPU: a draw is reproducible on any device, and sending
the noise to the GPU needs no sync.
"""

from __future__ import annotations

import secrets

import torch

from .params import SamplingParams

__all__ = ["RowSampler", "choose_tokens", "find_stop"]


class RowSampler:
    """One row's sampling parameters and, when it samples, its seeded generator.

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
        return choose_tokens(logits[None, :], [self])[0]


def choose_tokens(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """Every row's next token from ``logits`` (``[rows, vocab]``, masked entries ``-inf``), batch order."""
    tokens = logits.argmax(dim=-1)
    sampled = [p for p, s in enumerate(samplers) if s.generator is not None]
    if sampled:
        device, vocab = logits.device, logits.shape[-1]
        rows = torch.tensor(sampled, device=device)
        params = [samplers[p].params for p in sampled]
        temperature = torch.tensor([q.temperature for q in params], device=device)[:, None]
        top_k = torch.tensor([q.top_k if 0 < q.top_k < vocab else vocab for q in params], device=device)[:, None]
        top_p = torch.tensor([q.top_p for q in params], device=device)[:, None]
        scaled = logits[rows].float() / temperature
        ordered, order = torch.sort(torch.softmax(scaled, dim=-1), dim=-1, descending=True, stable=True)
        ordered = ordered * (torch.arange(vocab, device=device)[None, :] < top_k)  # top-k
        # top-p over what top-k left: keep a token while the mass before it is short of top_p of that total;
        # the most likely token is always kept.
        before = torch.cumsum(ordered, dim=-1) - ordered
        keep_sorted = (ordered > 0) & ((before < top_p * ordered.sum(dim=-1, keepdim=True)) | (top_p >= 1.0))
        keep_sorted[:, 0] = True
        keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
        # Gumbel-max: argmax(logit / T + Gumbel noise) is a draw from softmax(logit / T). Unlike a draw through
        # the cumulative sum, it changes only when the two best perturbed scores are within the logits' own
        # rounding of each other, so a row whose logits differ in the last bits with another batch
        # composition (padding, kernel blocking) still draws the same token.
        noise = torch.stack([torch.rand(vocab, generator=samplers[p].generator) for p in sampled])
        gumbel = -torch.log(-torch.log(noise.clamp_(min=1e-20, max=1.0 - 1e-7))).to(device)
        tokens[rows] = (scaled + gumbel).masked_fill_(~keep, float("-inf")).argmax(dim=-1)
    return tokens.tolist()


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
