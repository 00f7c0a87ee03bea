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

    .venv/bin/python bench/mixed_adapters.py            # ~3-5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store-root", help="store to use (default: a fresh seeded temp store)")
    p.add_argument("--out", default="bench/results/mixed_adapters")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-requests", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--cpus", type=int, default=2, help="torch threads for both systems (Ray actor num_cpus)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.cpus)  # the baseline gets the same threads the replica gets from Ray
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
