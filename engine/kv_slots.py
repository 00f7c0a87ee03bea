"""A KV cache allocated once: fixed slots, one per running row, each as long as the longest request.

Why slots and not paged blocks: the engine runs the model's own attention (sdpa / eager over dense
``[batch, heads, kv_len, head_dim]`` tensors). A paged cache would need a paged-attention kernel, or a gather
of every row's blocks into a dense tensor at every layer of every step, which is the allocation and copy this
cache exists to avoid. With slots, the running rows are kept in the first ``n`` slots, so every step reads a
*view* ``keys[:n, :, :kv_len]`` and writes each row's new token at its own position with one indexed store;
nothing is allocated per step. The price is memory reserved for the worst case (each slot holds
``slot_tokens`` = the longest prompt plus the largest ``max_new_tokens``) and one row's copy when a row
leaves from the middle (the last running row moves into its slot). ``bytes_per_token`` is what
``cluster/`` counts against a replica's memory budget.

Rows start at position 0 of their slot with no left padding: a row's position ids are its own token
indices, and the attention mask (built by :meth:`SlotKVCache.decode_mask` / :meth:`prefill_mask`, 4-D, so the
model uses it as is) lets each query see only its own row's written positions up to itself.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache

from cluster.demand import kv_shape, kv_values_per_token

from .errors import RequestTooLarge

__all__ = ["SlotKVCache", "kv_bytes_per_token"]


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def _no_shape(config: Any) -> ValueError:
    return ValueError(f"{type(config).__name__} has no KV cache shape (num_hidden_layers, num_attention_heads, "
                      f"hidden_size or head_dim)")


def _shape(config: Any) -> tuple[int, int, int]:
    shape = kv_shape(config)
    if shape is None:
        raise _no_shape(config)
    return shape


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of K and V one token takes across all layers of a model with ``config`` (a vision model's text
    config): ``cluster.demand``'s values per token -- the planner's own count -- times the element size."""
    values = kv_values_per_token(config)
    if values is None:
        raise _no_shape(config)
    return values * torch.empty((), dtype=dtype).element_size()


