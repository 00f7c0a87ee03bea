"""Adapter residency: validation, idempotent loads, capacity, deferred unload, memory accounting."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from engine import (
    AdapterLoadError,
    AdapterNotLoaded,
    EngineConfig,
    GenerationRequest,
    InferenceEngine,
    SamplingParams,
    TooManyAdapters,
)
from tests.unit.engine.helpers import ADAPTER_NAMES, chat, make_adapter

A, B, C = ADAPTER_NAMES


def _bad_dir(kind, src, tmp_path):
    target = tmp_path / kind
    if kind == "missing":
        return target
    shutil.copytree(src, target)
    if kind == "no_config":
        (target / "adapter_config.json").unlink()
    elif kind == "no_weights":
        (target / "adapter_model.safetensors").unlink()
    elif kind == "pickle":
        (target / "adapter_model.bin").write_bytes(b"not really a pickle")
    elif kind == "wrong_shape":
        import json

        cfg = json.loads((target / "adapter_config.json").read_text())
        cfg["r"] = 4  # weights are rank 8: loading must fail, not silently mis-shape
        (target / "adapter_config.json").write_text(json.dumps(cfg))
    return target


@pytest.mark.parametrize("kind,message", [
    ("missing", "does not exist"),
    ("no_config", "no adapter_config.json"),
    ("no_weights", "no adapter_model.safetensors"),
    ("pickle", "pickle weights"),
    ("wrong_shape", "does not load into the base"),
])
def test_bad_adapter_dirs_refused(engine, adapter_dirs, tmp_path, kind, message):
    with pytest.raises(AdapterLoadError, match=message):
        engine.load_adapter("x", _bad_dir(kind, adapter_dirs[A], tmp_path))
    assert engine.loaded_adapters() == []
    engine.load_adapter(A, adapter_dirs[A])  # the base is still usable after a failed load
    assert engine.loaded_adapters() == [A]


def test_load_is_idempotent_and_capacity_is_enforced(base_model, tokenizer, adapter_dirs):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_loaded_adapters=2))
    engine.load_adapter(A, adapter_dirs[A])
    engine.load_adapter(A, str(adapter_dirs[A]))
    engine.load_adapter(B, adapter_dirs[B])
    assert engine.stats()["adapter_loads"] == 2
    with pytest.raises(TooManyAdapters, match=r"max_loaded_adapters is 2"):
        engine.load_adapter(C, adapter_dirs[C])
    with pytest.raises(AdapterLoadError, match="unload it first"):
        engine.load_adapter(A, adapter_dirs[B])
    engine.unload_adapter(A)
    engine.load_adapter(C, adapter_dirs[C])
    assert engine.loaded_adapters() == sorted([B, C])
    with pytest.raises(AdapterNotLoaded):
        engine.unload_adapter(A)


def test_memory_footprint_counts_each_adapter(loaded_engine):
    mem = loaded_engine.memory_footprint()
    assert mem["base_bytes"] > 0
    # r=8 on 7 projections of 4 layers, fp32: every adapter the same size, well under the base.
    sizes = set(mem["adapters"].values())
    assert len(mem["adapters"]) == 3 and len(sizes) == 1 and 0 < sizes.pop() < mem["base_bytes"]
    loaded_engine.unload_adapter(B)
    assert sorted(loaded_engine.memory_footprint()["adapters"]) == sorted([A, C])
    assert loaded_engine.stats()["resident_adapters"] == 2


def test_unload_during_a_batch_is_deferred_until_it_ends(loaded_engine, tokenizer):
    request = GenerationRequest(prompt=chat(tokenizer, "Write a headline"), adapter=A, params=SamplingParams(max_new_tokens=6))
    expected = loaded_engine.generate([request])[0].text
    seen = {}

    def on_step(step):
        if step != 1:
            return
        # Another thread unloads while this batch is between decode steps (not holding the model lock).
        unloader = threading.Thread(target=loaded_engine.unload_adapter, args=(A,))
        unloader.start()
        unloader.join(timeout=30)
        seen["finished"] = not unloader.is_alive()
        seen["visible"] = loaded_engine.is_loaded(A)
        seen["pending"] = loaded_engine.stats()["pending_unloads"]
        seen["resident"] = sorted(loaded_engine.memory_footprint()["adapters"])

    result = loaded_engine.generate([request], on_step=on_step)[0]
    assert seen == {"finished": True, "visible": False, "pending": [A], "resident": sorted([A, B, C])}
    assert result.text == expected  # the running row kept its adapter to the end
    assert loaded_engine.stats()["pending_unloads"] == []
    assert sorted(loaded_engine.memory_footprint()["adapters"]) == sorted([B, C])
    with pytest.raises(AdapterNotLoaded):
        loaded_engine.generate([request])


def test_reload_cancels_a_pending_unload(loaded_engine, tokenizer, adapter_dirs):
    request = GenerationRequest(prompt=chat(tokenizer, "hi"), adapter=A, params=SamplingParams(max_new_tokens=3))

    def on_step(step):
        if step == 0:
            loaded_engine.unload_adapter(A)
            loaded_engine.load_adapter(A, adapter_dirs[A])

    loaded_engine.generate([request], on_step=on_step)
    assert loaded_engine.is_loaded(A)
    assert loaded_engine.stats()["adapter_unloads"] == 0


def test_first_load_during_a_bare_batch_keeps_bare_rows_bare(engine, tokenizer, adapter_dirs):
    request = GenerationRequest(prompt=chat(tokenizer, "Write a headline"), params=SamplingParams(max_new_tokens=6))
    expected = engine.generate([request])[0].text
    result = engine.generate([request], on_step=lambda step: step == 1 and engine.load_adapter(A, adapter_dirs[A]))
    assert result[0].text == expected


def test_adapters_live_in_buffers_allocated_once(engine, tokenizer, adapter_dirs):
    names = list(adapter_dirs)
    registry = engine.adapters
    engine.load_adapter(names[0], adapter_dirs[names[0]])
    stacked = registry.stacked
    addresses = [t.data_ptr() for t in stacked.tensors()]
    # max_loaded_adapters (16) entries + the bare base's zeros, rank 8, in the model's dtype, 7 layers x 4 blocks.
    assert len(addresses) == 2 * 7 * 4 and all(t.shape[0] == 17 and t.dtype == torch.float32 for t in stacked.tensors())
    assert stacked.rank == 8 and registry.buffer_bytes == engine.stats()["lora_buffer_bytes"] > 0
    request = GenerationRequest(prompt=chat(tokenizer, "Write a headline"), adapter=names[0],
                                params=SamplingParams(max_new_tokens=6))
    first = engine.generate([request])[0].text
    for name in names[1:]:
        engine.load_adapter(name, adapter_dirs[name])
    engine.unload_adapter(names[1])
    engine.load_adapter(names[1], adapter_dirs[names[1]])  # reuses a freed entry
    # Loads and unloads copy into entries: the same storage, never a rebuild; PEFT keeps no second copy.
    assert [t.data_ptr() for t in stacked.tensors()] == addresses and stacked.reallocations == 0
    assert not registry.wrapped and engine.stats()["lora_buffer_reallocations"] == 0
    assert engine.generate([request])[0].text == first
    engine.unload_adapter(names[0])  # its entry (the first, 1) is zeroed: an adapter that is gone adds nothing
    a, b = stacked.tensors()[:2]
    assert int(a[1].count_nonzero()) == int(b[1].count_nonzero()) == 0 and int(a[2].count_nonzero()) > 0
    assert engine.stats()["loaded_adapters"] == sorted(names[1:])


def test_a_higher_rank_grows_the_buffers_and_keeps_every_adapter(base_model, tokenizer, tiny_base_dir, adapter_dirs,
                                                                   tmp_path):
    from engine import EngineConfig, InferenceEngine

    wide = make_adapter(tiny_base_dir, tmp_path / "wide", seed=7, r=16, targets=["q_proj", "v_proj"])
    prompts = [GenerationRequest(prompt=chat(tokenizer, "Write a headline"), adapter=n,
                                 params=SamplingParams(max_new_tokens=6)) for n in (ADAPTER_NAMES[0], "wide")]
    expected = []
    for name, path in ((ADAPTER_NAMES[0], adapter_dirs[ADAPTER_NAMES[0]]), ("wide", wide)):  # each alone, PEFT's path
        peft_engine = InferenceEngine(type(base_model).from_pretrained(tiny_base_dir), tokenizer,
                                      EngineConfig(lora_kernel="peft"))
        peft_engine.load_adapter(name, path)
        expected.append(peft_engine.generate([p for p in prompts if p.adapter == name])[0].text)
    engine = InferenceEngine(base_model, tokenizer)
    engine.load_adapter(ADAPTER_NAMES[0], adapter_dirs[ADAPTER_NAMES[0]])
    engine.load_adapter("wide", wide)
    stacked = engine.adapters.stacked
    assert stacked.rank == 16 and stacked.reallocations == 1  # rank 8 -> 16, the first adapter's weights kept
    assert [r.text for r in engine.generate(prompts)] == expected


def test_the_dense_and_gather_kernels_give_the_same_delta(loaded_engine, tokenizer):
    """A decode step (one token per row) with no more entries in use than rows takes the dense kernel, anything
    else the gather; both must compute the same logits, and leave bare rows exactly bare."""
    registry = loaded_engine.adapters
    stacked = registry.stacked
    names = list(ADAPTER_NAMES)
    slots = registry.acquire(set(names))
    try:
        rows = [slots[n] for n in names] + ["__base__", slots[names[0]]]  # 3 adapters, a bare row, a repeat
        ids = {"input_ids": torch.tensor([[tokenizer.convert_tokens_to_ids(t)] for t in ("a", "b", "c", "d", "e")])}
        index, top = registry.row_index(rows, torch.device("cpu"))
        assert top == 3 and index.tolist()[3] == 0

        def logits(entries):
            with torch.inference_mode(), stacked.route(index, entries):
                return registry.model(**ids).logits

        dense, gather = logits(top), logits(0)  # entries 0: never dense
        bare = registry.model(**ids).logits
        assert torch.allclose(dense, gather, atol=1e-5, rtol=1e-5)
        assert torch.equal(dense[3], bare[3]) and not torch.allclose(dense[0], bare[0])  # only adapter rows move
    finally:
        registry.release(set(names))


def test_the_decode_kernel_switches_at_runtime_and_refuses_unknown_kinds(loaded_engine, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    stacked = loaded_engine.adapters.stacked
    assert stacked.decode_kernel == "auto" and loaded_engine.stats()["lora_decode_kernel"] == "auto"
    loaded_engine.set_lora_decode_kernel("gather")
    assert stacked.decode_kernel == "gather" and loaded_engine.config.lora_decode_kernel == "gather"
    with pytest.raises(ValueError, match="lora_decode_kernel"):
        loaded_engine.set_lora_decode_kernel("fast")
    assert loaded_engine.config.lora_decode_kernel == "gather"  # a refused switch changes nothing
    loaded_engine.set_lora_decode_kernel("auto")
    assert stacked.decode_kernel == "auto"
    with pytest.raises(ValueError, match="'bgmv' cannot run here: it needs a CUDA device, not cpu"):
        loaded_engine.set_lora_decode_kernel("bgmv")  # (TRITON_INTERPRET unset)
    assert stacked.decode_kernel == "auto"


def test_a_load_that_fails_copying_into_the_buffers_leaves_nothing_behind(engine, adapter_dirs, monkeypatch):
    from engine.lora_batch import StackedLora

    registry = engine.adapters
    real_write = StackedLora.write

    def out_of_memory(self, model, slot, index):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(StackedLora, "write", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.load_adapter(ADAPTER_NAMES[0], adapter_dirs[ADAPTER_NAMES[0]])
    assert engine.loaded_adapters() == [] and not registry.wrapped  # no resident, no PEFT copy left over
    monkeypatch.setattr(StackedLora, "write", real_write)
    engine.load_adapter(ADAPTER_NAMES[0], adapter_dirs[ADAPTER_NAMES[0]])
    index, top = registry.row_index([registry.acquire({ADAPTER_NAMES[0]})[ADAPTER_NAMES[0]]], torch.device("cpu"))
    registry.release({ADAPTER_NAMES[0]})
    assert top == 1  # the failed load gave its entry back


def test_the_registry_owns_references_and_unloads_a_held_adapter_with_the_last(engine, adapter_dirs):
    a, b = ADAPTER_NAMES[0], ADAPTER_NAMES[1]
    engine.load_adapter(a, adapter_dirs[a], hold=True)  # a handle's reference, taken with the load
    engine.hold_adapter(a)  # a queued request's
    registry = engine.adapters
    slots = registry.acquire({a})  # its running row's
    assert engine.stats()["adapter_references"] == {a: 3}
    engine.release_adapter(a)
    engine.release_adapter(a)  # the handle and the request let go; the row still runs
    assert engine.is_loaded(a) and engine.stats()["adapter_references"] == {a: 1}
    registry.release(set(slots))  # the row ends: the last reference, so the adapter goes
    assert not engine.is_loaded(a) and engine.stats()["adapter_unloads"] == 1
    with pytest.raises(AdapterNotLoaded):
        engine.hold_adapter(a)
    with pytest.raises(AdapterNotLoaded, match="no reference"):
        engine.release_adapter(a)
    # A plain load stays with no reference; holding and releasing it does not unload it.
    engine.load_adapter(b, adapter_dirs[b])
    engine.hold_adapter(b)
    engine.release_adapter(b)
    assert engine.is_loaded(b)
    # A held-loaded adapter loaded plainly as well becomes one that stays.
    engine.load_adapter(a, adapter_dirs[a], hold=True)
    engine.load_adapter(a, adapter_dirs[a])
    engine.release_adapter(a)
    assert engine.is_loaded(a) and engine.adapter_load_counts() == {a: 2, b: 1}


def test_concurrent_held_loads_inject_once_and_room_waits_for_an_unload(base_model, tokenizer, adapter_dirs):
    from engine import EngineConfig, InferenceEngine

    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_loaded_adapters=1))
    a, b = ADAPTER_NAMES[0], ADAPTER_NAMES[1]
    threads = [threading.Thread(target=engine.load_adapter, args=(a, adapter_dirs[a]), kwargs={"hold": True})
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.adapter_load_counts() == {a: 1} and engine.stats()["adapter_references"] == {a: 4}
    with pytest.raises(TooManyAdapters):
        engine.load_adapter(b, adapter_dirs[b], hold=True)
    assert engine.wait_for_adapter_room(0.05) is False
    for _ in range(3):
        engine.release_adapter(a)
    freed = threading.Timer(0.2, engine.release_adapter, args=(a,))
    freed.start()
    assert engine.wait_for_adapter_room(10.0) is True  # woken by the last reference's unload
    freed.join()
    engine.load_adapter(b, adapter_dirs[b], hold=True)
    assert engine.loaded_adapters() == [b]
