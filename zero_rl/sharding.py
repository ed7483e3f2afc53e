"""Device mesh and logical-axis sharding rules.

The model names every parameter axis and key activations with logical names ("embed", "mlp",
"heads", ...). One rules table maps logical names to the mesh axes `data`, `fsdp`, `tensor`, so a
new sharding layout is a config change, not a model change.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated). The batch is split
# over data and fsdp (FSDP is data parallel with sharded weights); weights are sharded over fsdp
# on their embed axis and over tensor on their heads/mlp/vocab axis (Megatron-style).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("act_embed", None),
)

_ACTIVE: dict = {"mesh": None, "rules": None}


def rules_to_config(rules=DEFAULT_RULES) -> dict[str, str]:
    """Rules as config strings: {"batch": "data,fsdp", "embed": "fsdp", "length": "", ...}."""
    return {
        name: ",".join((target,) if isinstance(target, str) else tuple(target or ()))
        for name, target in rules
    }


def rules_from_config(
    section: Mapping[str, str],
) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """The inverse of `rules_to_config`; every logical axis must be present, every mesh axis
    named must be one of `MESH_AXES`."""
    section = dict(section)
    if missing := sorted({name for name, _ in DEFAULT_RULES} - set(section)):
        raise ValueError(f"sharding rules lack logical axes {missing}")
    rules = []
    for name, text in section.items():
        axes = tuple(a.strip() for a in str(text).split(",") if a.strip())
        if bad := [a for a in axes if a not in MESH_AXES]:
            raise ValueError(f"sharding rule {name}={text!r}: {bad} not in mesh axes {MESH_AXES}")
        rules.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
    return tuple(rules)


def make_mesh(
    axis_sizes: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh. One size may be -1 (takes the remaining devices).

    Unnamed axes default to 1, except fsdp which defaults to -1, so `make_mesh()` is pure FSDP.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": 1, "fsdp": -1, "tensor": 1} | dict(axis_sizes or {})
    if unknown := set(sizes) - set(MESH_AXES):
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid: {MESH_AXES}")
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 not in sizes.values() and known < len(devices):
        if jax.process_count() > 1:
            # Every process must own devices of the mesh, or collectives wait on it forever.
            raise ValueError(
                f"mesh {sizes} names {known} devices, but this {jax.process_count()}-process "
                f"job has {len(devices)}: a multi-host mesh must use all of them (set one axis "
                f"to -1, or sizes whose product is {len(devices)})"
            )
        # One process, fully specified and smaller than the machine: use the first devices
        # (e.g. one device of a multi-device host for a small job).
        log.warning("mesh %s uses %d of the %d devices", sizes, known, len(devices))
        devices = devices[:known]
    if known > len(devices) or len(devices) % known:
        raise ValueError(f"mesh {sizes} does not fit {len(devices)} devices")
    sizes = {k: (len(devices) // known if v == -1 else v) for k, v in sizes.items()}
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {len(devices)}"
        )
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # Fake CPU devices and odd shapes have no physical topology to follow.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def logical_to_spec(
    logical_axes: Sequence[str | None], rules: Sequence[tuple[str, object]] = DEFAULT_RULES
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in logical_axes:
        if name is not None and name not in table:
            raise ValueError(
                f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}"
            )
        target = None if name is None else table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide a dimension (e.g. 2 kv heads over tensor=4).

    The result is canonical: no size-1 mesh axes, no trailing Nones. That is how jit writes the
    shardings of its outputs, so a donated state comes back from a step with a sharding *equal*
    to the one it went in with. Otherwise (P(None, "tensor") back for P(None, "tensor", None))
    the second step compiles again, and a run resumed from a checkpoint runs a different
    executable, with different float rounding, than the run it continues.
    """
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept = []
        for a in axes:
            if (
                mesh.shape[a] > 1
                and dim % (math.prod(mesh.shape[k] for k in kept) * mesh.shape[a]) == 0
            ):
                kept.append(a)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def named_sharding(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, object]] = DEFAULT_RULES,
) -> NamedSharding:
    return NamedSharding(mesh, _fit_spec(logical_to_spec(logical_axes, rules), shape, mesh))


