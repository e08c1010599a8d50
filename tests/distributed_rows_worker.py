"""One of two JAX processes (2 CPU devices each) for tests/test_distributed.py: on a mesh whose
device order interleaves the processes, host strings gathered by `gather_host_values` must line up
with the rows of the global batch that `global_batch` built from the same local data."""
import sys

import jax
import numpy as np

from gems_jax.training import sharding as shd


def main(port: int, process_id: int) -> None:
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
  by_process = [[d for d in jax.devices() if d.process_index == p] for p in (0, 1)]
  interleaved = [d for pair in zip(*by_process) for d in pair]  # p0 d0, p1 d0, p0 d1, p1 d1
  mesh = shd.make_mesh({"data": 4, "fsdp": 1}, devices=interleaved)
  owners = [d.process_index for d in mesh.devices.flat]
  assert owners == [0, 1, 0, 1], owners
  local = 4  # Rows per process; 2 per device.
  codes = np.array([100 * process_id + i for i in range(local)], np.int32)
  clip_ids = np.array([f"clip-{process_id}-{i}" for i in range(local)], dtype=object)
  rows = shd.global_batch({"code": codes}, mesh)["code"]
  replicated = np.asarray(jax.jit(lambda x: x, out_shardings=shd.replicated(mesh))(rows))
  gathered = shd.gather_host_values({"clip_id": clip_ids}, mesh)["clip_id"]
  expected = [f"clip-{c // 100}-{c % 100}" for c in replicated]
  assert list(gathered) == expected, (list(gathered), expected)
  assert sorted(replicated // 100) != list(replicated // 100)  # The rows really are interleaved.
  print("ROWS OK", list(gathered))


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]))
