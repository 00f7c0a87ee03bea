"""Mixed-adapter LoRA in preallocated stacked buffers: each row gathers its adapter's A/B, one ``bmm`` applies them.

PEFT's own mixed batch (``adapter_names=[...]``) installs a hook on every LoRA layer per forward call
and loops over the batch's distinct adapters in every layer. Measured on the tiny base (32 rows, 3
adapters + bare base, 2 CPU cores) that costs 2.5x the decode time of this module, which instead keeps,
per LoRA layer, two buffers allocated once:

* ``A`` of ``[capacity + 1, rank, in]`` and ``B`` of ``[capacity + 1, rank, out]`` in the model's compute
  dtype; entry 0 stays zero (bare-base rows), entry ``k`` holds the adapter resident at index ``k`` with
  its scaling folded into B; a lower rank is zero-padded, which adds exact zeros.
* Loading an adapter copies its weights into its index (:meth:`StackedLora.write`); unloading zeroes it
  (:meth:`clear`). Neither allocates, so the buffers keep their addresses for a captured decode step; only
  an adapter of a higher rank than any before grows them (counted in :attr:`reallocations`), and so does
  the first adapter to touch a layer no earlier one did.
* Per forward, each row's delta ``(x @ A_k^T) @ B_k`` for its entry ``k`` comes from one of two kernels:
  **dense** for a decode step whose entries in use are no more than its rows (the usual case: 8 adapters, 32
  rows) -- ``x @ A_flat^T`` over every used entry's stacked ranks, a mask (built once per step, on the host's
  knowledge of the highest entry) that zeroes all but the row's own block, then ``@ B_flat``: each entry's
  weights are read once per layer, no copy; **gather** otherwise -- ``A[index]`` / ``B[index]`` per row and two
  ``bmm`` (a prefill's many tokens per row amortise the copy; measured in bench/RESULTS.md).
  The masked-off blocks add exact zeros, so both compute the same sum; a row's arithmetic never mixes with
  its neighbours', so a row gives the same tokens alone or mixed. With ``decode_kernel="bgmv"`` decode steps
  instead run the Triton BGMV kernels of ``lora_kernels`` (each row reads its own entry, nothing copied,
  nothing read for bare rows); prefill still gathers.

PEFT still parses and injects an adapter (its key names, ``rank_pattern``, ``alpha_pattern``, rsLoRA
scaling), then the registry copies it here and deletes PEFT's copy: the buffers are the only copy of an
adapter's weights, so resident adapters cost what the planner reserves for them (``adapters_mb``: the
largest adapter's size per slot). PEFT's layers stay in place as the hooks' anchors with their own
adapter path switched off (``_disable_adapters``). Plain LoRA on linear layers only: DoRA and other
variants, LoRA on embeddings and ``lora_bias`` are refused at load.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from .lora_kernels import lora_bgmv

__all__ = ["StackedLora", "unsupported_reason", "lora_layers"]

_BGMV = "bgmv"  # the active route's marker for the Triton kernels


def lora_layers(model: Any) -> list[Any]:
    """Every PEFT LoRA layer of ``model``, in module order."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def unsupported_reason(model: Any, slot: str) -> str | None:
    """Why PEFT adapter ``slot`` cannot take the stacked path, or None when it can."""
    for layer in lora_layers(model):
        if slot in getattr(layer, "lora_embedding_A", {}):
            return "it applies LoRA to an embedding layer"
        if slot in getattr(layer, "lora_variant", {}):
            return f"it uses a LoRA variant ({type(layer.lora_variant[slot]).__name__}, e.g. DoRA)"
        if slot in layer.lora_A and getattr(layer.lora_B[slot], "bias", None) is not None:
            return "it trains a LoRA bias (lora_bias=True)"
        if slot in layer.lora_A and not isinstance(layer.lora_A[slot], torch.nn.Linear):
            return f"its LoRA A of {type(layer).__name__} is not a linear layer"
    return None


