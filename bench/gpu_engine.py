"""The engine on one GPU at a real model shape (issue 11): random weights built from the config alone, no download.

``--shape mistral-7b`` builds ``MistralForCausalLM`` with Mistral-7B-v0.3's shape (hidden 4096, 32 layers, 32
heads, 8 KV heads, head_dim 128, MLP 14336, vocab 32768) directly on the device, bf16 on CUDA (fp32 on the CPU),
weight init skipped and every tensor then filled in place with N(0, 0.02) (norms with ones), so a 7B model
builds in seconds. ``--shape tiny`` is the project's tiny Mistral (``modelstore.tiny``), vocabulary sized to its
tokenizer as ``build_tiny_base`` does. ``--layers`` overrides the layer count (``--shape mistral-7b --device
cpu --layers 2`` smoke-tests the real hidden sizes on a CPU).

Tokenizer and prompts: the tiny byte-level BPE tokenizer serves both shapes (its ids are < either vocabulary).
Every prompt is ``<s>`` followed by ``--prompt-tokens - 1`` words drawn at random from the vocabulary's
single-token words (" markets", " court", ...), so it encodes to exactly ``--prompt-tokens`` tokens (checked);
each run draws fresh prompts, so the engine's prefix cache never serves a measured run from a warm-up. Every
row generates exactly ``--new-tokens`` tokens (EOS ignored; HF: ``min_new_tokens``), greedy.

Adapters: ``--adapters`` (8) random rank-``--rank`` (16) LoRA adapters on q/k/v/o/gate/up/down and lm_head:
PEFT ``LoraConfig(init_lora_weights=False)``, tensor names and shapes taken from PEFT on a meta-device copy of
the model (no second copy of the weights), values drawn seeded (A ~ N(0, 1/in), B ~ N(0, 0.02^2)), written as
``adapter_config.json`` + ``adapter_model.safetensors`` into a temp dir and loaded with ``engine.load_adapter``.

Cases, each after one short warm-up pass of the same shape (``--warmup-tokens``):

* engine, continuous loop (``engine.submit`` of all rows at once; the rows are queued while the loop is held at
  its (private) condition lock, so they join in one prefill) at every ``--rows``; engine, static ``generate``
  at ``--static-rows``;
* for the bare base (before any adapter is loaded: no PEFT wrappers), one adapter (all rows) and mixed
  (row i on adapter i mod n);
* decode graphs (``--decode-graphs``, ``EngineConfig.decode_graphs``): on CUDA the continuous loop replays a
  CUDA graph per (rows, kv length) bucket, captured in the warm-up pass; the mixed rows at ``--hf-rows`` are then
  measured once more with graphs paused (``continuous/mixed_eager/<n>``, printed as
  ``mixed<k>_graphed_vs_eager_decode_ms_at_<n>``); on the CPU decode is eager (that line prints nan) unless
  ``--decode-graphs static`` runs the graphed step uncaptured (its buckets' cost, and the path the tests run);
* on CUDA with Triton, the mixed rows at ``--hf-rows`` once more with the Triton BGMV decode kernels
  (``continuous/mixed_bgmv/<n>``, printed as ``mixed<k>_bgmv_vs_dense_decode_ms_at_<n>``: < 1, BGMV faster);
* HF ``model.generate`` on the bare base at ``--hf-rows``: eager (dynamic cache), and ``cache_implementation=
  "static"`` with ``torch.compile`` (HF's own decode-step compile, ``CompileConfig(mode=--compile-mode)``) on
  CUDA; on the CPU the static-cache run is not compiled unless ``--hf-compile on`` (recorded as ``compiled``).
  The engine's LoRA layers are stripped off the model first (it is the same model object).

Timing (``torch.cuda.synchronize`` before every clock read that is not preceded by the engine's own
device-to-host copy of the chosen tokens): ``ttft_ms`` is from the call (submission) to the first token of
every row (end of the prefill); ``decode_ms_per_step`` is the time from there to the last token over the decode
steps; ``tokens_per_s`` is rows x new tokens over the whole call; ``decode_tokens_per_s`` is rows over the
decode step time. The engine's step times come from its ``on_step`` callbacks; HF's from a streamer that reads
the clock at every step of the same call (HF's generate already waits on the device each step for its stopping
check, so the reads add no wait of their own).

Weights-read roofline: the bytes a decode step must read (every parameter but the input embedding, of which a
step reads only its rows) over ``--bandwidth-gbs`` (4800 GB/s, H200) is the floor of a step;
``roofline_tokens_per_s`` at n rows is n over it. ``roofline_fraction_at_<n>`` = the continuous engine's mixed
decode tokens/s at n / roofline tokens/s at n; ``mixed<k>_vs_compiled_hf_at_<n>`` = the continuous engine's
mixed tokens/s at n / HF static+compiled tokens/s at n (both whole calls, prefill included). n = ``--hf-rows``
(32), k = ``--adapters`` (8). Peak memory: ``torch.cuda.max_memory_allocated`` per case (reset before each), or
the process's peak RSS on the CPU.

Writes ``<out>/<shape>-<device>.json`` after every case (a timeout leaves what was measured), prints a table,
and as its last two lines ``mixed8_vs_compiled_hf_at_32: <ratio>`` and ``roofline_fraction_at_32: <ratio>``.

    .venv/bin/python bench/gpu_engine.py --shape tiny                  # under a minute on 2 CPU cores (17 s idle)
    python bench/gpu_engine.py --shape mistral-7b --out $OUT           # one H200, under 6 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]

# Mistral-7B-v0.3 (the shape the serving plan sizes a replica for).
MISTRAL_7B = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                  rms_norm_eps=1e-5, rope_theta=1_000_000.0, sliding_window=None, tie_word_embeddings=False)

# Per shape: rows, prompt tokens, new tokens when not given.
DEFAULTS = {"mistral-7b": ([1, 32, 128], 128, 128), "tiny": ([1, 8, 32], 64, 32)}
MODES = ("base", "one_adapter", "mixed")


# -- model, tokenizer, prompts, adapters ------------------------------------------------------------------

def shape_config(shape: str, tokenizer: Any, layers: int | None, dtype: Any) -> Any:
    """The ``MistralConfig`` of ``shape`` (its layer count overridden by ``layers``), special ids from ``tokenizer``."""
    from transformers import MistralConfig

    from modelstore.tiny import TINY_CONFIG

    fields = dict(MISTRAL_7B) if shape == "mistral-7b" else {**TINY_CONFIG, "vocab_size": len(tokenizer)}
    if layers is not None:
        fields["num_hidden_layers"] = layers
    config = MistralConfig(**fields, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    config.dtype = dtype
    return config


@contextlib.contextmanager
def _default_dtype(dtype: Any):
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _no_init():
    """transformers' context that skips weight init (5.x: ``initialization``; 4.x: ``modeling_utils``)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def build_model(config: Any, device: Any, dtype: Any, seed: int) -> Any:
    """Random ``MistralForCausalLM`` built on ``device`` in ``dtype``: no init, then N(0, 0.02) per tensor in place.

    The rotary ``inv_freq`` buffer is computed in fp32 at construction (not an init), as ``from_pretrained`` has it.
    """
    import torch
    from transformers import MistralForCausalLM

    with torch.device(device), _default_dtype(dtype), _no_init():
        model = MistralForCausalLM(config)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:  # RMSNorm weights
                param.fill_(1.0)
            else:
                param.normal_(0.0, config.initializer_range, generator=generator)
    return model.eval()


