"""``justnews preflight``: the seed plan's host-readiness checks, one pass/fail line each.

Checks, in order (a later check that needs an earlier one's result is skipped when that one failed):

1. ``cuda``       -- CUDA visible to torch, the device count and the driver version.
2. ``bitsandbytes`` -- importable, its native library loaded for this CUDA (``BNB_CUDA_VERSION`` honoured:
   the library it names must exist and be the one loaded).
3. ``store_root`` -- ``MODEL_STORE_ROOT`` (or ``--store-root``) exists and is writable.
4. ``store``      -- the ModelStore health check (manifests, current links, checksums unless ``--fast``).
5. ``ray``        -- the Ray cluster is reachable; its GPU inventory is read (``--ray-address``).
6. ``plan``       -- the placement plan fits the GPU memory available (Ray's inventory, else this
   host's GPUs at their *free* memory, else ``--inventory``). Without ``--demands`` it plans the agent map's
   base pools (``--map``, default the packaged one) as ``build_app`` would: every base a served agent names
   must be in the store with a variant that fits -- the newsreader's vision base too, when the map serves it.

``--no-gpu`` is for CPU-only deployments: CUDA is then not required and the plan runs in CPU mode.
Exit code 0 when nothing failed (warnings and skips allowed), 1 otherwise.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

__all__ = ["CheckResult", "PreflightReport", "run_preflight", "check_cuda", "check_bitsandbytes",
           "check_store_root", "check_store", "check_ray", "check_plan", "check_map_plan", "format_report"]

Status = Literal["pass", "warn", "fail", "skip"]


class CheckResult(BaseModel):
    """The outcome of one check."""

    name: str = Field(description="Check name (cuda, bitsandbytes, store_root, store, ray, plan).")
    status: Status = Field(description="pass / warn (not fatal) / fail / skip (not applicable or blocked).")
    detail: str = Field(description="One line: what was found, or what is wrong and the limit it broke.")
    data: dict[str, Any] = Field(default_factory=dict, description="Machine-readable facts behind the line.")


class PreflightReport(BaseModel):
    """Every check's result; ``ok`` when none failed."""

    checks: list[CheckResult] = Field(description="Results in the order run.")

    @property
    def ok(self) -> bool:
        """Whether no check failed."""
        return all(c.status != "fail" for c in self.checks)

    def get(self, name: str) -> CheckResult | None:
        """The result named ``name``, if that check ran."""
        return next((c for c in self.checks if c.name == name), None)


