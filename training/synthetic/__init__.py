"""Deterministic synthetic datasets for the embedded default's adapters, one small task per text agent.

Each generator draws one ``(input, output)`` pair from a seeded ``random.Random``; the answer depends on
the input, so a bare base scores near chance and a trained adapter near perfectly. ``METRICS`` says how
``training.evaluate`` scores each agent: label accuracy for classification, exact match for extraction.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from ..data import write_records
from . import classify, extract

__all__ = ["GENERATORS", "CLASSIFICATION", "EXTRACTIVE", "generate", "write_dataset"]

GENERATORS: dict[str, Callable] = {
    "analyst": classify.analyst,
    "re_ranker": classify.re_ranker,
    "fact_checker": classify.fact_checker,
    "critic": classify.critic,
    "chief_editor": classify.chief_editor,
    "synthesizer": extract.synthesizer,
    "journalist": extract.journalist,
    "reasoning": extract.reasoning,
}
CLASSIFICATION = ("analyst", "re_ranker", "fact_checker", "critic", "chief_editor")
EXTRACTIVE = ("synthesizer", "journalist", "reasoning")


def generate(agent: str, n: int, seed: int) -> list[tuple]:
    """``n`` pairs for ``agent`` from seed ``seed`` (the same arguments always give the same pairs).

    Raises:
        KeyError: no synthetic task for ``agent``; the message names the ones there are.
    """
    if agent not in GENERATORS:
        raise KeyError(f"no synthetic task for agent {agent!r}; tasks exist for {sorted(GENERATORS)}")
    rng = random.Random(f"{agent}:{seed}")
    return [GENERATORS[agent](rng) for _ in range(n)]


def write_dataset(agent: str, out_dir: Path, n_train: int, n_eval: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``<agent>.train.jsonl`` and ``<agent>.eval.jsonl`` (disjoint seeds) into ``out_dir``."""
    out_dir = Path(out_dir)
    train = write_records(out_dir / f"{agent}.train.jsonl", generate(agent, n_train, seed))
    held = write_records(out_dir / f"{agent}.eval.jsonl", generate(agent, n_eval, seed + 1_000_000))
    return train, held