class StackedLora:
    """The stacked A/B buffers of every LoRA layer, the hooks that apply them, and the active row index.

    Args:
        capacity: adapters resident at once (indices ``1..capacity``; 0 is the bare base).
        dtype: of the buffers: the model's compute dtype (a bf16 base gets bf16 adapters).
        decode_kernel: how decode steps apply the adapters (``EngineConfig.lora_decode_kernel``): ``"auto"`` the
            dense kernel when it reads less, else the gather; ``"gather"`` always the gather; ``"bgmv"`` the
            Triton kernels of ``lora_kernels`` (the caller checked they can run on the device).
    """

    def __init__(self, capacity: int, dtype: torch.dtype, decode_kernel: str = "auto"):
        self.capacity = capacity
        self.dtype = dtype
        self.decode_kernel = decode_kernel
        self.rank = 0
        self.reallocations = 0
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(layer) -> (A, B)
        # (index, entries, dense mask | _BGMV | None for the gather)
        self._active: tuple[torch.Tensor, int, torch.Tensor | str | None] | None = None

    # -- residency ------------------------------------------------------------------------------------------

    def install(self, model: Any) -> None:
        """Switch PEFT's own adapter path off and hook every LoRA layer; idempotent, call after each injection."""
        for layer in lora_layers(model):
            # Set the flag directly: enable_adapters(False) also toggles requires_grad, needless at inference.
            layer._disable_adapters = True
            if not getattr(layer, "_stacked_lora_hooked", False):
                layer.register_forward_hook(self._hook, with_kwargs=True)
                layer._stacked_lora_hooked = True

    def write(self, model: Any, slot: str, index: int) -> None:
        """Copy PEFT adapter ``slot`` of ``model`` into ``index`` of every layer's buffers (B times its scaling).

        Called under the model lock, so no forward reads a half-written adapter.
        """
        if not 1 <= index <= self.capacity:
            raise ValueError(f"index {index} is outside 1..{self.capacity}")
        layers = [layer for layer in lora_layers(model) if slot in layer.lora_A]
        rank = max((layer.lora_A[slot].weight.shape[0] for layer in layers), default=0)
        fresh = [layer for layer in layers if id(layer) not in self._buffers]
        if self._buffers and (rank > self.rank or fresh):
            self.reallocations += 1  # the live buffers change: a captured step would be captured again
        if rank > self.rank:
            self._grow(rank)
        for layer in fresh:
            self._allocate(layer)
        self.clear(index)
        with torch.no_grad():
            for layer in layers:
                a, b = self._buffers[id(layer)]
                r = layer.lora_A[slot].weight.shape[0]
                a[index, :r].copy_(layer.lora_A[slot].weight)
                b[index, :r].copy_((layer.lora_B[slot].weight * layer.scaling[slot]).T)

    def clear(self, index: int) -> None:
        """Zero ``index`` in every buffer (an unloaded adapter adds nothing, a reused index starts clean)."""
        with torch.no_grad():
            for a, b in self._buffers.values():
                a[index].zero_()
                b[index].zero_()

    def _allocate(self, layer: Any) -> None:
        ref = next(iter(layer.lora_A.values())).weight
        in_features = ref.shape[1]
        out_features = next(iter(layer.lora_B.values())).weight.shape[0]
        n = self.capacity + 1
        self._buffers[id(layer)] = (torch.zeros((n, self.rank, in_features), dtype=self.dtype, device=ref.device),
                                    torch.zeros((n, self.rank, out_features), dtype=self.dtype, device=ref.device))

    def _grow(self, rank: int) -> None:
        # A higher rank than any resident adapter's: every buffer is rebuilt wider, its contents kept.
        for key, pair in list(self._buffers.items()):
            wide = tuple(torch.zeros((t.shape[0], rank, t.shape[2]), dtype=t.dtype, device=t.device) for t in pair)
            for old, new in zip(pair, wide):
                new[:, : self.rank].copy_(old)
            self._buffers[key] = wide
        self.rank = rank

    def tensors(self) -> list[torch.Tensor]:
        """Every buffer (A then B per layer): what a captured step reads."""
        return [t for pair in self._buffers.values() for t in pair]

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold (every index, used or not)."""
        return sum(t.numel() * t.element_size() for pair in self._buffers.values() for t in pair)

    # -- forward ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def route(self, index: torch.Tensor | None, entries: int = 0) -> Iterator[None]:
        """Apply the buffers with ``index[row]`` as each row's adapter for the forward passes inside this block.

        Args:
            index: each row's entry (0: bare base), on the model's device; None (bare-base rows only, decided by
                the caller on the host) skips the LoRA work entirely.
            entries: the highest entry ``index`` holds (known on the host), which bounds the dense kernel.

        The caller holds the model lock, so one index is active at a time.
        """
        if index is None or not self._buffers:
            self._active = None
        elif self.decode_kernel == "bgmv":
            self._active = (index, entries, _BGMV)
        elif self.decode_kernel == "auto" and 0 < entries <= index.shape[0]:
            # Dense may serve this step's decode forwards: the mask that keeps each row's own block, built once.
            rank = self.rank
            blocks = torch.arange(rank * entries, device=index.device) // rank + 1
            self._active = (index, entries, (blocks[None, :] == index[:, None]).to(self.dtype)[:, None, :])
        else:
            self._active = (index, entries, None)
        try:
            yield
        finally:
            self._active = None

    def _hook(self, layer: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
        active = self._active
        if active is None:
            return None
        weights = self._buffers.get(id(layer))
        if weights is None:
            return None
        a, b = weights
        x = args[0] if args else kwargs["x"]
        x3 = x.to(a.dtype).reshape(x.shape[0], -1, x.shape[-1])
        index, entries, mask = active
        if mask is _BGMV and x3.shape[1] == 1:
            # Triton BGMV: each row reads its own entry's A and B from the buffers and adds into the output.
            if output.dtype != a.dtype or not output.is_contiguous():  # (a reshape would then write into a copy)
                delta = torch.zeros((x3.shape[0], b.shape[-1]), dtype=a.dtype, device=x.device)
                lora_bgmv(x3[:, 0], a, b, index, delta)
                return output + delta.reshape(output.shape).to(output.dtype)
            lora_bgmv(x3[:, 0], a, b, index, output.view(x3.shape[0], -1))
            return output
        if isinstance(mask, torch.Tensor) and x3.shape[1] == 1:
            # Dense (a decode step, no more entries than rows): each entry's weights are read once, in two plain
            # matmuls over the entries' stacked ranks (views: the buffers are contiguous); the mask keeps each
            # row's own block.
            a_flat = a[1 : entries + 1].reshape(-1, a.shape[-1])
            b_flat = b[1 : entries + 1].reshape(-1, b.shape[-1])
            delta = torch.matmul(torch.matmul(x3, a_flat.T) * mask, b_flat)
        else:
            # Gather (prefill, whose many tokens per row amortise the copy; or fewer rows than entries).
            delta = torch.bmm(torch.bmm(x3, a[index].transpose(1, 2)), b[index])
        return output + delta.reshape(output.shape).to(output.dtype)
