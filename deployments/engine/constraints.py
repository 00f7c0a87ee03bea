"""JSON-schema constrained decoding with xgrammar: one compiled grammar per schema, one matcher per row.

Schemas compile to compact JSON (``any_whitespace=False``, separators ``,`` and ``:``): a model cannot
pad the output with whitespace until it runs out of tokens, and the text parses with ``json.loads`` as is.

xgrammar 0.2.9's token mask can also leave out a token its own ``accept_token`` accepts (seen on the
tiny tokenizer: the key token ``conclusion`` after ``}],"`` in the reasoning agent's schema), after which
greedy decoding spells the key in pieces and derails. So before masking, each constrained row's favourite
token is checked with ``accept_token`` and ``rollback``; when the grammar accepts it, it stays allowed. The
grammar's own verdict decides, so nothing outside the schema is ever let through.

Tokens holding a raw control character (bytes 0x00-0x1f) are also banned in constrained rows: xgrammar
0.2.9 lets length-limited strings (``maxLength``) contain them, which ``json.loads`` rejects, and compact
JSON never needs one outside a string (inside, the escapes ``\n``, ``\u0013`` ... remain allowed).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import torch
import xgrammar as xgr

from .errors import InvalidSchema

__all__ = ["GrammarCache", "RowConstraint", "BatchMasker"]


class GrammarCache:
    """Compiles JSON schemas for one tokenizer and keeps the last ``capacity`` of them.

    Args:
        tokenizer: the Hugging Face tokenizer of the base.
        vocab_size: rows of the model's output embedding (may exceed ``len(tokenizer)`` for padded vocabularies).
        capacity: compiled grammars kept (least recently used dropped first).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, capacity: int = 64):
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        # Our own LRU keyed by the schema's JSON is the one cache; xgrammar's would hold every schema forever.
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=False, max_threads=2)
        self._capacity = capacity
        self._cache: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.vocab_size = vocab_size
        self.compiles = 0
        stops = set(info.stop_token_ids)
        self.banned_ids = torch.tensor(
            [i for i, raw in enumerate(info.decoded_vocab) if i not in stops and any(b < 0x20 for b in raw)],
            dtype=torch.long,
        )

    def get(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        """Return the compiled grammar of ``schema``, compiling it on first use.

        Raises:
            InvalidSchema: the schema is not JSON-serialisable or xgrammar cannot compile it.
        """
        try:
            # Key order is kept, not sorted: xgrammar emits properties in schema order, which callers see.
            key = json.dumps(schema, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidSchema(f"json_schema is not serialisable as JSON: {exc}") from exc
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            compiled = self._compiler.compile_json_schema(
                key, any_whitespace=False, separators=(",", ":"), strict_mode=True
            )
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses from C++.
            shown = key if len(key) <= 200 else key[:200] + "..."
            raise InvalidSchema(f"json_schema {shown} cannot be compiled: {exc}") from exc
        with self._lock:
            self.compiles += 1
            self._cache[key] = compiled
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return compiled


class RowConstraint:
    """The grammar state of one constrained row."""

    def __init__(self, compiled: xgr.CompiledGrammar):
        self.matcher = xgr.GrammarMatcher(compiled, max_rollback_tokens=1)
        self.rescued = 0  # tokens the mask left out but the grammar accepts (see the module docstring)

    def allows(self, token_id: int) -> bool:
        """Ask the grammar itself whether ``token_id`` may come next (leaves the state unchanged)."""
        if self.matcher.is_terminated() or not self.matcher.accept_token(token_id):
            return False
        self.matcher.rollback(1)
        return True

    def accept(self, token_id: int) -> None:
        """Advance the grammar by the chosen token (chosen under the mask, so it always fits)."""
        if not self.matcher.accept_token(token_id):
            raise RuntimeError(f"grammar rejected token {token_id} that its own mask allowed")

    @property
    def done(self) -> bool:
        """True once the grammar has accepted its stop token: the JSON value is complete."""
        return self.matcher.is_terminated()


def _bit(position: int) -> int:
    """``1 << position`` as the signed 32-bit value xgrammar's int32 bitmask holds."""
    value = 1 << position
    return value - (1 << 32) if value >= 1 << 31 else value


class BatchMasker:
    """Applies every constrained row's token mask to a ``[batch, vocab]`` logits tensor in one call."""

    def __init__(self, batch_size: int, vocab_size: int, banned_ids: torch.Tensor | None = None):
        self.bitmask = xgr.allocate_token_bitmask(batch_size, vocab_size)
        self.vocab_size = vocab_size
        self.banned_ids = banned_ids if banned_ids is not None and len(banned_ids) else None

    def apply(self, logits: torch.Tensor, rows: dict[int, RowConstraint]) -> None:
        """Mask ``logits`` in place for the given ``{batch index: constraint}`` rows."""
        if not rows:
            return
        favourites = logits[list(rows)].argmax(dim=-1).tolist()
        for (index, constraint), token in zip(rows.items(), favourites):
            constraint.matcher.fill_next_token_bitmask(self.bitmask, index)
            word, bit = divmod(token, 32)
            if token < self.vocab_size and not (int(self.bitmask[index, word]) >> bit) & 1 and constraint.allows(token):
                self.bitmask[index, word] |= _bit(bit)
                constraint.rescued += 1
        xgr.apply_token_bitmask_inplace(
            logits, self.bitmask.to(logits.device), vocab_size=self.vocab_size, indices=list(rows)
        )
        if self.banned_ids is not None:
            index = torch.tensor(list(rows), device=logits.device)
            logits[index.unsqueeze(1), self.banned_ids.to(logits.device).unsqueeze(0)] = float("-inf")
