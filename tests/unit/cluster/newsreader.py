"""The newsreader served on the tiny vision base, for the planner, preflight and application-builder tests.

The shipped map serves the newsreader from its vision pool. :func:`served_map` writes a copy of the map with it
served (its entry otherwise as shipped: ``base_models/llava_tiny@current``, its adapter, its variant
preference) that a test may change field by field; :func:`unserved_map` a copy with it ``served: false``, for
the application without a vision pool. :func:`publish_adapter` puts a seeded random LoRA for that adapter into
a store that lacks one (the store's seed now publishes ``newsreader/llava_newsreader_v1@seed-1`` itself).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

VISION_BASE = "base_models/llava_tiny@current"
ADAPTER = "newsreader/llava_newsreader_v1@current"


def publish_adapter(store: Any, version: str = "test-1") -> str:
    """Publish a seeded random LoRA (r=4 on the language model's q/v projections) for the newsreader on the
    store's tiny vision base, unless the store already has one; returns its pinned ref."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from modelstore import NotFoundError

    try:
        return str(store.resolve(ADAPTER).ref)
    except NotFoundError:
        pass
    base = store.resolve(VISION_BASE)
    model = LlavaForConditionalGeneration.from_pretrained(base.path, dtype=torch.float32)
    torch.manual_seed(13)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                     init_lora_weights=False, lora_dropout=0.0)
    with tempfile.TemporaryDirectory(prefix="newsreader-lora-") as tmp:
        get_peft_model(model, cfg).save_pretrained(tmp, safe_serialization=True)
        store.publish_adapter("newsreader", "llava_newsreader_v1", tmp, version, base_ref=str(base.ref))
    return str(store.resolve(ADAPTER).ref)


def served_map(directory: Path, **entry: Any) -> Path:
    """Write a copy of the shipped map (and its companion file) with the newsreader served on the tiny vision
    base, ``entry`` overriding fields of its entry; return the map's path."""
    from agent_graph import default_map_path
    from agent_graph.schema import RECOMMENDED_FILE

    data = json.loads(default_map_path().read_text())
    data["agents"]["newsreader"].update({"served": True, "base": VISION_BASE, "adapter": ADAPTER, **entry})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "AGENT_MODEL_MAP.json"
    path.write_text(json.dumps(data, indent=2))
    shutil.copy(default_map_path().with_name(RECOMMENDED_FILE), directory / RECOMMENDED_FILE)
    return path


def unserved_map(directory: Path) -> Path:
    """Write a copy of the shipped map (and its companion file) with the newsreader ``served: false``."""
    return served_map(directory, served=False)


def load_served_map(directory: Path, **entry: Any) -> Any:
    """``agent_graph.load_agent_map`` of a :func:`served_map` written into ``directory``."""
    from agent_graph import load_agent_map

    return load_agent_map(served_map(directory, **entry))
