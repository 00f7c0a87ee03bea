"""Prefix sharing: the K/V of prompt blocks already computed, reused by later rows that start the same way.

Every request of an agent starts with the same system prompt, so its first few hundred tokens are computed
again and again. Like vLLM's automatic prefix caching, prompts are cut into blocks of ``block_tokens``; a block
is keyed by a digest chained over the adapter and every token up to its end (so a block's K/V, which depends
on all tokens before it and on the adapter's k/v projections, is only ever reused behind the same tokens
through the same adapter). A joining row looks up its longest run of cached blocks, has their K/V copied
into its slot and prefills only the rest; after its prefill, the blocks it computed are stored. Blocks are
kept least recently used first out within ``capacity_bytes``; a hit touches its blocks from the last to the
first, so a shared first block outlives the blocks behind it.

Rows with images are never shared: their image tokens are one repeated id whatever the pixels.
"""

from __future__ import annotations

import collections
import hashlib
from array import array
from dataclasses import dataclass

import torch

from .kv_slots import SlotKVCache

__all__ = ["PrefixCache", "PrefixStats"]


@dataclass
class PrefixStats:
    """Counters of the prefix cache."""

    lookups: int = 0
    hits: int = 0  # rows that reused at least one block
    reused_tokens: int = 0  # prompt tokens whose K/V was copied in instead of computed
    stored_blocks: int = 0
    evicted_blocks: int = 0
    cached_blocks: int = 0
    cached_bytes: int = 0


class PrefixCache:
    """Blocks of prompt K/V keyed by their chained digests, LRU within a byte budget.

    Args:
        cache: the slot cache rows are copied from and into (its layout sizes a block).
        block_tokens: tokens per block.
        capacity_bytes: most bytes of stored blocks.
    """

    def __init__(self, cache: SlotKVCache, *, block_tokens: int, capacity_bytes: int):
        if block_tokens < 1:
            raise ValueError(f"block_tokens ({block_tokens}) must be >= 1")
        self._cache = cache
        self.block_tokens = block_tokens
        self.block_bytes = cache.bytes_per_token * block_tokens
        self.capacity_bytes = capacity_bytes
        self._blocks: collections.OrderedDict[bytes, torch.Tensor] = collections.OrderedDict()
        self.stats = PrefixStats()

    def digests(self, adapter: str, ids: list[int]) -> list[bytes]:
        """The chained digests of the shareable blocks of prompt ``ids`` through ``adapter`` (computed once per
        row: :meth:`copy_in` and :meth:`store` take them). At least one prompt token is always left out of the
        blocks: its logits choose the first new token."""
        digest = hashlib.blake2b(adapter.encode(), digest_size=16).digest()
        out = []
        for b in range((len(ids) - 1) // self.block_tokens):
            chunk = array("q", ids[b * self.block_tokens:(b + 1) * self.block_tokens])
            digest = hashlib.blake2b(digest + chunk.tobytes(), digest_size=16).digest()
            out.append(digest)
        return out

    def copy_in(self, digests: list[bytes], slot: int) -> int:
        """Copy the longest run of cached blocks of a prompt (its :meth:`digests`) into ``slot``; return the
        tokens it covers."""
        self.stats.lookups += 1
        found = []
        for digest in digests:
            block = self._blocks.get(digest)
            if block is None:
                break
            found.append((digest, block))
        if not found:
            return 0
        for b, (_, block) in enumerate(found):
            self._cache.write_block(slot, b * self.block_tokens, block)
        for digest, _ in reversed(found):  # the first block ends most recently used
            self._blocks.move_to_end(digest)
        covered = len(found) * self.block_tokens
        self.stats.hits += 1
        self.stats.reused_tokens += covered
        return covered

    def store(self, digests: list[bytes], slot: int) -> None:
        """Store the leading blocks of a prompt (its :meth:`digests`; ``slot`` now holds their K/V) that are not
        cached yet, as many as the budget holds without evicting this prompt's own blocks (a block is useless
        without those before it); then order the prompt's blocks so that its deepest is the first of them to go."""
        own = set(digests)
        for digest in digests:
            if digest in self._blocks:
                self._blocks.move_to_end(digest)
        for b, digest in enumerate(digests):
            if digest in self._blocks:
                continue
            while self.stats.cached_bytes + self.block_bytes > self.capacity_bytes and self._blocks:
                if next(iter(self._blocks)) in own:
                    break
                self._blocks.popitem(last=False)
                self.stats.evicted_blocks += 1
                self.stats.cached_bytes -= self.block_bytes
            if self.stats.cached_bytes + self.block_bytes > self.capacity_bytes:
                break
            self._blocks[digest] = self._cache.read_block(slot, b * self.block_tokens, self.block_tokens)
            self.stats.stored_blocks += 1
            self.stats.cached_bytes += self.block_bytes
        for digest in reversed(digests):  # the first block ends most recently used
            if digest in self._blocks:
                self._blocks.move_to_end(digest)
        self.stats.cached_blocks = len(self._blocks)
