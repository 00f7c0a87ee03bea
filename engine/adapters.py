"""Resident LoRA adapters inside one base model: load, references, deferred unload, memory.

:class:`AdapterRegistry` is the one owner of an adapter's residency and reference count. Every user of an
adapter holds a reference: a running row (:meth:`AdapterRegistry.acquire` / :meth:`~AdapterRegistry.release`),
and whatever a serving layer holds on a caller's behalf (:meth:`~AdapterRegistry.hold` /
:meth:`~AdapterRegistry.unhold`: Serve's cached model handle, a request queued before its row exists). An
adapter loaded with ``hold=True`` is unloaded when its last reference goes; one loaded plainly stays until
:meth:`~AdapterRegistry.unload`, which waits for the references to go. The unload runs in the thread that
drops the last reference, under the model lock, so no forward ever sees it half gone; a load finding no room
raises :class:`TooManyAdapters`, and :meth:`~AdapterRegistry.wait_for_room` waits for an unload.

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
from .lora_batch import StackedLora, unsupported_reason

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
    index: int = 0  # its entry in the stacked LoRA buffers (lora_kernel "gathered"); 0 with "peft"
    refs: int = 0  # running rows + holds
    unloading: bool = False  # unload() asked: hidden from new users, gone when refs reach 0
    when_idle: bool = False  # loaded with hold=True: unloaded when refs reach 0


class AdapterRegistry:
    """The one owner of which adapters are resident in the base and of who references them (rows, holds).

    Args:
        base_model: the loaded Hugging Face causal LM (never copied).
        max_loaded: most resident adapters, those waiting for a deferred unload included.
        model_lock: the lock every forward pass holds; loads and deletes take it too, so weights never
            change under a running forward.
        lora_kernel: how a mixed batch applies its adapters (see ``EngineConfig.lora_kernel``).
        dtype: the compute dtype, of the stacked LoRA buffers (``lora_kernel="gathered"``).
        decode_kernel: how decode steps apply the stacked adapters (``EngineConfig.lora_decode_kernel``).
    """

    def __init__(
        self,
        base_model: Any,
        max_loaded: int,
        model_lock: threading.RLock,
        lora_kernel: Literal["gathered", "peft"] = "gathered",
        dtype: torch.dtype = torch.float32,
        decode_kernel: str = "auto",
    ):
        self._base = base_model
        self._peft: Any | None = None
        self._max_loaded = max_loaded
        self._model_lock = model_lock
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when an adapter is deleted
        self._residents: dict[str, _Resident] = {}
        self.load_counts: dict[str, int] = {}  # injections per adapter name (a reload after an unload counts again)
        self._next_slot = 0
        self.loads = 0
        self.unloads = 0
        self.lora_kernel = lora_kernel
        # With "gathered", the stacked buffers hold the only copy of every resident adapter (PEFT's is deleted
        # once copied); an adapter's index is its entry there, free indices are reused.
        self._stacked = StackedLora(max(1, max_loaded), dtype, decode_kernel) if lora_kernel == "gathered" else None
        self._free_indices = list(range(max(1, max_loaded), 0, -1))
        self._index_of_slot: dict[str, int] = {}

    @property
    def model(self) -> Any:
        """The module to call: the PeftModel while PEFT holds any adapter, else the base.

        With no adapter in PEFT (every one unloaded, or every one moved into the stacked buffers) the PeftModel
        cannot run a forward at all (PEFT looks its active adapter up in an empty config), while the base,
        whose LoRA layers are left empty, computes the base -- plus the stacked buffers' delta when routed.
        """
        return self._peft if self.wrapped else self._base

    @property
    def wrapped(self) -> bool:
        """True while PEFT holds at least one adapter (``lora_kernel="peft"``); every forward must then pass
        ``adapter_names``."""
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
            if self._stacked is not None:
                self._stacked.install(self._peft)  # set_adapter must not switch PEFT's own path back on

    def load(self, name: str, path: Path, *, hold: bool = False) -> None:
        """Load adapter ``name`` from ``path``; a no-op when it is already resident from that path.

        Args:
            hold: also take a reference (atomically with the load, so no unload can come between); an adapter
                first loaded this way is unloaded when its last reference goes. A plain load makes it stay.

        Raises:
            AdapterLoadError: a bad directory, weights that do not fit, or ``name`` resident from another path.
            TooManyAdapters: ``max_loaded_adapters`` are resident (see :meth:`wait_for_room`).
        """
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
                    if hold:
                        current.refs += 1
                    else:
                        current.when_idle = False  # loaded on purpose: it stays
                    return
                if len(self._residents) >= self._max_loaded:
                    raise TooManyAdapters(
                        f"loading adapter {name!r} would make {len(self._residents) + 1} resident adapters; "
                        f"max_loaded_adapters is {self._max_loaded}"
                    )
                slot = f"slot_{self._next_slot}"
                self._next_slot += 1
                index = self._free_indices.pop() if self._stacked is not None else 0
            try:
                self._inject(name, slot, path)  # on failure it drops what it injected
                nbytes = self._slot_bytes(slot)
                if self._stacked is not None:
                    try:
                        self._stacked.write(self._peft, slot, index)
                    except BaseException:  # e.g. out of memory growing the buffers: nothing of it may stay
                        self._stacked.clear(index)
                        self._drop_failed(slot)
                        raise
                    self._drop_peft_copy(slot)
            except BaseException:
                if self._stacked is not None:
                    with self._lock:
                        self._free_indices.append(index)
                raise
            with self._lock:
                self._residents[name] = _Resident(name=name, slot=slot, path=path, nbytes=nbytes, index=index,
                                                  refs=int(hold), when_idle=hold)
                self._index_of_slot[slot] = index
                self.loads += 1
                self.load_counts[name] = self.load_counts.get(name, 0) + 1

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
        if self._stacked is not None:
            reason = unsupported_reason(self._peft, slot)
            if reason is not None:
                self._drop_failed(slot)
                raise AdapterLoadError(
                    f"adapter {name!r} cannot use lora_kernel 'gathered' because {reason}; configure lora_kernel='peft'"
                )
            self._stacked.install(self._peft)

    def _drop_failed(self, slot: str) -> None:
        if self._peft is not None and slot in self._peft.peft_config:
            self._peft.delete_adapter(slot)  # drop the half-injected layers of a failed load
            self._repair_active()

    def _drop_peft_copy(self, slot: str) -> None:
        # The stacked buffers now hold the adapter; PEFT's layers keep no weights of it (its wrappers stay).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            self._peft.delete_adapter(slot)
        self._repair_active()

    def unload(self, name: str) -> None:
        """Unload ``name`` now, or as soon as its last reference (running rows, holds) goes.

        Raises:
            AdapterNotLoaded: ``name`` is not resident (or already waiting to unload).
        """
        with self._lock:
            resident = self._residents.get(name)
            if resident is None or resident.unloading:
                raise AdapterNotLoaded(f"adapter {name!r} is not loaded; loaded: {self._visible()}")
            resident.unloading = True
        self._drop_if_idle(resident)

    def hold(self, name: str) -> None:
        """Take a reference to resident ``name`` for a caller (a cached handle, a queued request).

        Raises:
            AdapterNotLoaded: ``name`` is not resident or is being unloaded.
        """
        with self._lock:
            resident = self._residents.get(name)
            if resident is None or resident.unloading:
                raise AdapterNotLoaded(f"adapter {name!r} is not loaded; loaded: {self._visible()}")
            resident.refs += 1

    def unhold(self, name: str) -> None:
        """Drop a reference :meth:`hold` (or ``load(hold=True)``) took; the last one may unload the adapter, in
        this thread, under the model lock (call it off an event loop).

        Raises:
            AdapterNotLoaded: ``name`` holds no reference.
        """
        with self._lock:
            resident = self._residents.get(name)
            if resident is None or resident.refs <= 0:
                raise AdapterNotLoaded(f"adapter {name!r} holds no reference to drop")
            resident.refs -= 1
        self._drop_if_idle(resident)

    def wait_for_room(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until fewer than ``max_loaded_adapters`` are resident; True if there is room."""
        with self._room:
            return self._room.wait_for(lambda: len(self._residents) < self._max_loaded, timeout_s)

    def _drop_if_idle(self, resident: _Resident) -> None:
        # Checked again under the model lock: a load(hold=True) may have taken a reference meanwhile.
        with self._lock:
            if not (resident.refs == 0 and (resident.unloading or resident.when_idle)):
                return
        with self._model_lock:
            with self._lock:
                idle = (self._residents.get(resident.name) is resident and resident.refs == 0
                        and (resident.unloading or resident.when_idle))
                if idle:
                    del self._residents[resident.name]
            if idle:
                self._delete(resident)

    def _delete(self, resident: _Resident) -> None:
        with self._model_lock:
            if self._stacked is not None:
                self._stacked.clear(resident.index)
            else:
                with warnings.catch_warnings():
                    # PEFT warns when the deleted adapter was its "active" one; routing never uses that notion.
                    warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                    self._peft.delete_adapter(resident.slot)
                    self._repair_active()
        with self._room:
            self.unloads += 1
            self._index_of_slot.pop(resident.slot, None)
            if self._stacked is not None:
                self._free_indices.append(resident.index)
            self._room.notify_all()

    def acquire(self, names: set[str]) -> dict[str, str]:
        """Take a reference to each adapter for one batch and return ``{name: slot}``; all or nothing.

        Raises:
            AdapterNotLoaded: one of ``names`` is not resident or is being unloaded.
        """
        with self._lock:
            missing = sorted(n for n in names if n not in self._residents or self._residents[n].unloading)
            if missing:
                raise AdapterNotLoaded(f"adapter(s) {missing} not loaded; loaded: {self._visible()}")
            for n in names:
                self._residents[n].refs += 1
            return {n: self._residents[n].slot for n in names}

    def release(self, names: set[str]) -> None:
        """Drop the references :meth:`acquire` took; performs an unload that waited for them."""
        with self._lock:
            residents = [self._residents[n] for n in names]
            for resident in residents:
                resident.refs -= 1
        for resident in residents:
            self._drop_if_idle(resident)

    def row_index(self, row_slots: list[str], device: torch.device) -> tuple[torch.Tensor | None, int]:
        """Each row's entry in the stacked buffers (0: the bare base) and the highest of them; ``(None, 0)`` when
        every row is bare. Decided on the host, so a step never waits on the device to learn it. The rows'
        adapters are pinned (acquired), so their entries cannot be freed or reused under a running batch."""
        index = self.row_entries(row_slots)
        top = max(index, default=0)
        return (torch.tensor(index, dtype=torch.long).to(device, non_blocking=True), top) if top else (None, 0)

    def row_entries(self, row_slots: list[str]) -> list[int]:
        """Each row's entry in the stacked buffers (0: the bare base, and every row without stacked buffers)."""
        with self._lock:
            return [self._index_of_slot.get(s, 0) for s in row_slots]

    def set_decode_kernel(self, kind: str) -> None:
        """Apply the stacked adapters in decode steps with ``kind`` (``EngineConfig.lora_decode_kernel``) from the
        next step on; a no-op without stacked buffers."""
        if self._stacked is not None:
            with self._model_lock:
                self._stacked.decode_kernel = kind

    @property
    def stacked(self) -> StackedLora | None:
        """The stacked LoRA buffers (``lora_kernel="gathered"``), or None."""
        return self._stacked

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the stacked LoRA buffers (0 with ``lora_kernel="peft"``, whose adapters live in PEFT)."""
        return self._stacked.nbytes if self._stacked is not None else 0

    @property
    def buffer_reallocations(self) -> int:
        """Times a load rebuilt live stacked buffers (a higher rank, or a layer no earlier adapter touched)."""
        return self._stacked.reallocations if self._stacked is not None else 0

    def router(self) -> BatchRouter:
        """Routing of one batch's rows to their adapters, for :meth:`BatchRouter.step`."""
        return BatchRouter(self, self._stacked)

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

    def references(self) -> dict[str, int]:
        """References per resident adapter (running rows + holds), pending unloads included."""
        with self._lock:
            return {n: r.refs for n, r in sorted(self._residents.items())}

    def pending_unloads(self) -> list[str]:
        """Adapters whose unload waits for their references to go."""
        with self._lock:
            return sorted(n for n, r in self._residents.items() if r.unloading)

    def bytes_by_adapter(self) -> dict[str, int]:
        """Parameter bytes of every resident adapter as PEFT loads it, pending unloads included (they still hold
        memory; with ``lora_kernel="gathered"`` the stacked buffers hold them, :attr:`buffer_bytes`)."""
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

    def __init__(self, registry: AdapterRegistry, stacked: StackedLora | None):
        self._registry = registry
        self._stacked = stacked

    @contextlib.contextmanager
    def step(self, row_slots: list[str], device: torch.device) -> Iterator[dict[str, Any]]:
        """Context for one forward pass (entered under the model lock); yields extra forward kwargs."""
        if self._stacked is not None:
            with self._stacked.route(*self._registry.row_index(row_slots, device)):
                yield {}
        elif self._registry.wrapped:
            yield {"adapter_names": row_slots}
        else:
            yield {}
