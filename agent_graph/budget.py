"""Output budgets: the most tokens a valid reply of an agent can take, from its contract and a tokenizer.

This is the one place that sizes ``max_new_tokens`` for an agent. A constrained reply ends when the grammar
does, so the budget is only a ceiling: set too low, a valid reply is cut off mid-JSON (``finish_reason``
``length``) and the agent falls back; set higher than needed, it costs nothing. So the budget is computed
once per agent at the *largest input its contract accepts* (every input list at its ``max_length``), where
the narrowed schema (``AgentSpec.json_schema(inp)``) allows the longest reply, and a smaller request fits
under it too. Sizing per request instead would save nothing: generation stops when the JSON is complete.

How a schema is counted (the grammar is ``engine/constraints.py``: compact JSON, separators
``,`` and ``:``, every property emitted, in schema order):

- structure -- braces, keys, separators, enum literals, numbers, list indices -- is ASCII and is counted
  as **one token per character**. That is the hard worst case: every token decodes to at least one byte,
  and a model may spell a key in pieces (the seeded adapters do). Counting it with the tokenizer's own
  encoding would under-count exactly the replies that ran out of tokens (fact_checker, re_ranker).
  A bounded number is at most ``<integer digits>.<6 digits>``: xgrammar 0.2.9 refuses a 7th fraction digit,
  an exponent and ``-0`` (``tests/unit/serving/test_budgets.py`` checks that against the grammar).
- free text (strings with ``maxLength``) is counted with the served base's tokenizer: ``maxLength``
  characters of newsroom prose (:data:`REFERENCE_TEXT`), encoded by that tokenizer, plus the quotes.
  This part is an estimate, not a bound: text that tokenizes worse than prose (a character at a time,
  rare scripts: up to 4 byte-tokens per character) can run past it. Such a reply finishes with
  ``length`` and the agent server takes the fallback chain with the reason recorded.
- one more token: the grammar's stop (EOS) token is generated and counted too.

An unbounded schema (a string without ``maxLength``, an array without ``maxItems``, a number without both
bounds) has no budget: :class:`UnboundedSchema` names the path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, get_origin

from annotated_types import MaxLen
from pydantic import BaseModel

from .contracts import AgentSpec, get_spec

__all__ = ["FRACTION_DIGITS", "REFERENCE_TEXT", "UnboundedSchema", "Budget", "text_tokens_per_char",
           "largest_input", "schema_budget", "agent_budget", "budget_problem"]

# The longest fraction a bounded JSON number may have under xgrammar 0.2.9's json-schema grammar.
FRACTION_DIGITS = 6

# Newsroom prose the free-text estimate is measured on (numbers, names and punctuation included).
REFERENCE_TEXT = (
    "The city council approved a new river bridge on Monday by 12 votes to 3, officials said. Construction "
    "starts in May and the budget is 40 million euros; critics, including two opposition councillors, called "
    "the plan wasteful. According to the minutes, the mayor defended the cost: \"It will serve the city for "
    "fifty years.\" Residents near the site were divided in a survey published on Tuesday."
)


class UnboundedSchema(ValueError):
    """A schema whose longest valid value is unbounded; the message names the path and what is missing."""


@dataclass(frozen=True)
class Budget:
    """The worst-case size of one schema's reply.

    Attributes:
        structure_chars: characters outside free text (each may cost a token).
        text_chars: characters of free text, at every string's ``maxLength``.
        text_tokens: the tokenizer's tokens for that text (prose estimate, quotes not included).
        tokens: the budget: ``structure_chars + text_tokens + 1`` (the grammar's stop token).
    """

    structure_chars: int
    text_chars: int
    text_tokens: int

    @property
    def tokens(self) -> int:
        return self.structure_chars + self.text_tokens + 1


def text_tokens_per_char(tokenizer: Any) -> float:
    """Tokens per character ``tokenizer`` spends on :data:`REFERENCE_TEXT` (no special tokens)."""
    ids = tokenizer(REFERENCE_TEXT, add_special_tokens=False)["input_ids"]
    return len(ids) / len(REFERENCE_TEXT)


def _resolve(node: dict, defs: dict) -> dict:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if ref else node


def _walk(node: dict, defs: dict, path: str, texts: list[int]) -> int:
    """Structure characters of the longest value of ``node``; appends each free-text maxLength to ``texts``."""
    node = _resolve(node, defs)
    if "enum" in node:
        return max(len(json.dumps(v, separators=(",", ":"))) for v in node["enum"])
    if "anyOf" in node or "oneOf" in node:
        best, best_texts = 0, []
        for option in node.get("anyOf", node.get("oneOf")):
            mine: list[int] = []
            size = _walk(option, defs, path, mine)
            if size + sum(mine) > best + sum(best_texts):
                best, best_texts = size, mine
        texts.extend(best_texts)
        return best
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        size = 2 + max(len(props) - 1, 0)  # braces and commas
        for key, value in props.items():
            size += len(key) + 3  # "key":
            size += _walk(value, defs, f"{path}.{key}", texts)
        return size
    if kind == "array":
        if "maxItems" not in node:
            raise UnboundedSchema(f"{path}: array without maxItems has no longest value")
        n = node["maxItems"]
        if n == 0:
            return 2
        item: list[int] = []
        size = _walk(node.get("items", {}), defs, f"{path}[]", item)
        texts.extend(item * n)
        return 2 + n * size + (n - 1)
    if kind == "string":
        if "maxLength" not in node:
            raise UnboundedSchema(f"{path}: string without maxLength has no longest value")
        texts.append(node["maxLength"])
        return 2  # the quotes
    if kind in ("integer", "number"):
        lo, hi = node.get("minimum"), node.get("maximum")
        if lo is None or hi is None:
            raise UnboundedSchema(f"{path}: {kind} without both minimum and maximum has no longest value")
        digits = max(len(str(int(abs(v)))) + (v < 0) for v in (lo, hi))
        return digits if kind == "integer" else digits + 1 + FRACTION_DIGITS
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    raise UnboundedSchema(f"{path}: no budget for a value of type {kind!r}")


def schema_budget(schema: dict[str, Any], tokenizer: Any) -> Budget:
    """The worst-case :class:`Budget` of a reply constrained by ``schema``, counted for ``tokenizer``.

    Raises:
        UnboundedSchema: some part of the schema has no longest value.
    """
    texts: list[int] = []
    structure = _walk(schema, schema.get("$defs", {}), "$", texts)
    rate = text_tokens_per_char(tokenizer)
    return Budget(structure, sum(texts), sum(math.ceil(n * rate) for n in texts))


def largest_input(spec: AgentSpec) -> Any:
    """A stand-in for the largest input of ``spec``: every list field at its ``max_length``.

    Only list lengths shape the narrowed output schema, so the stand-in carries just those.
    """
    lengths = {}
    for name, info in spec.input_model.model_fields.items():
        bound = next((m.max_length for m in info.metadata if isinstance(m, MaxLen)), None)
        if bound is not None and get_origin(info.annotation) is list:
            lengths[name] = [None] * bound
    return SimpleNamespace(**lengths)


def agent_budget(agent: str | AgentSpec, tokenizer: Any, inp: BaseModel | None = None) -> Budget:
    """The budget of ``agent``'s reply to ``inp`` (default: its largest input), counted for ``tokenizer``."""
    spec = get_spec(agent) if isinstance(agent, str) else agent
    return schema_budget(spec.json_schema(inp if inp is not None else largest_input(spec)), tokenizer)


def budget_problem(agent: str, max_new_tokens: int, tokenizer: Any, engine_limit: int | None = None) -> str | None:
    """Why ``max_new_tokens`` cannot hold ``agent``'s largest reply (or the engine cannot), else None."""
    need = agent_budget(agent, tokenizer).tokens
    if max_new_tokens < need:
        return (f"max_new_tokens ({max_new_tokens}) is below the {need} tokens the largest valid reply may take "
                f"(agent_graph.budget); raise it to at least {need}")
    if engine_limit is not None and need > engine_limit:
        return (f"the largest valid reply may take {need} tokens, more than max_new_tokens_limit ({engine_limit}); "
                f"lower the contract's limits")
    return None
