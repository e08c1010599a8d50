"""Real faults of real processes: `python -m gems_jax.main` killed with SIGKILL at random moments
(some during a checkpoint save) and resumed; a checkpoint written on one mesh read on others."""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gems_jax import train
from gems_jax.data import input_pipeline
from gems_jax.training import checkpointing
from gems_jax.training import sharding as shd
from planted_runs import small_config
from test_checkpoint_faults import _read_tensorboard

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_FLAGS = ("--config.input.batch_size=16", "--config.eval.batch_size=16",
               "--config.model.face_encoder.frozen=True", "--config.train.num_epochs=3",
               "--config.train.patience=100", "--config.train.log_every_steps=1",
               "--config.train.checkpoint_every_steps=2")


def _command(data_dir, workdir, *extra):
  return [sys.executable, "-m", "gems_jax.main", "--config", "configs/gems.py:runlocal",
          f"--config.input.data_dir={data_dir}", f"--workdir={workdir}", *TRAIN_FLAGS, *extra]


def _env(devices: int = 2) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _saving(workdir: pathlib.Path) -> bool:
  """True while orbax writes a step (its temporary folders exist)."""
  for folder in ("checkpoints", "best"):
    if (workdir / folder).is_dir() and any("tmp" in p.name for p in (workdir / folder).iterdir()):
      return True
  return False


def _has_checkpoint(workdir: pathlib.Path) -> bool:
  folder = workdir / "checkpoints"
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def _run_until(command, workdir: pathlib.Path, trigger, log) -> str:
  """Runs `command`; SIGKILLs it as soon as `trigger()` is true. Returns 'killed', 'killed in a
  save' or 'finished'."""
  with open(log, "a") as out:
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=out, stderr=out)
    while proc.poll() is None:
      if trigger():
        in_save = _saving(workdir)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return "killed in a save" if in_save else "killed"
      time.sleep(0.002)
  assert proc.returncode == 0, pathlib.Path(log).read_text()[-5000:]
  return "finished"


def _after(delay: float, condition=lambda: True):
  start = {}

  def trigger():
    if not condition():
      return False
    start.setdefault("t", time.monotonic())
    return time.monotonic() - start["t"] >= delay
  return trigger


def _final_state(workdir):
  ckpt = checkpointing.Checkpoints(str(workdir))
  step = ckpt.latest_step()
  restored = ckpt.latest.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  ckpt.close()
  return step, restored["state"]["params"], restored["meta"]


def _records(workdir):
  return [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]


