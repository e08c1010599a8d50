"""Checkpoints under faults: damaged files, a full disk, a kill between the latest and best saves,
logs after a resume, and a configuration that cannot run."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from gems_jax import train
from gems_jax.training import checkpointing
from gems_jax.training.metric_writer import MetricWriter
from planted_runs import small_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _state(scale: float) -> dict:
  return {"w": jnp.arange(20000, dtype=jnp.float32) * scale, "b": jnp.full((3, 4), scale)}


def _two_steps(workdir) -> checkpointing.Checkpoints:
  ckpt = checkpointing.Checkpoints(str(workdir), keep=3)
  for step in (1, 2):
    ckpt.save(step, _state(step), {"data": step})
  return ckpt


def _largest_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_byte(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


DAMAGE = {
    "flipped_bit": _flip_byte,  # orbax alone restores this silently.
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-10]),  # So does this.
    "deleted": os.remove,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_is_named_and_the_previous_one_restored(tmp_path, damage, caplog):
  ckpt = _two_steps(tmp_path)
  victim = _largest_file(ckpt.step_dir("latest", 2))
  DAMAGE[damage](victim)
  state, meta = ckpt.restore(_state(0))
  assert meta == {"data": 1}
  chex.assert_trees_all_equal(state, _state(1))
  assert str(victim) in caplog.text and "falling back" in caplog.text
  assert ckpt.latest.all_steps() == [1]  # Moved aside, never read again, kept for inspection.
  assert list((tmp_path / "damaged").iterdir())[0].name.startswith("checkpoints-2-")
  ckpt.save(2, _state(2), {"data": 2})  # The resumed run saves the same step again.
  assert ckpt.restore(_state(0))[1] == {"data": 2}
  ckpt.close()


def test_only_damaged_checkpoints_is_an_error_naming_them(tmp_path):
  ckpt = _two_steps(tmp_path)
  for step in (1, 2):
    _flip_byte(_largest_file(ckpt.step_dir("latest", step)))
  with pytest.raises(checkpointing.DamagedCheckpointError, match="every 'latest' checkpoint"):
    ckpt.restore(_state(0))
  ckpt.close()


_FULL_DISK_SCRIPT = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from gems_jax.training import checkpointing
    disk = sys.argv[1]
    state = {"w": jnp.arange(300_000, dtype=jnp.float32)}
    ckpt = checkpointing.Checkpoints(disk + "/run")
    ckpt.save(1, state, {"data": 1})
    stat = os.statvfs(disk)
    with open(disk + "/filler", "wb") as f:  # Leave 200 kB: the next save needs ~1.2 MB.
      f.write(bytes(stat.f_bavail * stat.f_frsize - 200_000))
    try:
      ckpt.save(2, {"w": state["w"] * 2}, {"data": 2})
      print("RESULT saved")
    except OSError as e:
      print("RESULT failed:", e)
    os.remove(disk + "/filler")
    state, meta = checkpointing.Checkpoints(disk + "/run").restore(state)
    print("RESULT restored", meta["data"], float(state["w"][7]), sorted(os.listdir(disk + "/run/checkpoints")))
    """)


def test_full_disk_fails_loudly_and_keeps_the_previous_checkpoint(tmp_path):
  """A real full disk: a 3 MB tmpfs mounted in a private mount namespace (needs `unshare`)."""
  if shutil.which("unshare") is None or subprocess.run(
      ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail("unshare -rm (user + mount namespaces) is needed for the full-disk test")
    pytest.skip("no user/mount namespaces here")
  disk = tmp_path / "disk"
  disk.mkdir()
  script = tmp_path / "full_disk.py"
  script.write_text(_FULL_DISK_SCRIPT)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=str(REPO_ROOT))
  out = subprocess.run(
      ["unshare", "-rm", "sh", "-c",
       f'mount -t tmpfs -o size=3m tmpfs "{disk}" && exec "{sys.executable}" "{script}" "{disk}"'],
      capture_output=True, text=True, env=env, timeout=300)
  lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
  assert out.returncode == 0 and len(lines) == 2, out.stdout + out.stderr[-3000:]
  assert lines[0].startswith("RESULT failed: saving checkpoint step 2") and "No space left" in lines[0]
  assert lines[1] == "RESULT restored 1 7.0 ['1']"  # The failed step's temp folder is gone.