def tree_shardings(abstract_tree, logical_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a pytree of arrays given a matching pytree of logical-axis tuples."""
    return jax.tree.map(
        lambda x, axes: named_sharding(axes, x.shape, mesh, rules),
        abstract_tree,
        logical_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, str | None) for a in x),
    )


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules=DEFAULT_RULES) -> Iterator[None]:
    """Within this context, `constrain` pins activations to the mesh (read at trace time)."""
    saved = dict(_ACTIVE)
    _ACTIVE.update(mesh=mesh, rules=rules)
    try:
        yield
    finally:
        _ACTIVE.update(saved)


def active_shards(logical_axis: str, size: int) -> int:
    """Into how many shards `constrain` splits a dimension of `size` named `logical_axis`
    (1 outside `activation_sharding`, or where the mesh axes do not divide it)."""
    mesh = _ACTIVE["mesh"]
    if mesh is None:
        return 1
    spec = _fit_spec(logical_to_spec((logical_axis,), _ACTIVE["rules"]), (size,), mesh)
    entry = spec[0] if len(spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh.shape[a] for a in axes)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `activation_sharding`."""
    mesh = _ACTIVE["mesh"]
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(
        x, named_sharding(logical_axes, x.shape, mesh, _ACTIVE["rules"])
    )


# Multi-host batches. Each process holds its own rows of a batch (its prompts, its responses);
# these three helpers move rows between a process's host memory and a global array sharded by
# `batch_sharding` (rows over data x fsdp). With one process they are a device_put and a
# device_get.


def _rows_sharding(batch_sharding: NamedSharding) -> NamedSharding:
    return NamedSharding(batch_sharding.mesh, PartitionSpec(batch_sharding.spec[0]))


def global_batch(local_rows: np.ndarray, batch_sharding: NamedSharding) -> jax.Array:
    """The global array whose rows are every process's `local_rows`, in process order.

    `local_rows` [rows / processes, ...] may have any rank; only the leading axis is sharded.
    """
    sharding = _rows_sharding(batch_sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(local_rows))


def local_rows(tree, batch_sharding: NamedSharding):
    """This process's rows of a pytree of global arrays, as NumPy (the inverse of
    `global_batch`)."""
    sharding = _rows_sharding(batch_sharding)
    local = multihost_utils.global_array_to_host_local_array(tree, sharding.mesh, sharding.spec)
    return jax.device_get(local)


def gather_to_host(tree):
    """Every process gets the whole value, as NumPy: global arrays are read in full and
    host arrays are concatenated over processes (in process order) along their first axis."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


# Multi-host start-up. `jax.distributed.initialize()` with no arguments finds the coordinator,
# the process count and this process's index on Cloud TPU VMs (metadata server), GKE TPU pods
# and SLURM; these helpers decide whether a job has several processes in the first place.


def _tpu_clusters() -> tuple:
    """JAX's detectors of a Cloud TPU slice, in the order they are consulted: GKE pods first
    (their node VMs look like one-host TPU VMs), then GCE TPU VMs. Each has
    `is_env_present()` and `get_process_count()`; tests replace this function with fakes.

    Private API, used so that the answer is the one `initialize()` acts on: GCE TPU VMs
    describe their slice only through the metadata server, GKE pods in TPU_WORKER_HOSTNAMES.
    """
    from jax._src.clusters import cloud_tpu_cluster  # noqa: PLC0415

    return (cloud_tpu_cluster.GkeTpuCluster, cloud_tpu_cluster.GceTpuCluster)


def environment_process_count() -> int:
    """How many processes the environment says this job has: SLURM's task count, or the
    workers of a Cloud TPU slice (all slices of a multislice job) as JAX's own cluster
    detection sees them; 1 when the environment describes no cluster."""
    if "SLURM_JOB_ID" in os.environ and "SLURM_NTASKS" in os.environ:
        # Not SLURM_JOB_NUM_NODES: it is set, to 1, in single-node jobs too.
        return int(os.environ["SLURM_NTASKS"])
    for cluster in _tpu_clusters():
        if cluster.is_env_present():
            return cluster.get_process_count()
    return 1


def initialize_distributed(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` when the job has several processes; returns whether
    it did. `mode` is "on" (always), "off" (never) or "auto": when `num_processes` > 1, when
    JAX_COORDINATOR_ADDRESS is set, or when `environment_process_count()` > 1. The arguments
    left None are found by JAX from the environment."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode {mode!r} is not one of 'auto', 'on', 'off'")
    if mode == "off":
        return False
    if mode == "auto" and not (
        (num_processes or 1) > 1
        or os.environ.get("JAX_COORDINATOR_ADDRESS")
        or environment_process_count() > 1
    ):
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True