def _final_test(workdir) -> dict:
  (record,) = [r for r in _records(workdir) if r["split"] == "final_test"]
  return {k: v for k, v in record.items() if k not in ("time", "split", "step")}


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(planted_dir, tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  log = tmp_path / "log.txt"
  assert _run_until(_command(planted_dir, whole), whole, lambda: False, log) == "finished"
  rng = random.Random(0)
  triggers = [_after(rng.uniform(0.0, 1.5), lambda: _has_checkpoint(killed)),
              lambda: _saving(killed),  # In the middle of writing a checkpoint.
              _after(rng.uniform(0.5, 3.0), lambda: _has_checkpoint(killed)),
              lambda: _saving(killed)]
  outcomes = [_run_until(_command(planted_dir, killed), killed, t, log) for t in triggers]
  while outcomes[-1] != "finished":
    outcomes.append(_run_until(_command(planted_dir, killed), killed, lambda: False, log))
  assert outcomes.count("killed in a save") >= 1 and len(outcomes) >= 4, outcomes

  (step_a, params_a, meta_a), (step_b, params_b, meta_b) = map(_final_state, (whole, killed))
  assert step_a == step_b
  chex.assert_trees_all_close(params_a, params_b, atol=1e-6)
  assert meta_a["data"] == meta_b["data"] and meta_a["best_step"] == meta_b["best_step"]
  test_a, test_b = _final_test(whole), _final_test(killed)
  assert test_a.keys() == test_b.keys()
  np.testing.assert_allclose([test_b[k] for k in sorted(test_b)],
                             [test_a[k] for k in sorted(test_a)], rtol=1e-5, atol=1e-7)
  # The logs hold every step once, as in the uninterrupted run.
  steps = lambda w: sorted((r["step"], r["split"]) for r in _records(w))  # noqa: E731
  assert steps(killed) == steps(whole) and len(set(steps(killed))) == len(steps(killed))
  tags = lambda w: sorted((tag, step) for tag, step, _ in _read_tensorboard(w / "tensorboard"))  # noqa: E731
  assert tags(killed) == tags(whole)
  _, best_meta = checkpointing.read_variables(str(killed), "best", keys=("params",))
  assert best_meta["step"] == best_meta["best_step"]


def _next_step(config, workdir, mesh):
  """The training step after the latest checkpoint of `workdir`, taken on `mesh`."""
  spec = input_pipeline.load_spec(config.input.data_dir)
  trainer = train.Trainer(config, spec, mesh, steps_per_epoch=12)
  make = lambda: input_pipeline.make_iterator(  # noqa: E731
      config.input.data_dir, "train", batch_size=16, shuffle=True, seed=config.seed, num_epochs=None)
  state = trainer.init_state(trainer.task.prepare_batch(next(make()))[0], jax.random.key(0))
  ckpt = checkpointing.Checkpoints(str(workdir))
  state, meta = ckpt.restore(state)
  ckpt.close()
  it = make()
  it.set_state(meta["data"])
  step = int(state.step)
  batch, _ = trainer.task.prepare_batch(next(it), np.random.default_rng((config.seed, step)))
  state, scalars = trainer.train_step(state, shd.global_batch(batch, mesh),
                                      jax.random.key(config.seed))
  return float(scalars["loss"]), jax.device_get(state.params)


@pytest.mark.slow
def test_a_checkpoint_from_a_data2_fsdp4_mesh_evaluates_and_resumes_on_other_meshes(
    planted_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(shd, "MIN_FSDP_SIZE", 512)  # Shard most kernels of the small model.
  configs = {}
  for name, (data, fsdp) in {"written": (2, 4), "data8": (8, 1)}.items():
    configs[name] = small_config(planted_dir, **{"train.num_epochs": 1, "mesh.data": data,
                                                 "mesh.fsdp": fsdp})
    configs[name].model.fusion.d_model = 64
  workdir = tmp_path / "run"
  reference = train.headline_metrics(train.train_and_evaluate(configs["written"], str(workdir))["test"])
  _, params, _ = _final_state(workdir)
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(params)), "nothing sharded"

  eight = train.evaluate_checkpoint(configs["data8"], str(workdir), which="latest", splits=["test"])
  one_device = subprocess.run(
      [sys.executable, "-m", "gems_jax.main", "--config", "configs/gems.py:runlocal",
       f"--config.input.data_dir={planted_dir}", f"--workdir={workdir}", "--mode=eval",
       "--checkpoint=latest", "--eval_splits=test", "--config.mesh.data=1",
       "--config.model.fusion.d_model=64", *TRAIN_FLAGS[:3]],
      cwd=REPO_ROOT, env=_env(devices=1), capture_output=True, text=True, timeout=600)
  assert one_device.returncode == 0, one_device.stderr[-5000:]
  one = _final_test(workdir)
  for name, value in train.headline_metrics(eight["test"]).items():
    np.testing.assert_allclose(value, reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(one[f"final_test/{name}"], reference[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)

  mesh = lambda c: shd.make_mesh(c.mesh)  # noqa: E731
  loss_a, params_a = _next_step(configs["written"], workdir, mesh(configs["written"]))
  loss_b, params_b = _next_step(configs["data8"], workdir, mesh(configs["data8"]))
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
  chex.assert_trees_all_close(params_a, params_b, atol=2e-5)