def word_pool(tokenizer: Any) -> list[str]:
    """Words (with their leading space) that are one token each, sorted."""
    pool = []
    for token, i in tokenizer.get_vocab().items():
        word = " " + token[1:]
        if token.startswith("Ġ") and token[1:].isalpha():
            if tokenizer(word, add_special_tokens=False).input_ids == [i]:
                pool.append(word)
    return sorted(pool)


class PromptMaker:
    """Fresh prompts of exactly ``tokens`` tokens: BOS and random single-token words; a new draw every call."""

    def __init__(self, tokenizer: Any, tokens: int, seed: int):
        self.tokenizer, self.tokens = tokenizer, tokens
        self.pool = word_pool(tokenizer)
        self.rng = random.Random(seed)

    def __call__(self, n: int) -> list[str]:
        prompts = [self.tokenizer.bos_token + "".join(self.rng.choice(self.pool) for _ in range(self.tokens - 1))
                   for _ in range(n)]
        lengths = {len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False).input_ids}
        if lengths != {self.tokens}:
            raise RuntimeError(f"prompts encode to {sorted(lengths)} tokens, not {self.tokens}")
        return prompts


def write_adapters(config: Any, root: Path, *, count: int, rank: int, dtype: Any, seed: int) -> list[Path]:
    """``count`` random PEFT LoRA adapter dirs (safetensors) for a model of ``config``; see the module docstring."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import MistralForCausalLM

    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, init_lora_weights=False,
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    with torch.device("meta"):
        skeleton = get_peft_model(MistralForCausalLM(config), lora)
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(skeleton, save_embedding_layers=False).items()}
    dirs = []
    for i in range(count):
        generator = torch.Generator().manual_seed(seed + i)
        tensors = {}
        for key, shape in shapes.items():
            std = 1.0 / math.sqrt(shape[1]) if ".lora_A." in key else 0.02
            tensors[key] = (torch.randn(shape, generator=generator) * std).to(dtype).contiguous()
        out = root / f"adapter_{i}"
        out.mkdir(parents=True)
        lora.save_pretrained(str(out))
        save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        dirs.append(out)
    return dirs


def strip_lora(model: Any) -> int:
    """Put every LoRA layer's base layer back in its place (the bare base again); returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in layers:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    return len(layers)


