"""JustNews placement planner: GPU inventory + ModelStore VRAM metadata + policy -> Serve options.

Pure logic (no Ray import): :func:`plan` chooses each deployment's variant, sizes its replicas (weights,
KV cache, adapters, context), gives them fractional ``num_gpus`` (or a memory request on CPU-only
clusters) and autoscaling bounds that the inventory can hold. :mod:`cluster.discover` reads an
inventory from a running Ray cluster (imports Ray lazily); :mod:`cluster.budget` is what each replica
runs to enforce its share and :mod:`cluster.autoscaling` the Serve custom policy that caps scaling by memory;
``justnews plan | preflight | kuberay | launcher`` (:mod:`cluster.cli`) print a plan or write serve_config.yaml,
check a host, and write the KubeRay / ``ray up`` configs.
"""

from .autoscaling import MemoryCap, MemoryCappedPolicy, memory_cap
from .budget import (BUDGET_ENV, CONTEXT_ENV, BudgetStatus, MemoryUsage, apply_replica_budget, budget_from_env,
                     context_from_env, measured_usage)
from .demand import (AdapterFacts, BaseFacts, DeploymentDemand, base_facts_from_store, default_demand,
                     kv_values_per_token, load_demands)
from .discover import GPU_MEMORY_LABEL, GPU_MEMORY_RESOURCE, discover_from_ray, inventory_from_ray_nodes
from .errors import CapacityError, DemandError, InventoryError, NoVariantFitsError, PlanningError
from .inventory import GPU, Inventory, Node, bundled_inventories, load_inventory
from .placement import AppPlacement, PoolPlacement, placement_from_plan, placement_without_plan
from .planner import MAX_REPLICAS_RULE, BinUsage, DeploymentPlan, Placement, Plan, capacity_basis, plan
from .policy import PlacementPolicy, load_policy
from .pools import AgentNeed, Pool, PoolLayout, assign_pools, needs_from_map, plan_pools, pool_demands, pool_name
from .render import format_plan, format_routes, serve_config, write_serve_config
from .sizing import ReplicaMemory, ReplicaSizing, candidate_variants, size_replica

__all__ = [
    "plan", "Plan", "DeploymentPlan", "Placement", "BinUsage", "MAX_REPLICAS_RULE", "capacity_basis",
    "AgentNeed", "Pool", "PoolLayout", "assign_pools", "needs_from_map", "plan_pools", "pool_demands", "pool_name",
    "AppPlacement", "PoolPlacement", "placement_from_plan", "placement_without_plan",
    "Inventory", "Node", "GPU", "load_inventory", "bundled_inventories",
    "discover_from_ray", "inventory_from_ray_nodes", "GPU_MEMORY_LABEL", "GPU_MEMORY_RESOURCE",
    "PlacementPolicy", "load_policy",
    "DeploymentDemand", "BaseFacts", "AdapterFacts", "kv_values_per_token", "base_facts_from_store",
    "default_demand", "load_demands",
    "ReplicaMemory", "ReplicaSizing", "candidate_variants", "size_replica",
    "format_plan", "format_routes", "serve_config", "write_serve_config",
    "apply_replica_budget", "measured_usage", "budget_from_env", "context_from_env", "BudgetStatus", "MemoryUsage",
    "BUDGET_ENV", "CONTEXT_ENV", "MemoryCappedPolicy", "MemoryCap", "memory_cap",
    "PlanningError", "InventoryError", "DemandError", "NoVariantFitsError", "CapacityError",
]
