"""Mixed-adapter serving benchmark: the BaseLLM Serve deployment against the sequential PEFT baseline.

One run, same machine, same base, same adapters, same requests:

(a) ``serve``: the BaseLLM deployment on a local Ray cluster; its batcher puts requests for different
    adapters into one forward pass.
(b) ``sequential``: what most users start from -- one PeftModel holding the adapters, ``set_adapter``
    per request and ``generate`` one request at a time (callers queue for it).

Workload: 8 adapters, requests spread round-robin over them, fixed prompt length and fixed output
length (EOS ignored), closed-loop clients at concurrency 1, 8 and 32, median of ``--repeats`` runs.
Also: throughput at concurrency 32 with 1 / 8 / 32 distinct adapters, and memory of base + 8 adapters
against base alone. Writes ``results.csv``, ``results.json`` and ``results.png`` under ``--out`` and
prints ``speedup_vs_sequential_at_32: <ratio>`` as its last line.

``--open-loop`` (issue 11) instead replays one seeded Poisson arrival schedule of mixed requests (short and
long prompts, 8 / 32 / 96 generated tokens with EOS ignored, adapters mixed over the 8 resident ones and the
bare base) against two in-process engines, one after the other: ``static``, fed as production's
``MixedBatcher`` feeds it (the batcher itself: up to ``--max-batch-size`` requests gathered for
``--batch-wait-s`` after the first, one ``generate`` at a time, later arrivals wait for the running batch),
and ``continuous`` (``engine.submit`` at each arrival). Without ``--rate`` it first finds the load: the first
of ``--rates`` at which the static engine's p95 time to first token exceeds ``--ttft-target`` s, and reports
both engines at that rate. Time to first token and end-to-end latency count from the scheduled arrival; a
static row's result reaches its caller when its whole batch ends (as in production), while its inter-token
latency counts to its own last token. Writes ``open_loop.json`` / ``open_loop.csv`` under ``--out`` and prints
``ttft_p95_continuous_vs_static: <ratio>`` and ``throughput_continuous_vs_static: <ratio>`` last.

    .venv/bin/python bench/mixed_adapters.py            # ~3-5 minutes on 2 cores
    .venv/bin/python bench/mixed_adapters.py --open-loop  # ~2-4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WORDS = ("markets council report election storm energy court budget players study inflation "
         "climate hospital voters league").split()


def prepare_store(root: Path, extra_adapters: int) -> tuple[list[str], list[str]]:
    """Seed the default store plus ``extra_adapters`` random adapters; return (8 agent refs, all refs)."""
    from modelstore import ModelStore
    from modelstore.seed import TEXT_AGENTS, adapter_ref, seed_default_store, write_random_adapter

    store = ModelStore(root)
    seed_default_store(store)
    agent_refs = [str(store.pin(adapter_ref(a))) for a in TEXT_AGENTS]
    extra = []
    base_path = store.resolve("base_models@current").path
    for i in range(extra_adapters):
        ref = f"bench/extra_{i:02d}@v1"
        try:
            store.resolve(ref)
        except Exception:
            with tempfile.TemporaryDirectory() as tmp:
                write_random_adapter(base_path, Path(tmp) / "a", seed=5000 + i)
                store.publish_adapter("bench", f"extra_{i:02d}", Path(tmp) / "a", "v1")
        extra.append(ref)
    return agent_refs, agent_refs + extra


def fixed_prompts(tokenizer, n: int, prompt_tokens: int) -> list[str]:
    """``n`` distinct chat prompts of exactly ``prompt_tokens`` tokens each."""
    prompts = []
    for i in range(n):
        words, text = [], ""
        k = i
        while True:
            words.append(WORDS[k % len(WORDS)])
            k = k * 7 + 3
            candidate = tokenizer.apply_chat_template(
                [{"role": "user", "content": "Summarise: " + " ".join(words)}], tokenize=False)
            if len(tokenizer(candidate, add_special_tokens=False).input_ids) > prompt_tokens:
                break
            text = candidate
        prompts.append(text)
    lengths = {len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts}
    if len(lengths) != 1:  # pad the short ones with a neutral word until all match
        target = max(lengths)
        prompts = [_pad_to(tokenizer, p, target) for p in prompts]
    return prompts


def _pad_to(tokenizer, prompt: str, target: int) -> str:
    while len(tokenizer(prompt, add_special_tokens=False).input_ids) < target:
        prompt = prompt.replace(" [/INST]", " now [/INST]")
    return prompt


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[idx]


async def closed_loop(send, jobs: list[tuple[str, str]], concurrency: int) -> dict:
    """Run ``jobs`` (adapter ref, prompt) with ``concurrency`` clients; each sends its next job when done."""
    queue = list(reversed(jobs))
    latencies, tokens = [], 0

    async def client():
        nonlocal tokens
        while queue:
            ref, prompt = queue.pop()
            t0 = time.perf_counter()
            generated = await send(ref, prompt)  # not `tokens += await ...`: that reads tokens before awaiting
            tokens += generated
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"tokens_per_s": tokens / wall, "requests": len(latencies), "wall_s": wall,
            "p50_ms": 1000 * percentile(latencies, 50), "p95_ms": 1000 * percentile(latencies, 95),
            "p99_ms": 1000 * percentile(latencies, 99)}


class SequentialBaseline:
    """One PeftModel with every adapter loaded; set_adapter + generate, one request at a time."""

    def __init__(self, store_root: Path, refs: list[str], max_new_tokens: int):
        import torch
        from peft import PeftModel

        from modelstore import ModelStore
        from modelstore.loading import load_base

        store = ModelStore(store_root)
        base = load_base(store, "base_models@current", "fp32")
        self.tokenizer = base.tokenizer
        self.names = {ref: f"a{i}" for i, ref in enumerate(refs)}
        model = None
        for ref, name in self.names.items():
            path = store.adapter_path(ref)
            if model is None:
                model = PeftModel.from_pretrained(base.model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
        self.model = model.eval()
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()
        self.torch = torch

    def _generate(self, ref: str, prompt: str) -> int:
        with self.lock, self.torch.inference_mode():
            self.model.set_adapter(self.names[ref])
            ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, min_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            return out.shape[1] - ids.input_ids.shape[1]

    async def send(self, ref: str, prompt: str) -> int:
        return await asyncio.to_thread(self._generate, ref, prompt)


def serve_sender(handle, max_new_tokens: int):
    async def send(ref: str, prompt: str) -> int:
        body = {"prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": 0.0, "ignore_eos": True}
        resp = await handle.options(multiplexed_model_id=ref).generate.remote(body)
        return resp["completion_tokens"]
    return send


def engine_memory(store_root: Path, refs: list[str]) -> dict:
    """Bytes of base parameters alone and with the 8 adapters resident (one engine, one base copy)."""
    from engine import EngineConfig, InferenceEngine
    from modelstore import ModelStore
    from modelstore.loading import load_base

    store = ModelStore(store_root)
    base = load_base(store, "base_models@current", "fp32")
    engine = InferenceEngine(base.model, base.tokenizer, EngineConfig(max_loaded_adapters=len(refs)))
    alone = engine.memory_footprint()
    for i, ref in enumerate(refs):
        engine.load_adapter(f"a{i}", store.adapter_path(ref))
    loaded = engine.memory_footprint()
    base_bytes = alone["base_bytes"]
    adapters_bytes = loaded["adapters_total_bytes"]
    return {"base_bytes": base_bytes, "adapters_bytes": adapters_bytes,
            "base_plus_8_over_base": (base_bytes + adapters_bytes) / base_bytes,
            "eight_separate_models_over_base_plus_8": 8 * (base_bytes) / (base_bytes + adapters_bytes)}


def jobs_for(refs: list[str], prompts: list[str], n: int) -> list[tuple[str, str]]:
    return [(refs[i % len(refs)], prompts[i % len(prompts)]) for i in range(n)]


async def run(args) -> dict:
    import ray
    from ray import serve

    from deployments.base_llm.deployment import build_base_llm

    root = Path(args.store_root) if args.store_root else Path(tempfile.mkdtemp(prefix="bench-store-"))
    agent_refs, all_refs = prepare_store(root, extra_adapters=24)
    rows = []
    baseline = SequentialBaseline(root, agent_refs, args.max_new_tokens)
    prompts = fixed_prompts(baseline.tokenizer, 64, args.prompt_tokens)

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    settings = {"store_root": str(root), "variant": "fp32", "verify_adapters": False,
                "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": args.cpus},
                "engine": {"max_batch_size": 32, "max_loaded_adapters": 32, "max_new_tokens_limit": 64},
                "runtime": {"max_batch_size": 32, "batch_wait_timeout_s": 0.005, "max_num_models_per_replica": 32}}
    handle = serve.run(build_base_llm(settings), name="bench", route_prefix=None)
    send_serve = serve_sender(handle, args.max_new_tokens)
    await closed_loop(send_serve, jobs_for(all_refs, prompts, 32), 32)  # warm-up: load all 32 adapters
    await closed_loop(baseline.send, jobs_for(agent_refs, prompts, 8), 1)

    for c in args.concurrency:
        n = max(args.min_requests, 4 * c)
        for system, send in (("serve", send_serve), ("sequential", baseline.send)):
            for r in range(args.repeats):
                res = await closed_loop(send, jobs_for(agent_refs, prompts, n), c)
                rows.append({"system": system, "concurrency": c, "distinct_adapters": 8, "repeat": r, **res})
                print(f"{system:>10} c={c:<3} rep={r} {res['tokens_per_s']:8.1f} tok/s p50={res['p50_ms']:.0f}ms",
                      file=sys.stderr)
    for k in (1, 8, 32):
        refs = all_refs[:k]
        for r in range(args.repeats):
            res = await closed_loop(send_serve, jobs_for(refs, prompts, max(args.min_requests, 128)), 32)
            rows.append({"system": "serve", "concurrency": 32, "distinct_adapters": k, "repeat": r, **res})
            print(f"heterogeneity k={k:<2} rep={r} {res['tokens_per_s']:8.1f} tok/s", file=sys.stderr)
    stats = await handle.stats.remote()
    serve.shutdown()
    ray.shutdown()
    return {"rows": rows, "memory": engine_memory(root, agent_refs), "replica_stats": stats}


def summarise(rows: list[dict]) -> dict:
    def med(system, c, k, key="tokens_per_s"):
        vals = [r[key] for r in rows if r["system"] == system and r["concurrency"] == c and r["distinct_adapters"] == k]
        return statistics.median(vals) if vals else None

    levels = sorted({r["concurrency"] for r in rows if r["distinct_adapters"] == 8})
    table = {}
    for c in levels:
        for system in ("serve", "sequential"):
            table[f"{system}@{c}"] = {key: med(system, c, 8, key) for key in ("tokens_per_s", "p50_ms", "p95_ms", "p99_ms")}
    speedups = {c: med("serve", c, 8) / med("sequential", c, 8) for c in levels}
    hetero = {k: med("serve", 32, k) for k in (1, 8, 32)}
    return {"table": table, "speedup_vs_sequential": speedups, "heterogeneity_tokens_per_s": hetero,
            "heterogeneity_loss_1_to_32": 1 - hetero[32] / hetero[1] if hetero[1] else None}


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(summary["speedup_vs_sequential"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for system in ("serve", "sequential"):
        ax1.plot(levels, [summary["table"][f"{system}@{c}"]["tokens_per_s"] for c in levels], marker="o", label=system)
    ax1.set(xlabel="concurrency", ylabel="generated tokens/s", title="8 adapters, mixed", xscale="log", xticks=levels)
    ax1.set_xticklabels([str(c) for c in levels])
    ax1.legend()
    ks = sorted(summary["heterogeneity_tokens_per_s"])
    ax2.bar([str(k) for k in ks], [summary["heterogeneity_tokens_per_s"][k] for k in ks])
    ax2.set(xlabel="distinct adapters (concurrency 32)", ylabel="tokens/s", title="cost of heterogeneity")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


# -- open loop (issue 11): the static batcher against continuous batching under Poisson arrivals -----------

OPEN_LOOP_RATES = (8.0, 16.0, 24.0, 32.0, 40.0, 48.0, 64.0)  # requests/s; static saturates near 40 on 2 cores


@dataclass(frozen=True)
class Arrival:
    """One request of an open-loop schedule, sent ``at`` seconds after the run starts."""

    index: int
    at: float
    request: Any  # engine.GenerationRequest


def open_loop_arrivals(tokenizer, adapters: list[str], *, rate: float, seed: int, duration: float | None = None,
                       requests: int | None = None, new_tokens=(8, 32, 96), prompt_words=(8, 40, 160)) -> list[Arrival]:
    """A seeded Poisson schedule of mixed requests: ``requests`` of them, or as many as arrive in ``duration`` s.

    Gaps and request shapes come from two generators, so request ``i`` is the same at every rate and a schedule
    at twice the rate is the same one compressed. Adapters are drawn from ``adapters`` and the bare base (None).
    """
    from engine import GenerationRequest, SamplingParams

    if (duration is None) == (requests is None):
        raise ValueError("give exactly one of duration and requests")
    gaps, shapes = random.Random(2 * seed), random.Random(2 * seed + 1)
    out: list[Arrival] = []
    at = 0.0
    while requests is None or len(out) < requests:
        at += gaps.expovariate(rate)
        if duration is not None and at > duration:
            break
        text = " ".join(shapes.choice(WORDS) for _ in range(shapes.choice(prompt_words)))
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Summarise: " + text}], tokenize=False)
        params = SamplingParams(max_new_tokens=shapes.choice(new_tokens), ignore_eos=True)
        request = GenerationRequest(prompt=prompt, adapter=shapes.choice([None, *adapters]), params=params,
                                    request_id=f"ol-{len(out)}")
        out.append(Arrival(len(out), at, request))
    return out


async def _replay(arrivals: list[Arrival], send: Callable[[Any], Awaitable[dict]]) -> list[dict]:
    """Send each request at its time (not waiting for earlier ones); one record per request, in order.

    ``send`` returns the request's ``first_token`` and ``last_token`` times (monotonic) and its result; the record
    adds ``arrival`` (the scheduled time: latency counts from it), ``sent`` and ``done`` (when the caller had it).
    """
    start = time.monotonic() + 0.05

    async def one(a: Arrival) -> dict:
        arrival = start + a.at
        await asyncio.sleep(max(0.0, arrival - time.monotonic()))
        sent = time.monotonic()
        got = await send(a.request)
        result = got.pop("result")
        return {"index": a.index, "adapter": a.request.adapter, "max_new_tokens": a.request.params.max_new_tokens,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "arrival": arrival, "sent": sent, **got, "done": time.monotonic()}

    return list(await asyncio.gather(*(one(a) for a in arrivals)))


async def run_static(engine, arrivals: list[Arrival], *, max_batch_size: int, batch_wait_s: float) -> dict:
    """The static engine fed by production's batcher (``deployments/base_llm/batcher.py``), itself.

    A row's first token is the batch's step 0 (after prefill), its last the step of its last token; the caller
    has its result when the whole batch has ended, as in production.
    """
    from deployments.base_llm.batcher import MixedBatcher

    batches: list[dict] = []

    def run_batch(requests: list) -> list:
        steps: list[float] = []
        batch = {"index": len(batches), "size": len(requests), "start": time.monotonic(), "steps": steps}
        batches.append(batch)
        results = engine.generate(requests, on_step=lambda _step: steps.append(time.monotonic()))
        batch["end"] = time.monotonic()
        return [(batch, r) for r in results]

    batcher = MixedBatcher(run_batch, max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s,
                           key=lambda r: r.adapter)

    async def send(request) -> dict:
        batch, result = await batcher.submit(request)
        steps = batch["steps"]
        return {"first_token": steps[0], "last_token": steps[result.completion_tokens - 1], "batch": batch["index"],
                "result": result}

    try:
        records = await _replay(arrivals, send)
    finally:
        await batcher.close(timeout_s=1.0)
    return {"records": records, "batches": [{k: v for k, v in b.items() if k != "steps"} for b in batches]}


async def run_continuous(engine, arrivals: list[Arrival]) -> dict:
    """The continuous engine: ``engine.submit`` at each arrival; the first token is the handle's, the last the
    moment its future resolved (the loop delivers a row right after its last token)."""
    before = engine.stats()

    async def send(request) -> dict:
        handle = engine.submit(request)
        finished: list[float] = []
        handle.future.add_done_callback(lambda _f: finished.append(time.monotonic()))  # runs before the await's
        result = await asyncio.wrap_future(handle.future)
        return {"first_token": handle.first_token_at, "last_token": finished[0], "result": result}

    records = await _replay(arrivals, send)
    after = engine.stats()
    counters = {k: after.get(f"continuous_{k}", 0) - before.get(f"continuous_{k}", 0)
                for k in ("decode_steps", "prefills", "rows_joined_mid_decode")}
    return {"records": records, "engine": counters}


def open_loop_summary(run: dict) -> dict:
    """Latencies (s) and throughput of one run; adds ``ttft``, ``itl`` and ``e2e`` to each record.

    TTFT: first token - arrival. ITL: (last token - first token) / (completion tokens - 1). E2E: done - arrival.
    Throughput: completion tokens / (last done - first arrival).
    """
    records = run["records"]
    for r in records:
        r["ttft"] = r["first_token"] - r["arrival"]
        r["e2e"] = r["done"] - r["arrival"]
        n = r["completion_tokens"]
        r["itl"] = (r["last_token"] - r["first_token"]) / (n - 1) if n > 1 else None
    tokens = sum(r["completion_tokens"] for r in records)
    wall = max(r["done"] for r in records) - min(r["arrival"] for r in records)
    out = {"requests": len(records), "completion_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}
    for key in ("ttft", "itl", "e2e"):
        values = [r[key] for r in records if r[key] is not None]
        out[f"{key}_p50_s"], out[f"{key}_p95_s"] = percentile(values, 50), percentile(values, 95)
    if "batches" in run:
        out["batches"] = len(run["batches"])
        out["mean_batch_size"] = len(records) / len(run["batches"])
    if "engine" in run:  # every decode step gives each running row one token; the prefill gives the first
        steps = run["engine"]["decode_steps"]
        out["mean_running_rows"] = (tokens - len(records)) / steps if steps else None
        out["rows_joined_mid_decode"] = run["engine"]["rows_joined_mid_decode"]
    return out


def warm_up(engine, tokenizer, adapters: list[str], continuous: bool) -> None:
    """One short row per adapter and the bare base, so no run pays first-call costs (LoRA stacks, KV cache)."""
    from engine import GenerationRequest, SamplingParams

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Summarise: warm up"}], tokenize=False)
    rows = [GenerationRequest(prompt=prompt, adapter=a, params=SamplingParams(max_new_tokens=4, ignore_eos=True))
            for a in [None, *adapters]]
    if continuous:
        for handle in [engine.submit(r) for r in rows]:
            handle.future.result()
    else:
        engine.generate(rows)


def _relative(run: dict, t0: float) -> None:
    """Times of a run's records and batches as seconds from ``t0`` (the raw data's clock)."""
    for item in [*run["records"], *run.get("batches", [])]:
        for key in ("arrival", "sent", "first_token", "last_token", "done", "start", "end"):
            if key in item:
                item[key] -= t0


def open_loop(args, make_engine: Callable[[], Any], adapters: list[str]) -> dict:
    """Find the rate (or take ``args.rate``), replay its schedule on a static then a continuous engine, write
    ``open_loop.json`` / ``.csv`` under ``args.out``, print the table and the two ratio lines last.

    ``make_engine`` returns a fresh engine (its own copy of the base) with ``adapters`` loaded under those names;
    the two engines never run at the same time.
    """
    began, load_before = time.monotonic(), _loadavg()
    static_engine = make_engine()
    tokenizer = static_engine.tokenizer

    def schedule(rate: float) -> list[Arrival]:
        return open_loop_arrivals(tokenizer, adapters, rate=rate, seed=args.seed,
                                  duration=None if args.requests else args.duration, requests=args.requests,
                                  new_tokens=tuple(args.mix_new_tokens), prompt_words=tuple(args.mix_prompt_words))

    def static_at(engine, rate: float) -> dict:
        run = asyncio.run(run_static(engine, schedule(rate), max_batch_size=args.max_batch_size,
                                     batch_wait_s=args.batch_wait_s))
        run["summary"] = open_loop_summary(run)
        s = run["summary"]
        print(f"static @ {rate:g} req/s: {s['requests']} requests, p95 TTFT {s['ttft_p95_s']:.2f} s, "
              f"{s['tokens_per_s']:.0f} tok/s, mean batch {s['mean_batch_size']:.1f}", file=sys.stderr)
        return run

    warm_up(static_engine, tokenizer, adapters, continuous=False)
    search = []
    if args.rate is not None:
        rate, static = args.rate, static_at(static_engine, args.rate)
    else:
        for rate in args.rates:
            static = static_at(static_engine, rate)
            search.append({"rate": rate, **static["summary"]})
            if static["summary"]["ttft_p95_s"] > args.ttft_target:
                break
    reached = static["summary"]["ttft_p95_s"] > args.ttft_target
    static_engine.close()
    del static_engine

    engine = make_engine()
    warm_up(engine, tokenizer, adapters, continuous=True)
    continuous = asyncio.run(run_continuous(engine, schedule(rate)))
    engine.close()
    continuous["summary"] = open_loop_summary(continuous)
    s = continuous["summary"]
    print(f"continuous @ {rate:g} req/s: p95 TTFT {s['ttft_p95_s']:.2f} s, {s['tokens_per_s']:.0f} tok/s",
          file=sys.stderr)

    for run in (static, continuous):
        _relative(run, min(r["arrival"] for r in run["records"]))
    ratios = {"ttft_p95_continuous_vs_static": continuous["summary"]["ttft_p95_s"] / static["summary"]["ttft_p95_s"],
              "throughput_continuous_vs_static":
                  continuous["summary"]["tokens_per_s"] / static["summary"]["tokens_per_s"]}
    result = {"args": vars(args), "rate": rate, "ttft_target_reached": reached, "search": search,
              "summary": {"static": static["summary"], "continuous": continuous["summary"]}, "ratios": ratios,
              "load_average_before": load_before, "load_average_after": _loadavg(),
              "runtime_s": time.monotonic() - began,
              "static": {"records": static["records"], "batches": static["batches"]},
              "continuous": {"records": continuous["records"], "engine": continuous["engine"]}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_loop.json").write_text(json.dumps(result, indent=2, default=str))
    with open(out / "open_loop.csv", "w", newline="") as f:
        rows = [{"engine": name, **r} for name in ("static", "continuous") for r in result[name]["records"]]
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    print_open_loop(result, out)
    return result


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def print_open_loop(result: dict, out: Path) -> None:
    args, summary = result["args"], result["summary"]
    n = "requests" if args["requests"] else "s of arrivals"
    print(f"open loop at {result['rate']:g} req/s ({args['requests'] or args['duration']:g} {n}, seed "
          f"{args['seed']}), max_batch_size {args['max_batch_size']}, static batch wait {1000 * args['batch_wait_s']:g} ms")
    for probe in result["search"]:
        print(f"  search: static @ {probe['rate']:g} req/s p95 TTFT {probe['ttft_p95_s']:.2f} s")
    if result["search"] and not result["ttft_target_reached"]:
        print(f"  static p95 TTFT stayed <= {args['ttft_target']:g} s at every rate tried; reporting the last")
    print(f"{'engine':<11} {'reqs':>5} {'tok/s':>7} {'TTFT p50/p95 ms':>17} {'ITL p50/p95 ms':>15} "
          f"{'E2E p50/p95 ms':>15}")
    for name in ("static", "continuous"):
        s = summary[name]
        cells = [f"{1000 * s[f'{k}_p50_s']:.0f}/{1000 * s[f'{k}_p95_s']:.0f}" for k in ("ttft", "itl", "e2e")]
        print(f"{name:<11} {s['requests']:>5} {s['tokens_per_s']:>7.1f} {cells[0]:>17} {cells[1]:>15} {cells[2]:>15}")
    print(f"load average before {result['load_average_before']} after {result['load_average_after']}; "
          f"{result['runtime_s']:.0f} s; raw data {out / 'open_loop.json'}")
    for key, value in result["ratios"].items():
        print(f"{key}: {value:.3f}")


def open_loop_main(args) -> dict:
    from engine import EngineConfig, InferenceEngine
    from modelstore import ModelStore
    from modelstore.loading import load_base

    root = Path(args.store_root) if args.store_root else Path(tempfile.mkdtemp(prefix="bench-store-"))
    agent_refs, _ = prepare_store(root, extra_adapters=0)
    store = ModelStore(root)
    config = EngineConfig(max_batch_size=args.max_batch_size, max_prompt_tokens=512,
                          max_new_tokens_limit=max(args.mix_new_tokens), max_loaded_adapters=len(agent_refs))

    def make_engine():  # a separately loaded copy of the base each time
        base = load_base(store, "base_models@current", "fp32")
        engine = InferenceEngine(base.model, base.tokenizer, config)
        for ref in agent_refs:
            engine.load_adapter(ref, store.adapter_path(ref))
        return engine

    return open_loop(args, make_engine, agent_refs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store-root", help="store to use (default: a fresh seeded temp store)")
    p.add_argument("--out", default="bench/results/mixed_adapters")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-requests", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--cpus", type=int, default=2, help="torch threads for both systems (Ray actor num_cpus)")
    ol = p.add_argument_group("open loop (--open-loop): static batcher vs continuous batching, in process, no Ray")
    ol.add_argument("--open-loop", action="store_true", help="run the open-loop comparison instead of the above")
    ol.add_argument("--rate", type=float, help="Poisson arrival rate in requests/s; without it the rate is "
                    "found: the first of --rates where the static engine's p95 TTFT exceeds --ttft-target")
    ol.add_argument("--rates", type=float, nargs="+", default=list(OPEN_LOOP_RATES),
                    help="candidate rates for the search, increasing; the static run at the chosen one is reported")
    ol.add_argument("--ttft-target", type=float, default=2.0, help="static p95 TTFT (s) the search looks for")
    ol.add_argument("--duration", type=float, default=15.0, help="seconds of arrivals per run")
    ol.add_argument("--requests", type=int, help="a fixed number of arrivals per run instead of --duration")
    ol.add_argument("--seed", type=int, default=0, help="seeds the arrival gaps and the request mix")
    ol.add_argument("--max-batch-size", type=int, default=32,
                    help="rows per static batch, and rows running at once (KV slots) in the continuous engine")
    ol.add_argument("--batch-wait-s", type=float, default=0.01,
                    help="static batcher: how long it waits after the first queued request for more")
    ol.add_argument("--mix-new-tokens", type=int, nargs="+", default=[8, 32, 96],
                    help="max_new_tokens of each request drawn from these (EOS ignored)")
    ol.add_argument("--mix-prompt-words", type=int, nargs="+", default=[8, 40, 160],
                    help="words of each request's prompt drawn from these (18 / 50 / 170 prompt tokens)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.cpus)  # the baseline gets the same threads the replica gets from Ray
    if args.open_loop:
        open_loop_main(args)
        return
    result = asyncio.run(run(args))
    summary = summarise(result["rows"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        writer.writeheader()
        writer.writerows(result["rows"])
    (out / "results.json").write_text(json.dumps({"args": vars(args), "summary": summary, "memory": result["memory"],
                                                  "rows": result["rows"]}, indent=2, default=str))
    plot(summary, out / "results.png")
    print(json.dumps({"summary": summary, "memory": result["memory"]}, indent=2, default=str))
    print(f"speedup_vs_sequential_at_32: {summary['speedup_vs_sequential'].get(32, float('nan')):.2f}")

if __name__ == "__main__":
    main()
