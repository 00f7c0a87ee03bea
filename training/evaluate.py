"""Score adapters on held-out records through the serving engine: the agent's prompt, its per-input JSON
schema as the decoding constraint, greedy decoding -- exactly how the agent is served.

Classification agents are scored on their label field(s), extractive agents on exact match of the
copied field(s); a reply that breaks the contract counts as wrong. Rows for different agents and
adapters can share one engine batch (``score_rows``), which is what proves mixed-batch routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from agent_graph.contracts import get_spec
from agent_graph.errors import ContractError

from .data import Record

__all__ = ["SCORERS", "Row", "correct", "build_request", "score_rows", "accuracy", "load_engine", "compare"]


def _side(x: float) -> bool:
    return x >= 0.5


# Per agent: is a parsed output right, given the expected one? (What "accuracy" means for its task.)
SCORERS: dict[str, Callable[[Any, Any], bool]] = {
    "analyst": lambda got, exp: got.sentiment == exp.sentiment and _side(got.bias) == _side(exp.bias),
    "re_ranker": lambda got, exp: [_side(s) for s in got.scores] == [_side(s) for s in exp.scores],
    "fact_checker": lambda got, exp: [v.verdict for v in got.verdicts] == [v.verdict for v in exp.verdicts],
    "critic": lambda got, exp: got.verdict == exp.verdict,
    "chief_editor": lambda got, exp: got.decision == exp.decision,
    "synthesizer": lambda got, exp: (got.headline, got.summary) == (exp.headline, exp.summary),
    "journalist": lambda got, exp: (got.headline, got.lede) == (exp.headline, exp.lede),
    "reasoning": lambda got, exp: got.conclusion == exp.conclusion,
}


@dataclass(frozen=True)
class Row:
    """One evaluation row: an agent's input, the expected output, and the adapter to ask (None: bare base)."""

    agent: str
    input: BaseModel
    expected: BaseModel
    adapter: str | None

    @classmethod
    def of(cls, agent: str, record: Record, adapter: str | None) -> "Row":
        return cls(agent, record.input, record.output, adapter)


def correct(agent: str, text: str, row: Row) -> bool:
    """Whether ``text`` (a model reply) is right for ``row``; a reply breaking the contract is wrong."""
    spec = get_spec(agent)
    try:
        got = spec.parse(text, row.input)
    except ContractError:
        return False
    scorer = SCORERS.get(agent, lambda g, e: g == e)
    return bool(scorer(got, row.expected))


def build_request(row: Row, tokenizer: Any, max_new_tokens: int) -> Any:
    """The engine request serving would send for ``row``: agent prompt, narrowed schema, greedy."""
    from engine import GenerationRequest, SamplingParams

    spec = get_spec(row.agent)
    return GenerationRequest(prompt=spec.prompt(row.input, tokenizer), adapter=row.adapter,
                             params=SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
                             json_schema=spec.json_schema(row.input))


def score_rows(engine: Any, rows: list[Row], *, max_new_tokens: int = 96, batch_size: int | None = None) -> list[bool]:
    """Generate every row through ``engine`` (mixed batches, in order) and score each reply."""
    size = batch_size or engine.config.max_batch_size
    out: list[bool] = []
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        results = engine.generate([build_request(r, engine.tokenizer, max_new_tokens) for r in chunk])
        out += [correct(r.agent, res.text, r) for r, res in zip(chunk, results)]
    return out


def accuracy(flags: list[bool]) -> float:
    """Share of True in ``flags`` (0.0 for none)."""
    return sum(flags) / len(flags) if flags else 0.0


def load_engine(store: Any, base_ref: str = "base_models@current", variant: str | None = "fp32",
                device: str = "cpu", max_batch_size: int = 64) -> Any:
    """An inference engine over the store's base, as the BaseLLM server builds it."""
    from engine import EngineConfig, InferenceEngine
    from modelstore.loading import load_base

    loaded = load_base(store, base_ref, variant, device=device)
    return InferenceEngine(loaded.model, loaded.tokenizer, EngineConfig(max_batch_size=max_batch_size))


def compare(store: Any, agent: str, adapter_ref: str, records: list[Record], *, engine: Any = None,
            max_new_tokens: int = 96) -> dict[str, Any]:
    """Held-out score of ``adapter_ref`` against the bare base on the same records (one engine, one run).

    Returns:
        ``{"agent", "adapter", "n", "base", "adapter_score"}`` with scores in [0, 1].
    """
    resolved = store.resolve(adapter_ref)
    if engine is None:
        engine = load_engine(store, resolved.manifest.adapter.base_ref)
    name = str(resolved.ref)
    if not engine.is_loaded(name):
        engine.load_adapter(name, resolved.path)
    base = score_rows(engine, [Row.of(agent, r, None) for r in records], max_new_tokens=max_new_tokens)
    tuned = score_rows(engine, [Row.of(agent, r, name) for r in records], max_new_tokens=max_new_tokens)
    return {"agent": agent, "adapter": name, "n": len(records), "base": accuracy(base), "adapter_score": accuracy(tuned)}
