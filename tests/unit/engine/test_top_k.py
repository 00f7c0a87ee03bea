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
