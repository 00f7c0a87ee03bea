"""Resumable checkpoints without pickles: LoRA weights, AdamW state and RNG state in safetensors, the rest JSON.

``<output_dir>/checkpoint/`` holds ``lora.safetensors``, ``optimizer.safetensors`` and ``state.json``
(step, config fingerprint, data hash, the optimizer's param groups). Data order is a pure function of
(seed, epoch), so step + RNG state is all a resume needs to continue the same run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import ResumeError

__all__ = ["CHECKPOINT_DIR", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_DIR = "checkpoint"


def _lora_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: Path, model: Any, optimizer: torch.optim.Optimizer, step: int,
                    fingerprint: str, data_hash: str, losses: list[float]) -> Path:
    """Write the checkpoint into a temporary directory, then rename it over the old one."""
    final = Path(output_dir) / CHECKPOINT_DIR
    tmp = Path(output_dir) / f".{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_lora_state(model), tmp / "lora.safetensors")
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, tmp / "optimizer.safetensors")
    state = {"step": step, "fingerprint": fingerprint, "data_hash": data_hash, "losses": losses,
             "param_groups": opt["param_groups"], "scalars": scalars}
    (tmp / "state.json").write_text(json.dumps(state))
    old = Path(output_dir) / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(output_dir: Path, model: Any, optimizer: torch.optim.Optimizer, fingerprint: str,
                    data_hash: str) -> tuple[int, list[float]] | None:
    """Restore a checkpoint into ``model`` and ``optimizer``; return ``(step, losses)`` or None when absent.

    Raises:
        ResumeError: the checkpoint was written by another configuration or for other data.
    """
    path = Path(output_dir) / CHECKPOINT_DIR
    if not (path / "state.json").exists():
        return None
    state = json.loads((path / "state.json").read_text())
    if state["fingerprint"] != fingerprint:
        raise ResumeError(f"checkpoint {path} was written with other hyper-parameters "
                          f"(fingerprint {state['fingerprint'][:12]} != {fingerprint[:12]}); remove it or drop --resume")
    if state["data_hash"] != data_hash:
        raise ResumeError(f"checkpoint {path} was written for other data "
                          f"(data hash {state['data_hash'][:12]} != {data_hash[:12]}); remove it or drop --resume")
    lora = load_file(path / "lora.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in lora.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    tensors = load_file(path / "optimizer.safetensors")
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("rng."):
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = value
    for key, value in state["scalars"].items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state["step"], list(state["losses"])
