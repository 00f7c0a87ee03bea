"""Score a vision agent's adapter on held-out images against the bare base, through the serving engine: the
agent's prompt with the image, its JSON schema as the decoding constraint, the agent map's token budget,
greedy decoding -- exactly how the newsreader is served.

Figures per side: how often the reply names the image's kind, reads its headline, gets both, writes the
expected caption, and is a valid reply of the served contract at all (an invalid reply is wrong on every
field).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from agent_graph.contracts import get_spec
from agent_graph.errors import ContractError

from .vision_data import agent_input, vision_prompt
from .vision_task import VisionRecord

__all__ = ["VisionScores", "served_max_new_tokens", "build_vision_request", "score_vision", "load_vision_engine",
           "compare_vision"]

FALLBACK_MAX_NEW_TOKENS = 224  # when the agent map has no entry for the agent


@dataclass(frozen=True)
class VisionScores:
    """Held-out shares in [0, 1] over ``n`` records."""

    n: int
    kind: float
    headline: float
    both: float
    caption: float
    valid: float


def served_max_new_tokens(agent: str) -> int:
    """The agent map's ``max_new_tokens`` for ``agent`` (what serving allows a reply)."""
    from agent_graph import AgentMapError, load_agent_map

    try:
        return load_agent_map().entry(agent).max_new_tokens
    except (LookupError, AgentMapError):  # no entry, or a map that does not load: the served default
        return FALLBACK_MAX_NEW_TOKENS


def build_vision_request(agent: str, record: VisionRecord, processor: Any, adapter: str | None,
                         max_new_tokens: int) -> Any:
    """The engine request serving sends for ``record``: the agent's prompt and schema, the image, greedy."""
    from engine import GenerationRequest, SamplingParams

    inp = agent_input(agent, record)
    return GenerationRequest(prompt=vision_prompt(agent, record, processor), images=[record.load_image()],
                             adapter=adapter, params=SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
                             json_schema=get_spec(agent).json_schema(inp))


def score_vision(engine: Any, agent: str, records: list[VisionRecord], adapter: str | None, *,
                 max_new_tokens: int | None = None, batch_size: int | None = None) -> VisionScores:
    """Generate a reply to every record through ``engine`` and score it against the record's target."""
    spec = get_spec(agent)
    max_new_tokens = max_new_tokens or served_max_new_tokens(agent)
    size = batch_size or engine.config.max_batch_size
    kind = word = both = caption = valid = 0
    for i in range(0, len(records), size):
        chunk = records[i : i + size]
        results = engine.generate([build_vision_request(agent, r, engine.processor, adapter, max_new_tokens)
                                   for r in chunk])
        for rec, res in zip(chunk, results):
            try:
                got = spec.parse(res.text)
            except ContractError:
                continue
            exp = rec.target
            valid += 1
            kind += got.image_kind == exp.image_kind
            word += got.headline == exp.headline
            both += got.image_kind == exp.image_kind and got.headline == exp.headline
            caption += got.caption == exp.caption
    n = len(records)
    return VisionScores(n, *(round(x / n, 4) if n else 0.0 for x in (kind, word, both, caption, valid)))


def load_vision_engine(store: Any, base_ref: str, variant: str | None = "fp32", device: str = "cpu",
                       max_batch_size: int = 64) -> Any:
    """An inference engine over a vision-language base and its processor, as the BaseLLM server builds it."""
    from engine import EngineConfig, InferenceEngine
    from modelstore.loading import load_base

    loaded = load_base(store, base_ref, variant, device=device)
    return InferenceEngine(loaded.model, loaded.tokenizer, EngineConfig(max_batch_size=max_batch_size),
                           processor=loaded.processor)


def compare_vision(store: Any, agent: str, adapter_ref: str, records: list[VisionRecord], *, engine: Any = None,
                   max_new_tokens: int | None = None) -> dict[str, Any]:
    """Held-out scores of ``adapter_ref`` and of the bare base it was published on, same records, one engine.

    Returns:
        ``{"agent", "adapter", "base_ref", "n", "max_new_tokens", "base": {...}, "adapter_score": {...}}``; each
        score dict holds ``kind``, ``headline``, ``both``, ``caption`` and ``valid``.
    """
    resolved = store.resolve(adapter_ref)
    base_ref = resolved.manifest.adapter.base_ref
    if engine is None:
        engine = load_vision_engine(store, base_ref)
    name = str(resolved.ref)
    if not engine.is_loaded(name):
        engine.load_adapter(name, resolved.path)
    max_new_tokens = max_new_tokens or served_max_new_tokens(agent)
    scores = {side: asdict(score_vision(engine, agent, records, adapter, max_new_tokens=max_new_tokens))
              for side, adapter in (("base", None), ("adapter_score", name))}
    for s in scores.values():
        s.pop("n")
    return {"agent": agent, "adapter": name, "base_ref": base_ref, "n": len(records), "max_new_tokens": max_new_tokens,
            **scores}
