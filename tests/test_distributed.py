"""Two JAX processes on localhost (jax.distributed, 2 CPU devices each) train exactly like one
process with 4 devices: global batches from process-local data, sharded steps, shared checkpoints."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from gems_jax.data import planted
from gems_jax.data import tfds_writer
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(data_dir, workdir, extra=()):
  return [sys.executable, "-m", "gems_jax.main", "--config", "configs/gems.py:runlocal",
          f"--config.input.data_dir={data_dir}", "--config.train.num_epochs=2",
          "--config.train.log_every_steps=1", "--config.model.face_encoder.frozen=True",
          # No dropout: the two runs order a global batch's examples differently (process-major),
          # and dropout masks depend on the position in the batch.
          "--config.model.fusion.dropout_rate=0.0",
          f"--workdir={workdir}", *extra]


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train_losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["train/loss"] for r in rows if r["split"] == "train"}, \
         [r for r in rows if r["split"] == "final_test"][0]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  spec = planted.planted_spec()
  data_dir = tfds_writer.write_dataset(tmp_path / "data", spec, {
      "train": planted.make_planted_examples(spec, 32, seed=1),
      "val": planted.make_planted_examples(spec, 12, seed=2),
      "test": planted.make_planted_examples(spec, 10, seed=3)})
  single = subprocess.Popen(_command(data_dir, tmp_path / "one"), cwd=REPO_ROOT, env=_env(4),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  port = _free_port()
  multi = [subprocess.Popen(
      _command(data_dir, tmp_path / "two", ["--distributed", f"--coordinator_address=localhost:{port}",
                                            "--num_processes=2", f"--process_id={i}"]),
      cwd=REPO_ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  for proc in [single, *multi]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
  one_losses, one_test = _train_losses(tmp_path / "one")
  two_losses, two_test = _train_losses(tmp_path / "two")
  assert sorted(one_losses) == sorted(two_losses) and len(one_losses) >= 4
  np.testing.assert_allclose([two_losses[s] for s in sorted(two_losses)],
                             [one_losses[s] for s in sorted(one_losses)], rtol=2e-5)
  for key in ("group_emotion/accuracy", "valence/ccc", "loss/loss"):
    key = f"final_test/{key}"
    np.testing.assert_allclose(two_test[key], one_test[key], rtol=1e-4, atol=1e-6)


def test_host_values_follow_the_rows_of_an_interleaved_mesh():
  """On TPU, `jax.make_mesh` need not order devices by process: clip ids gathered from the hosts
  must be placed on the rows their examples occupy in the global batch, not in process order."""
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "distributed_rows_worker.py"),
                             str(port), str(i)], cwd=REPO_ROOT, env=_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for proc in procs:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "ROWS OK" in out, out[-4000:]
