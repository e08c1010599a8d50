"""Device mesh, parameter/batch shardings and global batches: one program from 1 CPU to a pod.

The mesh has two axes from `config.mesh`:
  'data' — data parallelism: the batch is split over it;
  'fsdp' — fully-sharded data parallelism: the batch is split over it too, and every large
           parameter (and its optimizer state) is split along one of its dimensions, so a Swin-B
           plus Adam state need not fit on one device.
Shardings are `NamedSharding`s consumed by `jax.jit(in_shardings=..., out_shardings=...)`.
"""
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Parameters smaller than this stay replicated: sharding them saves nothing and costs collectives.
MIN_FSDP_SIZE = 2**14


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
  """Builds the ('data', 'fsdp') mesh; one size may be -1 (= all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": int(mesh_config["data"]), "fsdp": int(mesh_config["fsdp"])}
  unknown = [k for k, v in sizes.items() if v == -1]
  if len(unknown) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {sizes}")
  known = int(np.prod([v for v in sizes.values() if v != -1]))
  if unknown:
    if len(devices) % known:
      raise ValueError(f"config.mesh: {len(devices)} devices are not divisible by {known} ({sizes})")
    sizes[unknown[0]] = len(devices) // known
  if sizes["data"] * sizes["fsdp"] != len(devices):
    raise ValueError(
        f"config.mesh: data={sizes['data']} x fsdp={sizes['fsdp']} != {len(devices)} devices")
  return jax.make_mesh((sizes["data"], sizes["fsdp"]), BATCH_AXES,
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device; used as a prefix for a whole batch dict."""
  return NamedSharding(mesh, P(BATCH_AXES))


def _fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """Shards the largest dimension divisible by the fsdp size (big_vision's 'fsdp' tactic)."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_FSDP_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(abstract_tree, mesh: Mesh):
  """NamedShardings for a pytree of arrays or ShapeDtypeStructs (e.g. a train state)."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, _fsdp_spec(tuple(getattr(x, "shape", ())), fsdp_size)),
      abstract_tree)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles a global jax.Array batch from this process's slice (numerical keys only).

  Every process passes its own `local_batch` (per-process batch size b); the result has global
  batch b * process_count, split over all devices of the mesh.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The batch each process feeds; checks that the global batch splits over devices and hosts."""
  if global_batch_size % mesh.size:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the {mesh.size} devices "
                     f"of the mesh {dict(mesh.shape)}")
  return global_batch_size // jax.process_count()