def check_cuda(require_gpu: bool = True) -> CheckResult:
    """CUDA devices visible to torch, with the driver version."""
    import torch

    if not torch.cuda.is_available():
        if not require_gpu:
            return CheckResult(name="cuda", status="skip", detail="no CUDA device; not required (--no-gpu)")
        return CheckResult(name="cuda", status="fail", detail=f"no CUDA device visible to torch {torch.__version__} "
                           f"(built for CUDA {torch.version.cuda}); check the driver and CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    gpus = [{"index": i, "name": torch.cuda.get_device_name(i),
             "memory_mb": torch.cuda.get_device_properties(i).total_memory // 2**20} for i in range(count)]
    driver = None
    try:
        driver = torch._C._cuda_getDriverVersion()  # e.g. 12040 for CUDA 12.4 driver API
    except Exception:  # noqa: BLE001 -- informational only
        pass
    driver_s = f"{driver // 1000}.{driver % 1000 // 10}" if driver else "unknown"
    names = ", ".join(f"{g['name']} {g['memory_mb']} MiB" for g in gpus)
    return CheckResult(name="cuda", status="pass", detail=f"{count} GPU(s): {names}; driver CUDA {driver_s}, "
                       f"torch CUDA {torch.version.cuda}",
                       data={"gpus": gpus, "driver_cuda": driver_s, "torch_cuda": torch.version.cuda})


def check_bitsandbytes(require_gpu: bool = True) -> CheckResult:
    """bitsandbytes imports and its native library matches this CUDA (or BNB_CUDA_VERSION)."""
    import torch

    override = os.environ.get("BNB_CUDA_VERSION")
    try:
        import bitsandbytes
        from bitsandbytes import cextension
    except Exception as exc:  # noqa: BLE001 -- any import failure is the finding
        return CheckResult(name="bitsandbytes", status="fail", detail=f"import failed: {type(exc).__name__}: {exc}")
    backend = getattr(cextension, "BNB_BACKEND", "?")
    lib = getattr(cextension, "lib", None)
    dll = getattr(lib, "_lib", None)
    loaded = Path(getattr(dll, "_name", "") or "").name or None
    data = {"version": bitsandbytes.__version__, "backend": backend, "library": loaded,
            "torch_cuda": torch.version.cuda, "BNB_CUDA_VERSION": override}
    head = f"bitsandbytes {bitsandbytes.__version__}, backend {backend}"
    if not torch.cuda.is_available():
        status: Status = "fail" if require_gpu else "pass"
        return CheckResult(name="bitsandbytes", status=status, data=data,
                           detail=f"{head}: CPU only (int8/nf4 run on the CPU)" if status == "pass"
                           else f"{head}: no CUDA, so no CUDA kernels to check")
    if lib is None or type(lib).__name__.startswith("ErrorHandler") or loaded is None:
        return CheckResult(name="bitsandbytes", status="fail", data=data,
                           detail=f"{head}: native CUDA library not loaded (BNB_CUDA_VERSION={override}, "
                                  f"torch CUDA {torch.version.cuda}); python -m bitsandbytes explains why")
    if override:
        want = f"libbitsandbytes_cuda{override}"
        if not loaded.startswith(want):
            return CheckResult(name="bitsandbytes", status="fail", data=data,
                               detail=f"{head}: BNB_CUDA_VERSION={override} names {want}* but {loaded} is loaded")
        torch_cuda = (torch.version.cuda or "").replace(".", "")
        if torch_cuda != override:
            return CheckResult(name="bitsandbytes", status="warn", data=data,
                               detail=f"{head}: {loaded} (BNB_CUDA_VERSION={override}) with torch CUDA "
                                      f"{torch.version.cuda}: intended override, keep the driver >= both")
    return CheckResult(name="bitsandbytes", status="pass", detail=f"{head}: {loaded}", data=data)


def check_store_root(root: Path) -> CheckResult:
    """The store root exists and this user can create files in it."""
    source = "--store-root" if os.environ.get("MODEL_STORE_ROOT") != str(root) else "MODEL_STORE_ROOT"
    if not root.is_dir():
        return CheckResult(name="store_root", status="fail", detail=f"{root} ({source}) does not exist or is not "
                           "a directory", data={"root": str(root)})
    try:
        with tempfile.NamedTemporaryFile(dir=root, prefix=".preflight-"):
            pass
    except OSError as exc:
        return CheckResult(name="store_root", status="fail", detail=f"{root} is not writable: {exc}",
                           data={"root": str(root)})
    usage = os.statvfs(root)
    free_gb = usage.f_bavail * usage.f_frsize / 2**30
    return CheckResult(name="store_root", status="pass", detail=f"{root} ({source}) writable, {free_gb:.1f} GiB free",
                       data={"root": str(root), "free_gb": round(free_gb, 1)})


def check_store(root: Path, checksums: bool = True) -> CheckResult:
    """The ModelStore's own health check (``modelstore check``)."""
    from modelstore import ModelStore

    problems = ModelStore(root).check(checksums=checksums)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return CheckResult(name="store", status="fail", detail=f"{problems[0]}{more}", data={"problems": problems})
    how = "checksums verified" if checksums else "manifests only (--fast)"
    return CheckResult(name="store", status="pass", detail=f"store check passed, {how}")


def _with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:.0f}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def check_ray(address: str | None, gpu_memory_mb: int | None = None, timeout_s: float = 30.0) -> CheckResult:
    """Connect to the Ray cluster and read its inventory (nodes, GPUs and their declared memory)."""
    from .discover import discover_from_ray

    where = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        inventory = _with_timeout(lambda: discover_from_ray(address, gpu_memory_mb=gpu_memory_mb), timeout_s)
    except Exception as exc:  # noqa: BLE001 -- unreachable, refused, no memory label: all are the finding
        return CheckResult(name="ray", status="fail", detail=f"Ray at {where}: {type(exc).__name__}: {exc}")
    return CheckResult(name="ray", status="pass", detail=f"Ray at {where}: {inventory.summary()}",
                       data={"inventory": inventory.model_dump(mode="json")})