# -- measuring ----------------------------------------------------------------------------------------------

class Clock:
    """Wall clock that first waits for the device (CUDA work is asynchronous)."""

    def __init__(self, device: Any):
        import torch

        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self._sync()
        return time.perf_counter()


class Memory:
    """Peak memory per case: CUDA's allocator peak (reset per case), or the process's peak RSS on the CPU."""

    def __init__(self, device: Any):
        import torch

        self.cuda = device.type == "cuda"
        self._torch = torch

    def reset(self) -> None:
        if self.cuda:
            self._torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        if self.cuda:
            return {"peak_memory_bytes": self._torch.cuda.max_memory_allocated(), "memory_kind": "cuda_max_allocated"}
        return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "memory_kind": "process_peak_rss"}


def figures(rows: int, new_tokens: int, wall: float, first: float, decode: float, steps: int) -> dict:
    """A case's figures from its wall time, time to the first tokens and time of ``steps`` decode steps (s)."""
    step = decode / steps if steps else float("nan")
    return {"rows": rows, "new_tokens": new_tokens, "wall_s": wall, "tokens_per_s": rows * new_tokens / wall,
            "ttft_ms": 1000 * first, "decode_ms_per_step": 1000 * step, "decode_steps": steps,
            "decode_tokens_per_s": rows / step if steps else float("nan")}


def _check_lengths(results: list, new_tokens: int) -> None:
    got = {r.completion_tokens for r in results}
    if got != {new_tokens}:
        raise RuntimeError(f"rows generated {sorted(got)} tokens, expected {new_tokens}")


class EngineRunner:
    """Runs one batch of requests through the engine, continuous or static, and times it."""

    def __init__(self, clock: Clock):
        self.engine: Any = None  # set once the engine exists: it takes on_step at construction
        self.clock = clock
        self.steps: list[float] = []  # the continuous loop's on_step times (it runs in the loop's thread)

    def on_step(self, _rows: int, _distinct: int, _seconds: float) -> None:
        self.steps.append(time.perf_counter())  # after the step's token transfer: the device is done

    def continuous(self, requests: list, new_tokens: int) -> dict:
        before = self.engine.stats()
        self.steps = []
        t0 = self.clock()
        handles = self.engine.submit_many(requests)  # queued together: all join one prefill
        results = [h.future.result() for h in handles]
        end = self.clock()
        after = self.engine.stats()
        _check_lengths(results, new_tokens)
        delta = {k: after.get(f"{p}_{k}", 0) - before.get(f"{p}_{k}", 0)
                 for p, keys in (("continuous", ("decode_steps", "prefills")), ("prefix", ("hits", "stored_blocks")))
                 for k in keys}
        steps = delta["decode_steps"]
        out = figures(len(requests), new_tokens, end - t0, self.steps[0] - t0, self.steps[-1] - self.steps[0], steps)
        return {**out, "prefills": delta["prefills"], "prefix_hits": delta["hits"],
                "prefix_stored_blocks": delta["stored_blocks"]}

    def static(self, requests: list, new_tokens: int) -> dict:
        times: list[float] = []
        t0 = self.clock()
        results = self.engine.generate(requests, on_step=lambda _step: times.append(time.perf_counter()))
        end = self.clock()
        _check_lengths(results, new_tokens)
        return figures(len(requests), new_tokens, end - t0, times[0] - t0, times[-1] - times[0], len(times) - 1)


