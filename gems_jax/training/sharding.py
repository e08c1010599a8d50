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


def per_process_batch_size(global_batch_size: int, mesh: Mesh,
                           key: str = "config.input.batch_size") -> int:
  """The batch each process feeds; checks that the global batch splits over devices and hosts."""
  if global_batch_size < 1 or global_batch_size % mesh.size:
    raise ValueError(f"{key}={global_batch_size} is not a positive multiple of the {mesh.size} "
                     f"devices of the mesh {dict(mesh.shape)}")
  return global_batch_size // jax.process_count()


def process_rows(mesh: Mesh, global_batch_size: int) -> list[np.ndarray]:
  """For each process, the global batch rows its local rows land on, in local order.

  `global_batch` places a process's local rows on the rows of its devices in increasing order. The
  devices of a process need not be neighbours in the mesh (on TPU `jax.make_mesh` orders devices by
  the physical topology, not by process), so process p's rows may be interleaved with others'.
  """
  rows: dict[int, set[int]] = {}
  indices = batch_sharding(mesh).devices_indices_map((global_batch_size,))
  for device, index in indices.items():
    rows.setdefault(device.process_index, set()).update(range(*index[0].indices(global_batch_size)))
  return [np.array(sorted(rows[p]), np.int64) for p in sorted(rows)]


def gather_host_values(host: Mapping[str, np.ndarray], mesh: Mesh, max_bytes: int = 256
                       ) -> dict[str, np.ndarray]:
  """Host-only string arrays (e.g. clip ids) of every process, in the row order of the global batch.

  Each process passes its local [b] object array per key; the result is [b * process_count], row
  i belonging to row i of the global jax.Arrays built by `global_batch` (so to their outputs).
  Strings are cut to `max_bytes` UTF-8 bytes.
  """
  if jax.process_count() == 1:
    return dict(host)
  from jax.experimental import multihost_utils
  out = {}
  for key, values in host.items():
    raw = [str(v).encode()[:max_bytes] for v in values]
    padded = np.array([list(r.ljust(max_bytes, b"\0")) for r in raw], np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(padded.reshape(len(raw), max_bytes),
                                                            tiled=True))
    order = np.concatenate(process_rows(mesh, len(gathered)))
    strings = np.empty(len(gathered), dtype=object)
    strings[order] = [bytes(row).rstrip(b"\0").decode(errors="replace") for row in gathered]
    out[key] = strings
  return out