def check_plan(inventory: Any, demands: list[Any], policy: Any, source: str) -> CheckResult:
    """Plan the demands on the inventory: fails with the planner's numbers when they do not fit."""
    from .errors import PlanningError
    from .planner import plan

    try:
        result = plan(inventory, demands, policy)
    except PlanningError as exc:
        return CheckResult(name="plan", status="fail", detail=f"{source}: {exc}")
    return _plan_passed(result, source)


def check_map_plan(inventory: Any, store_root: Path, map_path: str | None, policy: Any, source: str) -> CheckResult:
    """Plan the agent map's base pools over the store (every base a served agent names, named bases included);
    fails naming a base or adapter the store lacks, or with the planner's numbers."""
    from agent_graph import AgentMapError, load_agent_map
    from modelstore import ModelStore

    from .errors import PlanningError
    from .pools import needs_from_map, plan_pools

    try:
        bases, needs = needs_from_map(load_agent_map(map_path), ModelStore(store_root))
        _, result = plan_pools(needs, bases, inventory, policy)
    except AgentMapError as exc:
        return CheckResult(name="plan", status="fail", detail=f"the agent map is invalid: {exc}")
    except PlanningError as exc:
        return CheckResult(name="plan", status="fail", detail=f"{source}: {exc}")
    return _plan_passed(result, source)


def _plan_passed(result: Any, source: str) -> CheckResult:
    parts = [f"{d.name} {d.variant} {d.memory_budget_mb} MiB x {d.min_replicas}..{d.max_replicas}"
             for d in result.deployments]
    return CheckResult(name="plan", status="pass", detail=f"{source}: " + "; ".join(parts),
                       data={"options": result.options()})


def format_report(report: PreflightReport) -> str:
    """One ``PASS/WARN/FAIL/SKIP  name  detail`` line per check and a summary line."""
    lines = [f"{c.status.upper():4}  {c.name:<12}  {c.detail}" for c in report.checks]
    counts = {s: sum(c.status == s for c in report.checks) for s in ("pass", "warn", "fail", "skip")}
    verdict = "ready" if report.ok else "NOT ready"
    lines.append(f"preflight: {verdict} ({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")
    return "\n".join(lines)


def run_preflight(*, store_root: Path, require_gpu: bool = True, ray_address: str | None = None,
                  check_ray_cluster: bool = True, inventory: Any = None, demands: list[Any] | None = None,
                  policy: Any = None, gpu_memory_mb: int | None = None, checksums: bool = True,
                  map_path: str | None = None) -> PreflightReport:
    """Run every check; see the module docstring for the order and what each needs."""
    from .inventory import GPU, Inventory, Node

    checks = [check_cuda(require_gpu), check_bitsandbytes(require_gpu), check_store_root(store_root)]
    store_ok = checks[-1].status == "pass"
    checks.append(check_store(store_root, checksums) if store_ok else
                  CheckResult(name="store", status="skip", detail="store root unusable"))
    ray_check = check_ray(ray_address, gpu_memory_mb) if check_ray_cluster else \
        CheckResult(name="ray", status="skip", detail="not asked (--no-ray)")
    checks.append(ray_check)

    source = "--inventory"
    if inventory is None and ray_check.status == "pass":
        inventory, source = Inventory.model_validate(ray_check.data["inventory"]), "Ray inventory"
    cuda = checks[0]
    if inventory is None and cuda.status == "pass":
        import torch

        free = [torch.cuda.mem_get_info(g["index"])[0] // 2**20 for g in cuda.data["gpus"]]
        inventory = Inventory(name="this-host", nodes=(Node(name="this-host", gpus=tuple(
            GPU(index=i, memory_mb=mb) for i, mb in enumerate(free))),))
        source = "this host's free GPU memory"
    if inventory is None:
        checks.append(CheckResult(name="plan", status="fail" if require_gpu else "skip",
                                  detail="no inventory: no Ray inventory, no local GPU and no --inventory"))
    elif demands is None and checks[3].status != "pass":
        checks.append(CheckResult(name="plan", status="skip", detail="no --demands and the store is unusable"))
    elif demands is None:
        checks.append(check_map_plan(inventory, store_root, map_path, policy, source))
    else:
        checks.append(check_plan(inventory, demands, policy, source))
    return PreflightReport(checks=checks)