class _TokenClock:
    """A ``generate`` streamer that only reads the clock: its first ``put`` is the prompt, then one per step."""

    def __init__(self, clock: Clock):
        self.clock, self.times = clock, []

    def put(self, _value: Any) -> None:
        self.times.append(self.clock())

    def end(self) -> None:
        pass


def hf_generate(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int, clock: Clock, *,
                static: bool, compile_mode: str | None) -> tuple[float, float, float]:
    """One greedy ``model.generate`` of exactly ``new_tokens`` tokens per prompt: seconds for the whole call, to
    the first tokens, and from there to the last (the steps timed by a streamer as they come)."""
    import torch

    enc = tokenizer(prompts, return_tensors="pt", add_special_tokens=False, padding=True).to(model.device)
    kwargs: dict[str, Any] = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)
    if static:
        kwargs["cache_implementation"] = "static"
    if compile_mode is None:
        kwargs["disable_compile"] = True
    else:
        from transformers import CompileConfig

        config = CompileConfig(mode=compile_mode)
        if model.device.type != "cuda" and hasattr(config, "_compile_all_devices"):
            config._compile_all_devices = True  # HF compiles on CUDA only unless told
        kwargs["compile_config"] = config
    steps = _TokenClock(clock)
    t0 = clock()
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs, streamer=steps)
    seconds = clock() - t0
    if out.shape[1] - enc.input_ids.shape[1] != new_tokens:
        raise RuntimeError(f"HF generated {out.shape[1] - enc.input_ids.shape[1]} tokens, expected {new_tokens}")
    first = steps.times[1]  # times[0]: the prompt, put before the prefill
    return seconds, first - t0, steps.times[-1] - first


def hf_case(model: Any, tokenizer: Any, prompts: Callable[[int], list[str]], rows: int, args, clock: Clock, *,
            static: bool, compile_mode: str | None) -> dict:
    """HF reference: a full-length warm-up call (compiles), then the measured call, fresh prompts."""
    run = lambda: hf_generate(model, tokenizer, prompts(rows), args.new_tokens, clock, static=static,  # noqa: E731
                              compile_mode=compile_mode)
    warm = run()[0]  # full length: compiles every decode step; eager first calls are slow too (CPU: 5x)
    whole, first, decode = run()
    out = figures(rows, args.new_tokens, whole, first, decode, args.new_tokens - 1)
    return {**out, "warmup_s": warm}


# -- the run ---------------------------------------------------------------------------------------------------

class Results:
    """The JSON document, rewritten (atomically) after every change."""

    def __init__(self, path: Path, doc: dict):
        self.path, self.doc = path, doc
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str))
        tmp.replace(self.path)

    def case(self, name: str, measure: Callable[[], dict], memory: Memory, **labels: Any) -> dict:
        """Measure one case (errors recorded, not raised), store it and save."""
        memory.reset()
        print(f"[gpu_engine] {name} ...", file=sys.stderr, flush=True)
        try:
            entry = {**labels, **measure()}
        except Exception as exc:  # one failing case (e.g. out of memory at 128 rows) must not lose the others
            traceback.print_exc()
            entry = {**labels, "error": f"{type(exc).__name__}: {exc}"}
        entry.update(memory.peak())
        self.doc["cases"][name] = entry
        self.save()
        return entry


def resolve(args) -> None:
    """Fill the shape-dependent defaults in place."""
    import torch

    rows, prompt_tokens, new_tokens = DEFAULTS[args.shape]
    args.rows = args.rows or rows
    args.prompt_tokens = args.prompt_tokens or prompt_tokens
    args.new_tokens = args.new_tokens or new_tokens
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.hf_rows = args.hf_rows or (32 if 32 in args.rows else max(args.rows))
    args.static_rows = args.static_rows if args.static_rows is not None else [args.hf_rows]
    args.warmup_tokens = min(args.warmup_tokens, args.new_tokens)
    if args.hf_compile == "auto":
        args.hf_compile = "on" if args.device.startswith("cuda") else "off"


