"""The training loss: next-token cross-entropy on the answer tokens only, with the shared prefix run once.

Every prompt of an agent starts with the same system prompt (hundreds of tokens; the user turn and the
answer are tens). Running that prefix once per batch and repeating its key/value cache across the rows
is exact -- gradients from every row flow back into the one prefix pass -- and cuts the work several
times over. Logits are computed only where an answer token is predicted: the LM head over a 4k vocabulary
is a large share of a small model's cost.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .data import Encoded

__all__ = ["IGNORE", "collate", "answer_loss"]

IGNORE = -100


def collate(examples: list[Encoded], prefix_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded suffixes (prompt after the prefix, then the answer), their mask, and shifted targets.

    ``targets[b, t]`` is the token position ``t`` must predict, or IGNORE where that token is part of the
    prompt or padding.
    """
    seqs = [e.prompt_ids[prefix_len:] + e.answer_ids for e in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for row, (seq, ex) in enumerate(zip(seqs, examples)):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        start = len(ex.prompt_ids) - prefix_len  # index of the first answer token in the suffix
        targets[row, start - 1 : len(seq) - 1] = torch.tensor(ex.answer_ids)
    return ids, mask, targets


def answer_loss(model: Any, examples: list[Encoded], prefix: list[int], pad_id: int, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of ``examples`` under ``model`` (a PEFT causal LM, or a PEFT
    LLaVA when the examples carry ``pixel_values``: its ``model`` runs the vision tower and puts the image
    features where the prompt's image tokens are, so the prompt then reads as text).

    Args:
        prefix: token ids every example's prompt starts with (may be empty; must be for vision examples,
            whose image tokens differ per example).
    """
    causal_lm = model.get_base_model()
    decoder, head = causal_lm.model, causal_lm.lm_head
    ids, mask, targets = (t.to(device) for t in collate(examples, len(prefix), pad_id))
    if examples[0].pixel_values is not None:
        if prefix:
            raise ValueError("vision examples cannot share a prefix: the image tokens differ per example")
        pixels = torch.stack([e.pixel_values for e in examples]).to(device)
        hidden = decoder(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_cache=False).last_hidden_state
    elif prefix:
        shared = decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True).cache
        shared.batch_repeat_interleave(len(examples))  # repeat_interleave: gradients sum back into the one pass
        full_mask = torch.cat([torch.ones((len(examples), len(prefix)), dtype=mask.dtype, device=device), mask], 1)
        hidden = decoder(input_ids=ids, attention_mask=full_mask, cache=shared, use_cache=True).last_hidden_state
    else:
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    keep = targets != IGNORE
    logits = head(hidden[keep]).float()
    return F.cross_entropy(logits, targets[keep])