def _read_tensorboard(directory) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in the event files (TFRecord framing, no TensorFlow)."""
  out = []
  for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      length = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return out


def test_resumed_logs_have_no_step_twice(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    writer.write(step, "train", {"loss": 1.0 / step})
  writer.write(3, "final_test", {"acc": 0.5})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "split": "tr')  # A kill in the middle of a line.
  writer = MetricWriter(str(tmp_path))  # The run resumes from its step-2 checkpoint.
  writer.keep_only(lambda r: r["step"] <= 2 and not r["split"].startswith("final_"))
  for step in (3, 4):
    writer.write(step, "train", {"loss": 0.1})
  writer.close()
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["split"]) for r in records] == [(s, "train") for s in (1, 2, 3, 4)]
  scalars = sorted(_read_tensorboard(tmp_path / "tensorboard"))  # Files are read in name order.
  assert [(tag, step) for tag, step, _ in scalars] == [("train/loss", s) for s in (1, 2, 3, 4)]
  np.testing.assert_allclose([v for *_, v in scalars], [1.0, 0.5, 0.1, 0.1], rtol=1e-6)


def test_a_kill_between_the_latest_and_best_saves_is_repaired_on_resume(planted_dir, tmp_path,
                                                                        monkeypatch):
  config = small_config(planted_dir, **{"train.num_epochs": 2, "train.patience": 100,
                                        "train.selection_metric": "loss"})
  saves = []
  original = checkpointing.Checkpoints.save_only

  def dies_before_the_second_best_save(self, which, step, state, meta):
    saves.append((which, step))
    if which == "best" and step > saves[0][1]:  # Epoch 2 improved: latest is saved, best not.
      raise KeyboardInterrupt("killed")
    original(self, which, step, state, meta)

  monkeypatch.setattr(checkpointing.Checkpoints, "save_only", dies_before_the_second_best_save)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.setattr(checkpointing.Checkpoints, "save_only", original)
  last = saves[-1][1]
  ckpt = checkpointing.Checkpoints(str(tmp_path))
  assert ckpt.latest_step() == last and ckpt.latest_step("best") < last  # The torn state.
  ckpt.close()
  train.train_and_evaluate(config, str(tmp_path))  # Resumes at the end: repairs, then tests.
  _, meta = checkpointing.read_variables(str(tmp_path), "best", keys=("params",))
  assert meta["step"] == meta["best_step"] == last
  finals = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in finals if r["split"] == "final_test"] == [last]


@pytest.mark.parametrize("override,message", [
    ({"mesh.data": 3}, r"config.mesh: data=3 x fsdp=1 != 8 devices"),
    ({"mesh.fsdp": 3}, r"config.mesh: 8 devices are not divisible by 3"),
    ({"input.batch_size": 12}, r"config.input.batch_size=12 is not a positive multiple of the 8"),
    ({"eval.batch_size": 4}, r"config.eval.batch_size=4 is not a positive multiple of the 8"),
])
def test_a_config_that_cannot_run_fails_before_any_work(planted_dir, tmp_path, override, message):
  config = small_config(planted_dir, **override)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # Nothing written, nothing encoded.


def test_saved_config_has_absolute_paths(planted_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(pathlib.Path(planted_dir).parent)
  relative = os.path.relpath(planted_dir)
  config = small_config(relative, **{"train.num_epochs": 1})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["input"]["data_dir"] == os.path.abspath(relative)


def test_grain_workers_stop_when_an_evaluation_fails(planted_dir):
  """input.worker_count > 0: an evaluation that raises never exhausts its iterator (whose workers
  stop by themselves only at its end); it must not leave worker processes behind."""
  import multiprocessing
  before = set(multiprocessing.active_children())
  config = small_config(planted_dir, **{"input.worker_count": 1, "eval.batch_size": 8})
  spec = train.input_pipeline.load_spec(planted_dir)
  trainer = train.Trainer(config, spec, train.shd.make_mesh(config.mesh), steps_per_epoch=1)
  sample, _ = trainer.task.prepare_batch(next(train.input_pipeline.iterate_split_once(
      planted_dir, "val", batch_size=8)))
  state = trainer.init_state(sample, jax.random.key(0))
  running = []

  def fails(batch):
    running.append(set(multiprocessing.active_children()) - before)
    raise RuntimeError("a bad batch")
  trainer.task.eval_batches = fails
  # The exception is kept (as a notebook or a post-mortem debugger keeps it), and with it the
  # frames of `evaluate`: the iterator is not garbage, so only an explicit close stops its worker.
  with pytest.raises(RuntimeError, match="a bad batch") as failure:
    trainer.evaluate(state, "train")  # 24 batches: the worker is still busy at the first one.
  assert running[0], "no grain worker was running: the test checks nothing"
  assert set(multiprocessing.active_children()) <= before, failure.traceback