def run(args) -> dict:
    import torch

    from engine import EngineConfig, GenerationRequest, InferenceEngine, SamplingParams
    from engine.lora_kernels import bgmv_unavailable
    from modelstore.tiny import build_tokenizer

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    clock, memory = Clock(device), Memory(device)
    began = time.perf_counter()
    tokenizer = build_tokenizer()
    config = shape_config(args.shape, tokenizer, args.layers, dtype)
    memory.reset()
    t0 = clock()
    model = build_model(config, device, dtype, args.seed)
    build_s = clock() - t0
    embed = model.get_input_embeddings().weight
    read_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    floor_s = read_bytes / (args.bandwidth_gbs * 1e9)
    doc = {
        "args": vars(args), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype), "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "config": {**config.to_dict(), "attn_implementation": config._attn_implementation},
        "parameters": sum(p.numel() for p in model.parameters()), "build_s": build_s, "build": memory.peak(),
        "roofline": {"weight_bytes_read_per_step": read_bytes, "bandwidth_gbs": args.bandwidth_gbs,
                     "floor_ms_per_step": 1000 * floor_s,
                     "tokens_per_s": {str(n): n / floor_s for n in sorted({*args.rows, args.hf_rows})}},
        "cases": {},
    }
    out = Results(Path(args.out) / f"{args.shape}-{device.type}.json", doc)
    prompts = PromptMaker(tokenizer, args.prompt_tokens, args.seed)
    slot_tokens = args.prompt_tokens + args.new_tokens
    engine_config = EngineConfig(
        max_batch_size=max([*args.rows, *args.static_rows]), max_prompt_tokens=args.prompt_tokens,
        max_new_tokens_limit=args.new_tokens, max_loaded_adapters=max(args.adapters, 1), kv_slot_tokens=slot_tokens,
        decode_graphs=args.decode_graphs, **({"prefix_cache_bytes": 0} if args.no_prefix_cache else {}))
    runner = EngineRunner(clock)
    engine = runner.engine = InferenceEngine(model, tokenizer, engine_config, on_step=runner.on_step)
    names = [f"bench/adapter_{i}@v1" for i in range(args.adapters)]

    def requests(mode: str, rows: int, new_tokens: int) -> list:
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        route = {"base": lambda i: None, "one_adapter": lambda i: names[0], "mixed": lambda i: names[i % len(names)]}
        return [GenerationRequest(prompt=p, adapter=route[mode](i), params=params)
                for i, p in enumerate(prompts(rows))]

    def engine_cases(mode: str) -> None:
        for path, row_counts in (("continuous", args.rows), ("static", args.static_rows)):
            if path not in args.paths:
                continue
            measure = getattr(runner, path)
            for rows in row_counts:
                def case(rows=rows, measure=measure) -> dict:
                    measure(requests(mode, rows, args.warmup_tokens), args.warmup_tokens)
                    return measure(requests(mode, rows, args.new_tokens), args.new_tokens)
                out.case(f"{path}/{mode}/{rows}", case, memory, path=path, mode=mode, rows=rows,
                         adapters={"base": 0, "one_adapter": 1, "mixed": min(rows, args.adapters)}[mode])

    engine_cases("base")  # before any adapter is loaded: the model carries no LoRA layers yet
    if args.adapters:
        with tempfile.TemporaryDirectory(prefix="gpu-engine-adapters-") as tmp:
            t0 = clock()
            dirs = write_adapters(config, Path(tmp), count=args.adapters, rank=args.rank, dtype=dtype,
                                  seed=args.seed + 1000)
            for name, path in zip(names, dirs):
                engine.load_adapter(name, path)
            stats = engine.stats()
            doc["adapters"] = {"count": args.adapters, "rank": args.rank, "targets": LORA_TARGETS,
                               "write_and_load_s": clock() - t0, "bytes": stats["adapter_memory_bytes"],
                               "lora_buffer_bytes": stats["lora_buffer_bytes"],
                               "resident_dtype": str(dtype)}  # the stacked buffers are in the compute dtype
        for mode in ("one_adapter", "mixed"):
            engine_cases(mode)
        n = args.hf_rows
        if "continuous" in args.paths and n in args.rows:  # the same mixed rows, the gather on every decode step
            def mixed_case() -> dict:
                runner.continuous(requests("mixed", n, args.warmup_tokens), args.warmup_tokens)
                return runner.continuous(requests("mixed", n, args.new_tokens), args.new_tokens)
            engine.set_lora_decode_kernel("gather")
            out.case(f"continuous/mixed_gather/{n}", mixed_case, memory, path="continuous", mode="mixed", rows=n,
                     adapters=min(n, args.adapters), lora_decode_kernel="gather")
            if device.type == "cuda" and bgmv_unavailable(device) is None:  # ... with the Triton BGMV kernels
                engine.set_lora_decode_kernel("bgmv")
                out.case(f"continuous/mixed_bgmv/{n}", mixed_case, memory, path="continuous", mode="mixed", rows=n,
                         adapters=min(n, args.adapters), lora_decode_kernel="bgmv")
            engine.set_lora_decode_kernel("auto")
            if engine.stats()["decode_graphs"] != "off":  # the same mixed rows, every decode step eager
                engine.set_decode_graphs(False)
                out.case(f"continuous/mixed_eager/{n}", mixed_case, memory, path="continuous", mode="mixed",
                         rows=n, adapters=min(n, args.adapters), decode_graphs="off")
                engine.set_decode_graphs(True)
    doc["decode_graphs"] = {k: v for k, v in engine.stats().items() if k.startswith("decode_graph")}
    engine.close()
    runner.engine = engine = None  # drop the engine: its KV cache and adapters' weights
    doc["lora_layers_stripped"] = strip_lora(model)
    gc.collect()  # ... are freed before the HF references
    if device.type == "cuda":
        torch.cuda.empty_cache()

    compile_mode = args.compile_mode if args.hf_compile == "on" else None
    for name, static, mode in (("hf/eager", False, None), ("hf/static", True, compile_mode)):
        out.case(f"{name}/{args.hf_rows}", lambda static=static, mode=mode: hf_case(
            model, tokenizer, prompts, args.hf_rows, args, clock, static=static, compile_mode=mode),
            memory, path=name, mode="base", rows=args.hf_rows, adapters=0, compiled=mode is not None,
            compile_mode=mode)
    doc["ratios"] = ratios(doc, args)
    doc["peak_memory_bytes"] = max(c.get("peak_memory_bytes", 0) for c in [doc["build"], *doc["cases"].values()])
    doc["runtime_s"] = time.perf_counter() - began
    out.save()
    print_table(doc, out.path)
    return doc


