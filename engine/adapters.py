"""Resident LoRA adapters inside one base model: load, deferred unload, in-use counts, memory.

All adapters live in one ``PeftModel`` wrapped around the single copy of the base weights. PEFT names
adapters after ``ModuleDict`` keys, which may not hold dots (``synthesizer/default@1.0`` has one), so
every adapter gets an internal slot name (``slot_<n>``) and callers only ever see their own name.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch

from .errors import AdapterLoadError, AdapterNotLoaded, TooManyAdapters
from .lora_batch import GatheredLora, LoraPlan, unsupported_reason

__all__ = ["AdapterRegistry", "BatchRouter", "validate_adapter_dir", "BASE_SLOT"]

# PEFT's reserved name for "no adapter" in a mixed-batch forward.
BASE_SLOT = "__base__"

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_LORA_ATTRS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def validate_adapter_dir(path: Path) -> None:
    """Refuse anything but a PEFT adapter directory holding safetensors weights only.

    Raises:
        AdapterLoadError: the directory is missing, lacks its config or weights, or carries pickle files.
    """
    if not path.is_dir():
        raise AdapterLoadError(f"adapter directory {str(path)!r} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise AdapterLoadError(f"adapter directory {str(path)!r} has no adapter_config.json")
    if not (path / "adapter_model.safetensors").is_file():
        raise AdapterLoadError(f"adapter directory {str(path)!r} has no adapter_model.safetensors")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        # A pickle can run code when loaded; safetensors cannot. Refuse the whole directory.
        raise AdapterLoadError(f"adapter directory {str(path)!r} holds pickle weights {pickles}; safetensors only")


@dataclass
class _Resident:
    name: str
    slot: str
    path: Path
    nbytes: int
    in_use: int = 0
    unloading: bool = False


class AdapterRegistry:
    """Tracks which adapters are resident in the base and which running batches use them.

    Args:
        base_model: the loaded Hugging Face causal LM (never copied).
        max_loaded: most resident adapters, those waiting for a deferred unload included.
        model_lock: the lock every forward pass holds; loads and deletes take it too, so weights never
            change under a running forward.
        lora_kernel: how a mixed batch applies its adapters (see ``EngineConfig.lora_kernel``).
    """

    def __init__(
        self,
        base_model: Any,
        max_loaded: int,
        model_lock: threading.RLock,
        lora_kernel: Literal["gathered", "peft"] = "gathered",
    ):
        self._base = base_model
        self._peft: Any | None = None
        self._max_loaded = max_loaded
        self._model_lock = model_lock
        self._lock = threading.Lock()
        self._residents: dict[str, _Resident] = {}
        self._next_slot = 0
        self.loads = 0
        self.unloads = 0
        self.lora_kernel = lora_kernel
        self._gathered = GatheredLora() if lora_kernel == "gathered" else None
        # Stacked weights of every resident adapter, rebuilt only when residency changes: stacking per
        # generate call cost 56 ms for 32 adapters on the tiny base (a third of a 16-token batch).
        self._plan_cache: tuple[tuple[str, ...], LoraPlan] | None = None

    @property
    def model(self) -> Any:
        """The module to call: the PeftModel while any adapter is loaded, else the bare base.

        With every adapter unloaded the PeftModel cannot run a forward at all (PEFT looks its active adapter
        up in an empty config), while the base, whose LoRA layers are left empty, computes exactly the base.
        """
        return self._peft if self.wrapped else self._base

    @property
    def wrapped(self) -> bool:
        """True while the base carries at least one adapter; every forward must then pass ``adapter_names``."""
        return self._peft is not None and bool(self._peft.peft_config)

    def _repair_active(self) -> None:
        """Point PEFT's active adapter at one that exists (called under the model lock).

        PEFT leaves ``PeftModel.active_adapter`` naming a deleted adapter when the active one is deleted
        and the LoRA layers end up with other than exactly one active adapter, and then every forward fails
        with a KeyError. Routing here never relies on PEFT's active adapter (rows name theirs, or the
        gathered hooks apply them), so any resident one will do.
        """
        names = list(self._peft.peft_config)
        if names and self._peft.active_adapter not in names:
            self._peft.set_adapter(names[0])
            if self._gathered is not None:
                self._gathered.install(self._peft)  # set_adapter must not switch PEFT's own path back on

    def load(self, name: str, path: Path) -> None:
        """Load adapter ``name`` from ``path``; a no-op when it is already resident from that path."""
        path = Path(path).resolve()
        validate_adapter_dir(path)
        with self._model_lock:
            with self._lock:
                current = self._residents.get(name)
                if current is not None:
                    if current.path != path:
                        raise AdapterLoadError(
                            f"adapter {name!r} is loaded from {str(current.path)!r}, not {str(path)!r}; unload it first"
                        )
                    current.unloading = False  # a reload cancels a pending deferred unload
                    return
                if len(self._residents) >= self._max_loaded:
                    raise TooManyAdapters(
                        f"loading adapter {name!r} would make {len(self._residents) + 1} resident adapters; "
                        f"max_loaded_adapters is {self._max_loaded}"
                    )
                slot = f"slot_{self._next_slot}"
                self._next_slot += 1
            self._inject(name, slot, path)
            nbytes = self._slot_bytes(slot)
            with self._lock:
                self._residents[name] = _Resident(name=name, slot=slot, path=path, nbytes=nbytes)
                self.loads += 1
                self._plan_cache = None

    def _inject(self, name: str, slot: str, path: Path) -> None:
        from peft import PeftConfig, PeftModel

        try:
            if self._peft is None:
                # PeftModel.from_pretrained in two steps, so a failed weight load leaves a wrapper to clean up
                # rather than LoRA layers injected into a base nobody holds.
                config = PeftConfig.from_pretrained(str(path))
                config.inference_mode = True
                self._peft = PeftModel(self._base, config, adapter_name=slot)
                self._peft.eval()
            self._peft.load_adapter(str(path), adapter_name=slot, is_trainable=False)
            self._repair_active()
        except Exception as exc:
            self._drop_failed(slot)
            raise AdapterLoadError(f"adapter {name!r} from {str(path)!r} does not load into the base: {exc}") from exc
        if self._gathered is not None:
            reason = unsupported_reason(self._peft, slot)
            if reason is not None:
                self._drop_failed(slot)
                raise AdapterLoadError(
                    f"adapter {name!r} cannot use lora_kernel 'gathered' because {reason}; configure lora_kernel='peft'"
                )
            self._gathered.install(self._peft)

    def _drop_failed(self, slot: str) -> None:
        if self._peft is not None and slot in self._peft.peft_config:
            self._peft.delete_adapter(slot)  # drop the half-injected layers of a failed load
            self._repair_active()

    def unload(self, name: str) -> None:
        """Unload ``name`` now, or as soon as the last running batch that uses it ends.

        Raises:
            AdapterNotLoaded: ``name`` is not resident (or already waiting to unload).
        """
        with self._lock:
            resident = self._residents.get(name)
            if resident is None or resident.unloading:
                raise AdapterNotLoaded(f"adapter {name!r} is not loaded; loaded: {self._visible()}")
            resident.unloading = True
            if resident.in_use:
                return
            del self._residents[name]
        self._delete(resident.slot)

    def _delete(self, slot: str) -> None:
        with self._model_lock, warnings.catch_warnings():
            # PEFT warns when the deleted adapter was its "active" one; routing here never uses that notion.
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            self._peft.delete_adapter(slot)
            self._repair_active()
        with self._lock:
            self.unloads += 1
            self._plan_cache = None

    def acquire(self, names: set[str]) -> dict[str, str]:
        """Pin adapters for one batch and return ``{name: slot}``; all or nothing.

        Raises:
            AdapterNotLoaded: one of ``names`` is not resident or is being unloaded.
        """
        with self._lock:
            missing = sorted(n for n in names if n not in self._residents or self._residents[n].unloading)
            if missing:
                raise AdapterNotLoaded(f"adapter(s) {missing} not loaded; loaded: {self._visible()}")
            for n in names:
                self._residents[n].in_use += 1
            return {n: self._residents[n].slot for n in names}

    def release(self, names: set[str]) -> None:
        """Unpin adapters after a batch; performs any unload deferred while they were in use."""
        to_delete = []
        with self._lock:
            for n in names:
                resident = self._residents[n]
                resident.in_use -= 1
                if resident.in_use == 0 and resident.unloading:
                    del self._residents[n]
                    to_delete.append(resident.slot)
        for slot in to_delete:
            self._delete(slot)

    def stacked_plan(self, needed: list[str]) -> LoraPlan:
        """The gathered plan over every resident slot (``needed`` included); cached until residency changes.

        Called under the model lock, so no load or delete runs while it is built. A running batch keeps
        the plan it started with, so a later rebuild never changes a batch's row indices mid-decode.
        """
        with self._lock:
            slots = tuple(sorted({r.slot for r in self._residents.values()} | set(needed)))
            cached = self._plan_cache
        if cached is not None and cached[0] == slots:
            return cached[1]
        plan = self._gathered.plan(self.model, list(slots))
        with self._lock:
            self._plan_cache = (slots, plan)
        return plan

    def router(self, slots: list[str]) -> BatchRouter:
        """Routing of one batch's rows to ``slots`` (the adapters it uses), for :meth:`BatchRouter.step`."""
        return BatchRouter(self, slots)

    def _visible(self) -> list[str]:
        return sorted(n for n, r in self._residents.items() if not r.unloading)

    def names(self) -> list[str]:
        """Adapters a request may name (resident and not waiting to unload), sorted."""
        with self._lock:
            return self._visible()

    def is_loaded(self, name: str) -> bool:
        """True when a request may name ``name``."""
        with self._lock:
            resident = self._residents.get(name)
            return resident is not None and not resident.unloading

    def pending_unloads(self) -> list[str]:
        """Adapters whose unload waits for running batches."""
        with self._lock:
            return sorted(n for n, r in self._residents.items() if r.unloading)

    def bytes_by_adapter(self) -> dict[str, int]:
        """Parameter bytes of every resident adapter, pending unloads included (they still hold memory)."""
        with self._lock:
            return {n: r.nbytes for n, r in sorted(self._residents.items())}

    def _slot_bytes(self, slot: str) -> int:
        total = 0
        for module in self._peft.modules():
            for attr in _LORA_ATTRS:
                container = getattr(module, attr, None)
                if container is not None and slot in container:
                    entry = container[slot]
                    params = [entry] if hasattr(entry, "element_size") else list(entry.parameters())
                    total += sum(p.numel() * p.element_size() for p in params)
        return total


class BatchRouter:
    """Sends each row of one batch through its adapter, step after step (rows may drop out between steps)."""

    def __init__(self, registry: AdapterRegistry, slots: list[str]):
        self._registry = registry
        self._slots = slots
        self._plan: LoraPlan | None = None

    @contextlib.contextmanager
    def step(self, row_slots: list[str], device: torch.device) -> Iterator[dict[str, Any]]:
        """Context for one forward pass (entered under the model lock); yields extra forward kwargs."""
        registry = self._registry
        if not registry.wrapped:
            yield {}
        elif registry._gathered is None:
            yield {"adapter_names": row_slots}
        else:
            if self._plan is None:
                # Built lazily under the model lock: the batch may have started before the first load wrapped the base.
                self._plan = registry.stacked_plan(self._slots)
            with registry._gathered.route(self._plan, row_slots, device):
                yield {}
