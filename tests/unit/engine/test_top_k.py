"""top_k: sampling keeps only the k most likely tokens; bounded by deployments.limits (0 turns it off)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from engine import SamplingParams
from engine.sampling import RowSampler


@pytest.mark.parametrize("seed", range(5))
def test_top_k_one_at_a_high_temperature_is_greedy(seed):
    logits = torch.randn(50, generator=torch.Generator().manual_seed(seed))
    sampler = RowSampler(SamplingParams(temperature=50.0, top_k=1, seed=seed))
    assert {sampler.choose(logits) for _ in range(20)} == {int(torch.argmax(logits))}


def test_top_k_draws_only_among_the_k_best():
    logits = torch.arange(10, dtype=torch.float32)
    sampler = RowSampler(SamplingParams(temperature=100.0, top_k=3, seed=1))
    assert {sampler.choose(logits) for _ in range(200)} == {7, 8, 9}


@pytest.mark.parametrize("top_k", [-1, 1025])
def test_top_k_outside_its_limit_names_it(top_k):
    with pytest.raises(ValidationError, match=rf"top_k \({top_k}\) must be >= 0 and <= 1024 \(admission limit max_top_k\)"):
        SamplingParams(top_k=top_k)


def test_a_batch_draws_each_row_as_it_would_alone():
    """choose_tokens works row by row: a seeded row draws the same whatever shares its batch, greedy rows
    take the argmax, and top-p keeps only the head of the distribution."""
    from engine.sampling import choose_tokens

    vocab = 64
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(0)) * 3
    logits[4, 10:] = float("-inf")  # a grammar mask: only tokens 0..9 allowed
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.7, seed=3),
              SamplingParams(temperature=1.3, top_k=5, seed=4), SamplingParams(temperature=1.0, top_p=0.5, seed=5),
              SamplingParams(temperature=2.0, seed=6), SamplingParams(temperature=1.0, top_k=3, top_p=0.9, seed=7)]

    def draw(rows: list[int], steps: int = 30) -> dict[int, list[int]]:
        samplers = {p: RowSampler(params[p]) for p in rows}
        out: dict[int, list[int]] = {p: [] for p in rows}
        for _ in range(steps):
            for p, token in zip(rows, choose_tokens(logits[rows], [samplers[p] for p in rows])):
                out[p].append(token)
        return out

    together = draw(list(range(6)))
    for p in range(6):
        assert draw([p])[p] == together[p]
    assert set(together[0]) == {int(logits[0].argmax())}
    assert set(together[2]) <= set(torch.topk(logits[2], 5).indices.tolist())
    assert set(together[4]) <= set(range(10))
    head = torch.softmax(logits[3], -1).sort(descending=True)
    needed = int((head.values.cumsum(-1) < 0.5).sum()) + 1
    assert set(together[3]) <= set(head.indices[:needed].tolist())
    assert len(set(together[1])) > 1  # it does sample