def ratios(doc: dict, args) -> dict:
    n, cases = args.hf_rows, doc["cases"]
    mixed = cases.get(f"continuous/mixed/{n}", {})
    hf = cases.get(f"hf/static/{n}", {})
    roof = doc["roofline"]["tokens_per_s"][str(n)]
    nan = float("nan")
    return {f"mixed{args.adapters}_vs_compiled_hf_at_{n}": mixed.get("tokens_per_s", nan) / hf.get("tokens_per_s", nan),
            f"roofline_fraction_at_{n}": mixed.get("decode_tokens_per_s", nan) / roof,
            f"mixed{args.adapters}_decode_vs_compiled_hf_decode_at_{n}":
                mixed.get("decode_tokens_per_s", nan) / hf.get("decode_tokens_per_s", nan),
            f"mixed{args.adapters}_dense_vs_gather_decode_ms_at_{n}":
                mixed.get("decode_ms_per_step", nan) / cases.get(f"continuous/mixed_gather/{n}", {}).get(
                    "decode_ms_per_step", nan),
            f"mixed{args.adapters}_bgmv_vs_dense_decode_ms_at_{n}":
                cases.get(f"continuous/mixed_bgmv/{n}", {}).get("decode_ms_per_step", nan)
                / mixed.get("decode_ms_per_step", nan),
            f"mixed{args.adapters}_graphed_vs_eager_decode_ms_at_{n}":
                mixed.get("decode_ms_per_step", nan) / cases.get(f"continuous/mixed_eager/{n}", {}).get(
                    "decode_ms_per_step", nan),
            "hf_static_compiled": hf.get("compiled")}


