"""Configuration of one inference engine (one base model, its resident adapters)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EngineConfig"]


class EngineConfig(BaseModel):
    """Limits of one :class:`~engine.InferenceEngine`.

    Every limit is checked before any compute, so a request that breaks one costs nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(32, ge=1, description="Most requests (rows) one generate() call may hold.")
    max_prompt_tokens: int = Field(2048, ge=1, description="Most prompt tokens per request, after tokenization.")
    max_new_tokens_limit: int = Field(512, ge=1, description="Largest max_new_tokens a single request may ask for.")
    max_loaded_adapters: int = Field(
        16,
        ge=0,
        description="Most adapters resident in the base at once; the caller evicts (LRU), the engine refuses beyond.",
    )
    grammar_cache_size: int = Field(
        64, ge=1, description="Compiled JSON-schema grammars kept, keyed by the schema's JSON text."
    )
    grammar_compile_workers: int = Field(
        2, ge=1, description="Threads compiling JSON-schema grammars, off the decode loop (xgrammar releases the GIL)."
    )
    grammar_compile_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Longest a schema's own compile may run: a request waiting on it longer gets 400 and the schema is "
            "refused at once from then on. Waiting that long for a free compile worker answers 503 instead."
        ),
    )
    grammar_compile_nice: int = Field(
        10,
        ge=0,
        le=19,
        description=(
            "Niceness added to the compile threads (Linux; 0 leaves it): a long compile then takes CPU the "
            "decode loop does not need, instead of slowing every batch on a CPU-bound replica."
        ),
    )
    max_pending_grammar_compiles: int = Field(
        16, ge=1, description="Distinct schemas compiling or queued to compile at once; one more is refused (503)."
    )
    max_waiting_requests: int = Field(
        256, ge=1,
        description="Rows that may wait for a KV slot of the continuous-batching loop; one more is refused (503).",
    )
    kv_cache_bytes: int | None = Field(
        None, ge=1,
        description=(
            "Memory of the continuous loop's KV cache, allocated once at its first request: as many slots of "
            "kv_slot_tokens as fit, at most max_batch_size (the planner gives each replica this budget). None: "
            "kv_slots slots."
        ),
    )
    kv_slots: int | None = Field(
        None, ge=1,
        description="Slots of the continuous loop's KV cache when kv_cache_bytes is not given; None: max_batch_size.",
    )
    kv_slot_tokens: int | None = Field(
        None, ge=1,
        description=(
            "Tokens one KV slot holds (prompt + generated); a request needing more is refused naming the numbers. "
            "None: max_prompt_tokens + max_new_tokens_limit, so every admitted request fits."
        ),
    )
    prefix_cache_bytes: int = Field(
        32 * 1024 * 1024, ge=0,
        description=(
            "Memory for prompt blocks the continuous loop keeps to reuse (prefix sharing: an agent's system prompt "
            "is computed once per adapter); 0 turns it off. A plan made with the policy's prefix_tokens_per_model "
            "sets it and counts it in the replica's budget; otherwise the default sits in the plan's per-replica "
            "context overhead (cuda_context_mb / cpu_process_overhead_mb)."
        ),
    )
    prefix_block_tokens: int = Field(
        16, ge=1, description="Tokens per shared prefix block: a prompt shares whole blocks only."
    )
    lora_decode_kernel: Literal["auto", "gather", "bgmv"] = Field(
        "auto",
        description=("With lora_kernel 'gathered', how a decode step applies the stacked adapters: 'auto' takes the "
                     "dense kernel when the entries in use are no more than the rows (each entry read once), else "
                     "the per-row gather; 'gather' always gathers; 'bgmv' runs the Triton BGMV kernels (each row "
                     "reads its own entry; CUDA only, refused elsewhere). bench/gpu_engine.py measures them all."),
    )
    decode_graphs: Literal["auto", "off", "static"] = Field(
        "auto",
        description=(
            "How the continuous loop runs decode steps. 'auto': on a CUDA device each (rows, kv length) bucket's "
            "step is captured once as a CUDA graph on static buffers and replayed (engine/graphs.py), eager "
            "elsewhere, with a bitsandbytes base and with lora_kernel 'peft'; 'off': always eager; 'static': the "
            "graphed step's buffers and buckets without capture, on any device (what the CPU tests check)."
        ),
    )
    lora_kernel: Literal["gathered", "peft"] = Field(
        "gathered",
        description=(
            "How rows with different adapters share a forward: 'gathered' keeps every resident adapter in "
            "per-layer stacked buffers allocated once (max_loaded_adapters entries; a load copies into a free "
            "entry) and applies each row's with one gathered bmm per layer (plain LoRA only, measured faster); "
            "'peft' uses PEFT's adapter_names mixed batch (any PEFT LoRA, DoRA included)."
        ),
    )
