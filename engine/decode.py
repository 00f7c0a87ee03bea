"""The batched decode loop: left-padded prefill, then one token per live row per step, with a KV cache.

Rows finish independently (EOS, stop string, grammar done, or max_new_tokens). Finished rows are
dropped from the batch (KV cache, mask and positions compacted) so late steps cost only what is
still running; see ``compact`` for the measured alternative of keeping them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch
from transformers import DynamicCache

from .constraints import BatchMasker, RowConstraint
from .params import FinishReason, GenerationRequest, GenerationResult, SamplingParams
from .sampling import RowSampler, choose_tokens, find_stop

__all__ = ["DecodeRow", "run_decode", "vision_inputs"]

# Byte-level BPE can rewrite the last few characters of a decode once a multi-byte character completes,
# so a stop-string search restarts this many characters before where the previous search ended.
_REDECODE_SLACK = 4


class DecodeRow:
    """State of one row: prompt, sampler, optional grammar, generated tokens and how it finished."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, grammar: Any | None, tokenizer: Any,
                 vision: dict[str, torch.Tensor] | None = None):
        self.prompt_ids = prompt_ids
        self.vision = vision  # the processor's pixel_values (and image_sizes) of the row's images, for prefill
        self.params = params
        self.sampler = RowSampler(params)
        self.constraint = RowConstraint(grammar) if grammar is not None else None
        # Stopping mid-value would break the JSON contract, so constrained rows end on the grammar only.
        self.stops = list(params.stop) if self.constraint is None else []
        self.tokens: list[int] = []
        self.finish: FinishReason | None = None
        self._tokenizer = tokenizer
        self._text: str | None = None
        self._searched = 0

    def advance(self, token: int, eos_ids: set[int]) -> bool:
        """Record the chosen token; return True when the row is finished."""
        self.tokens.append(token)
        if self.constraint is not None:
            self.constraint.accept(token)
            if self.constraint.done:
                self.finish = "stop"
                return True
        elif token in eos_ids and not self.params.ignore_eos:
            self.finish = "stop"
            return True
        elif self.stops:
            text = self._tokenizer.decode(self.tokens, skip_special_tokens=True)
            longest = max(len(s) for s in self.stops)
            at = find_stop(text, self.stops, self._searched - longest - _REDECODE_SLACK)
            self._searched = len(text)
            if at is not None:
                self._text = text[:at]
                self.finish = "stop"
                return True
        if len(self.tokens) >= self.params.max_new_tokens:
            self.finish = "length"
            return True
        return False

    def result(self, tokenizer: Any, request: GenerationRequest) -> GenerationResult:
        """The row's outcome as a :class:`GenerationResult`."""
        text = self._text if self._text is not None else tokenizer.decode(self.tokens, skip_special_tokens=True)
        return GenerationResult(
            text=text,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.tokens),
            finish_reason=self.finish or "length",
            adapter=request.adapter,
            request_id=request.request_id,
        )


def run_decode(
    adapters: Any,
    model_lock: threading.RLock,
    rows: list[DecodeRow],
    adapter_names: list[str],
    *,
    pad_id: int,
    eos_ids: set[int],
    vocab_size: int,
    device: torch.device,
    banned_ids: torch.Tensor | None = None,
    on_step: Callable[[int], None] | None = None,
    compact: bool = True,
    pixel_dtype: torch.dtype | None = None,
) -> None:
    """Decode all ``rows`` to completion in place.

    Args:
        adapters: the registry; its ``model`` is re-read every step because a concurrent first adapter
            load wraps the base in a PeftModel, after which rows must be routed to their adapters.
        model_lock: held for each forward pass only, so loads and other batches interleave between steps.
        rows: the batch.
        adapter_names: PEFT slot per row (``"__base__"`` for the bare base).
        pad_id, eos_ids, vocab_size, device: from the engine.
        banned_ids: tokens never allowed in constrained rows (see ``constraints``).
        on_step: called after each step with its index, outside the lock.
        compact: drop finished rows from the batch (True) or keep feeding them and ignore their output.
        pixel_dtype: the vision tower's dtype; rows with images add their pixels to the prefill only (the
            model splices the image features in place of the image tokens, row by row in batch order).
    """
    lengths = [len(r.prompt_ids) for r in rows]
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - lengths[i] :] = torch.tensor(row.prompt_ids, dtype=torch.long)
        mask[i, width - lengths[i] :] = 1
    # Positions count real tokens only, so a left-padded row sees the same positions it would alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    live = list(range(len(rows)))  # batch position -> row index
    finished = [False] * len(rows)
    masker = BatchMasker(len(rows), vocab_size, banned_ids) if any(r.constraint for r in rows) else None
    router = adapters.router()
    prefill = vision_inputs(rows, device, pixel_dtype)
    cache = None
    step = 0
    with torch.inference_mode():
        while True:
            with model_lock, router.step([adapter_names[i] for i in live], device) as extra:
                model = adapters.model
                first = cache is None
                if first:
                    cache = DynamicCache(config=model.config)
                out = model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                    **extra,
                    **(prefill if first else {}),
                )
            logits = out.logits[:, -1, :].float()
            if masker is not None:
                masker.apply(logits, {p: rows[i].constraint for p, i in enumerate(live) if rows[i].constraint and not finished[i]})
            chosen = choose_tokens(logits, [rows[i].sampler for i in live])  # one transfer for the batch
            next_tokens = []
            for p, i in enumerate(live):
                if finished[i]:
                    next_tokens.append(pad_id)
                    continue
                finished[i] = rows[i].advance(chosen[p], eos_ids)
                next_tokens.append(chosen[p])
            if on_step is not None:
                on_step(step)
            step += 1
            keep = [p for p, i in enumerate(live) if not finished[i]]
            if not keep:
                return
            if compact and len(keep) < len(live):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                live = [live[p] for p in keep]
                next_tokens = [next_tokens[p] for p in keep]
            input_ids = torch.tensor(next_tokens, dtype=torch.long, device=device)[:, None]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            positions = positions[:, -1:] + 1


def vision_inputs(rows: list[DecodeRow], device: torch.device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The prefill's ``pixel_values`` (and ``image_sizes``) of every row with images, in batch order.

    LLaVA-NeXT's processor gives each image a tile count of its own; images from different rows are padded to
    the largest count with zero tiles, which the model never reads (it takes each image's tiles from
    ``image_sizes``).
    """
    parts = [row.vision for row in rows if row.vision is not None]
    if not parts:
        return {}
    pixels = [p["pixel_values"] for p in parts]
    if pixels[0].dim() == 5:  # (images, tiles, channels, height, width)
        most = max(p.shape[1] for p in pixels)
        pixels = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in pixels]
    out = {"pixel_values": torch.cat(pixels).to(device=device, dtype=dtype)}
    if "image_sizes" in parts[0]:
        out["image_sizes"] = torch.cat([p["image_sizes"] for p in parts]).to(device)
    return out