def print_table(doc: dict, path: Path) -> None:
    args = doc["args"]
    print(f"{args['shape']} ({doc['parameters'] / 1e9:.3f} B params, {doc['dtype']}) on {doc['device']}: "
          f"{args['prompt_tokens']}-token prompts, {args['new_tokens']} new tokens, built in {doc['build_s']:.1f} s")
    print(f"{'case':<26} {'rows':>4} {'tok/s':>9} {'decode tok/s':>12} {'ms/step':>8} {'TTFT ms':>8} {'peak MiB':>9}")
    for name, c in doc["cases"].items():
        if "error" in c:
            print(f"{name:<26} {c['rows']:>4} error: {c['error'][:80]}")
            continue
        print(f"{name:<26} {c['rows']:>4} {c['tokens_per_s']:>9.1f} {c['decode_tokens_per_s']:>12.1f} "
              f"{c['decode_ms_per_step']:>8.2f} {c['ttft_ms']:>8.1f} {c['peak_memory_bytes'] / 2**20:>9.0f}")
    roof = doc["roofline"]
    print(f"roofline: {roof['weight_bytes_read_per_step'] / 1e9:.3f} GB of weights per step at "
          f"{roof['bandwidth_gbs']:g} GB/s = {roof['floor_ms_per_step']:.3f} ms/step floor; tokens/s "
          + ", ".join(f"{v:.0f} at {k}" for k, v in roof["tokens_per_s"].items()))
    print(f"HF static-cache reference compiled: {doc['ratios']['hf_static_compiled']}; peak memory "
          f"{doc['peak_memory_bytes'] / 2**30:.2f} GiB ({doc['build']['memory_kind']}); {doc['runtime_s']:.0f} s; "
          f"raw data {path}")
    graphs = doc.get("decode_graphs", {})
    print(f"decode graphs: {graphs.get('decode_graphs', 'off')} ({graphs.get('decode_graphs_off_reason') or 'on'}); "
          f"captured {graphs.get('decode_graph_captures', 0)}, replayed {graphs.get('decode_graph_replays', 0)}")
    for kind in ("_dense_vs_gather_", "_bgmv_vs_dense_", "_graphed_vs_eager_"):
        key = next(k for k in doc["ratios"] if kind in k)
        print(f"{key}: {doc['ratios'][key]:.4g}")
    for key in list(doc["ratios"])[:2]:  # the issue's two ratio lines, last
        print(f"{key}: {doc['ratios'][key]:.4g}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shape", choices=sorted(DEFAULTS), default="mistral-7b")
    p.add_argument("--layers", type=int, help="override num_hidden_layers (smoke tests of the real widths)")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--rows", type=int, nargs="+", help="rows per batch (default 1 32 128; tiny: 1 8 32)")
    p.add_argument("--prompt-tokens", type=int, help="tokens per prompt (default 128; tiny: 64)")
    p.add_argument("--new-tokens", type=int, help="tokens generated per row, EOS ignored (default 128; tiny: 32)")
    p.add_argument("--decode-graphs", choices=["auto", "off", "static"], default="auto",
                   help="EngineConfig.decode_graphs: 'auto' captures CUDA graphs on CUDA (and then also measures the "
                        "mixed rows eager: continuous/mixed_eager), eager on the CPU; 'static' runs the graphed "
                        "step's buffers and buckets eagerly (its cost on the CPU)")
    p.add_argument("--warmup-tokens", type=int, default=4, help="new tokens of each case's warm-up pass")
    p.add_argument("--paths", nargs="+", choices=["continuous", "static"], default=["continuous", "static"],
                   help="engine paths to measure")
    p.add_argument("--static-rows", type=int, nargs="*",
                   help="rows of the static generate() cases (default: --hf-rows)")
    p.add_argument("--adapters", type=int, default=8, help="random LoRA adapters (mixed rows cycle through them)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--hf-rows", type=int, help="rows of the HF references and the ratios (default 32, else max --rows)")
    p.add_argument("--hf-compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the HF static-cache decode step (auto: on CUDA only)")
    p.add_argument("--no-compile", dest="hf_compile", action="store_const", const="off", help="= --hf-compile off")
    p.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode of the HF reference")
    p.add_argument("--no-prefix-cache", action="store_true", help="engine with prefix_cache_bytes=0")
    p.add_argument("--bandwidth-gbs", type=float, default=4800.0, help="memory bandwidth of the roofline (H200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/gpu_engine")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    resolve(args)
    return run(args)


if __name__ == "__main__":
    main()