class SlotKVCache(Cache):
    """K/V tensors ``[slots, kv_heads, slot_tokens, head_dim]`` per layer, allocated at construction.

    Before each forward the scheduler calls :meth:`bind` with the slots the forward covers (a contiguous
    range) and where each of its rows writes; the model's attention layers then call :meth:`update`.

    Args:
        config: the model's config (a vision-language model's ``text_config`` is used).
        slots: rows that can run at once.
        slot_tokens: tokens one slot holds (prompt + generated).
        dtype, device: of the K/V tensors (the model's compute dtype and device).
    """

    def __init__(self, config: Any, *, slots: int, slot_tokens: int, dtype: torch.dtype, device: torch.device | str):
        super().__init__(layers=[])
        layers, heads, head_dim = _shape(config)
        if slots < 1 or slot_tokens < 1:
            raise ValueError(f"slots ({slots}) and slot_tokens ({slot_tokens}) must be >= 1")
        self.slots, self.slot_tokens, self.dtype = slots, slot_tokens, dtype
        self.sliding_window = getattr(_text_config(config), "sliding_window", None)
        shape = (slots, heads, slot_tokens, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.bytes_per_token = kv_bytes_per_token(config, dtype)
        self._start = 0
        self._count = 0
        self._write: torch.Tensor | None = None  # [rows, q] positions the bound forward writes
        self._kv_len = 0

    @classmethod
    def for_budget(cls, config: Any, *, budget_bytes: int, max_slots: int, slot_tokens: int, dtype: torch.dtype,
                   device: torch.device | str) -> "SlotKVCache":
        """As many slots as ``budget_bytes`` holds (at most ``max_slots``).

        Raises:
            RequestTooLarge: the budget does not hold one slot; the message names the numbers.
        """
        per_slot = kv_bytes_per_token(config, dtype) * slot_tokens
        slots = min(max_slots, budget_bytes // per_slot)
        if slots < 1:
            raise RequestTooLarge(
                f"the KV budget ({budget_bytes} bytes) holds no slot of {slot_tokens} tokens "
                f"({per_slot} bytes at {kv_bytes_per_token(config, dtype)} bytes per token)")
        return cls(config, slots=slots, slot_tokens=slot_tokens, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by all K/V tensors."""
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values])

    # -- the scheduler's side -------------------------------------------------------------------------

    def bind(self, start: int, write: torch.Tensor, kv_len: int) -> None:
        """Cover slots ``start .. start + len(write)`` in the next forward.

        Args:
            write: ``[rows, q]`` slot positions where each row's ``q`` new tokens go.
            kv_len: positions the attention reads (``max(position) + 1`` over the rows).
        """
        if start + write.shape[0] > self.slots or kv_len > self.slot_tokens:
            raise ValueError(f"rows {start}..{start + write.shape[0]} / kv_len {kv_len} exceed the cache "
                             f"({self.slots} slots of {self.slot_tokens} tokens)")
        self._start, self._count, self._write, self._kv_len = start, write.shape[0], write, kv_len

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot ``src``'s first ``length`` positions into slot ``dst`` (compaction when a row leaves)."""
        if src == dst or length <= 0:
            return
        for k, v in zip(self.keys, self.values):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def read_block(self, slot: int, start: int, length: int) -> torch.Tensor:
        """A copy of positions ``start .. start + length`` of ``slot``: ``[layers, 2 (K, V), heads, length, dim]``."""
        return torch.stack([torch.stack([k[slot, :, start:start + length], v[slot, :, start:start + length]])
                            for k, v in zip(self.keys, self.values)])

    def write_block(self, slot: int, start: int, block: torch.Tensor) -> None:
        """Copy a :meth:`read_block` block into ``slot`` at ``start``."""
        length = block.shape[3]
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            k[slot, :, start:start + length] = block[layer, 0]
            v[slot, :, start:start + length] = block[layer, 1]

    def bind_decode(self, lengths: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Cover slots ``0 .. len(lengths)`` in a decode step (row r writes its one token at ``lengths[r]``) and
        return its attention mask (:meth:`decode_mask` in the cache's dtype). Device ops only: a captured step
        (``engine/graphs.py``) builds it inside the graph from its static ``lengths``."""
        self.bind(0, lengths[:, None], kv_len)
        return self.decode_mask(lengths, self.dtype)

    def decode_mask(self, lengths: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive ``[rows, 1, 1, kv_len]`` mask for a decode step: row r sees positions ``0 .. lengths[r]``."""
        t = torch.arange(self._kv_len, device=lengths.device)
        visible = t[None, :] <= lengths[:, None]
        if self.sliding_window is not None:
            visible &= t[None, :] > lengths[:, None] - self.sliding_window
        return _additive(visible[:, None, None, :], dtype)

    def prefill_mask(self, starts: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive causal ``[rows, 1, q_len, kv_len]`` mask for a prefill whose row r starts at ``starts[r]``
        (the tokens before it are already in the slot: a reused prefix, or none).

        Right padding needs no masking of its own: a real query never looks past itself, padded queries
        produce values no one reads, and decode overwrites their K/V.
        """
        t = torch.arange(self._kv_len, device=starts.device)
        query = starts[:, None] + torch.arange(q_len, device=starts.device)[None, :]  # [rows, q]
        visible = t[None, None, :] <= query[:, :, None]
        if self.sliding_window is not None:
            visible &= t[None, None, :] > query[:, :, None] - self.sliding_window
        return _additive(visible[:, None], dtype)

    # -- the model's side (transformers' Cache interface) ---------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the bound rows' new K/V at their positions; return views of the positions they attend to."""
        keys = self.keys[layer_idx][self._start:self._start + self._count]
        values = self.values[layer_idx][self._start:self._start + self._count]
        rows = torch.arange(self._count, device=keys.device)[:, None]
        # keys[rows, :, write] is [rows, q, heads, dim]: the advanced indices come first.
        keys[rows, :, self._write] = key_states.to(keys.dtype).transpose(1, 2)
        values[rows, :, self._write] = value_states.to(values.dtype).transpose(1, 2)
        return keys[:, :, :self._kv_len], values[:, :, :self._kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_len

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self._kv_len, 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.slot_tokens

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.keys)


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean visibility mask as the additive float mask eager and sdpa attention both take."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)
