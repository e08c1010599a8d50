"""The training library on planted-signal data: learning, sharding equivalence, kill-and-resume."""
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gems as gems_config
from gems_jax import tasks
from gems_jax import train
from gems_jax.data import input_pipeline
from gems_jax.data import planted
from gems_jax.training import sharding as shd
from planted_runs import small_config

HEADS = ("group_emotion", "group_category", "situation")


def test_learns_planted_signal_and_beats_majority_baselines(planted_dir, tmp_path):
  config = small_config(planted_dir, **{"train.num_epochs": 12, "train.patience": 100,
                                        "optim.learning_rate": 3e-3})
  results = train.train_and_evaluate(config, str(tmp_path))
  test = results["test"]
  model = lambda head, m: test[head]["model"][m]
  baseline = lambda head, m, b="majority": test[head]["baselines"][b][m]
  for head in HEADS:
    assert model(head, "accuracy") > baseline(head, "accuracy") + 0.15, (head, test[head])
    assert model(head, "uar") > baseline(head, "uar", "chance") + 0.15, (head, test[head])
  assert model("situational_emotion", "mAP") > baseline("situational_emotion", "mAP", "chance") + 0.2
  assert model("valence", "ccc") > 0.5 and model("arousal", "ccc") > 0.5
  assert model("individual_emotion", "accuracy") > baseline("individual_emotion", "accuracy") + 0.3
  losses = [r["train/loss"] for r in map(json.loads, open(tmp_path / "metrics.jsonl"))
            if r["split"] == "train"]
  assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
  report = tmp_path / "report" / "test"
  assert (report / "predictions.jsonl").exists() and (report / "metrics.json").exists()
  rows = [json.loads(line) for line in open(report / "predictions.jsonl")]
  assert len(rows) == input_pipeline.num_examples(planted_dir, "test")  # Nothing dropped.
  assert list(report.glob("*.png")), "no plots written"


def test_autocorrelation_variant_keeps_what_is_constant_over_the_clip(planted_dir, tmp_path):
  """The planted situation lives only in the description, the same in every token of a clip.
  Autoformer's layer drops that constant (the trend) from its output; GEMS adds the block as a
  residual so the heads still see it (without it the situation fell to chance)."""
  config = small_config(planted_dir, **{"train.num_epochs": 6, "train.patience": 100,
                                        "optim.learning_rate": 3e-3})
  config.model.fusion.autocorrelation = True
  test = train.train_and_evaluate(config, str(tmp_path))["test"]["situation"]
  assert test["model"]["accuracy"] > test["baselines"]["majority"]["accuracy"] + 0.15, test


def _one_step(config, mesh, batch):
  spec = input_pipeline.load_spec(config.input.data_dir)
  trainer = train.Trainer(config, spec, mesh, steps_per_epoch=4)
  state = trainer.init_state(batch, jax.random.key(0))
  params_before = jax.device_get(state.params)
  state, scalars = trainer.train_step(state, shd.global_batch(batch, mesh), jax.random.key(1))
  return jax.device_get(scalars), jax.device_get(state.params), params_before, state


@pytest.mark.parametrize("data,fsdp", [(8, 1), (2, 4)])
def test_same_step_on_one_device_and_on_eight(planted_dir, data, fsdp):
  config = small_config(planted_dir)
  config.model.fusion.d_model = 64  # Kernels large enough for fsdp to shard some of them.
  it = input_pipeline.make_iterator(planted_dir, "train", batch_size=16, shuffle=False, seed=0,
                                    num_epochs=1)
  spec = input_pipeline.load_spec(planted_dir)
  batch, _ = tasks.get_task(config, spec).prepare_batch(next(iter(it)))
  one = _one_step(config, shd.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]), batch)
  many = _one_step(config, shd.make_mesh({"data": data, "fsdp": fsdp}), batch)
  np.testing.assert_allclose(one[0]["loss"], many[0]["loss"], rtol=1e-5)
  chex.assert_trees_all_close(one[2], many[2], atol=1e-6)  # Same initialisation.
  chex.assert_trees_all_close(one[1], many[1], atol=2e-5)  # Same update.
  if fsdp > 1:
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(many[3].params)}
    assert any("fsdp" in s for s in specs), specs


class _Killed(Exception):
  pass


def test_kill_and_resume_gives_the_same_parameters(planted_dir, tmp_path, monkeypatch):
  config = small_config(planted_dir, **{"train.num_epochs": 3, "train.checkpoint_every_steps": 5})
  train.train_and_evaluate(config, str(tmp_path / "whole"))

  original_init = train.Trainer._compile
  calls = {"n": 0}

  def compile_with_crash(self):
    original_init(self)
    step = self.train_step

    def crashing_step(*args):
      calls["n"] += 1
      if calls["n"] == 17:  # Dies mid-epoch 2, after the step-15 checkpoint.
        raise _Killed()
      return step(*args)
    self.train_step = crashing_step

  monkeypatch.setattr(train.Trainer, "_compile", compile_with_crash)
  with pytest.raises(_Killed):
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(train.Trainer, "_compile", original_init)
  train.train_and_evaluate(config, str(tmp_path / "resumed"))

  def final_params(workdir):
    import orbax.checkpoint as ocp
    from gems_jax.training.checkpointing import Checkpoints
    ckpt = Checkpoints(str(workdir))
    step = ckpt.latest.latest_step()
    restored = ckpt.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    ckpt.close()
    return step, restored

  whole_step, whole = final_params(tmp_path / "whole")
  resumed_step, resumed = final_params(tmp_path / "resumed")
  assert whole_step == resumed_step
  chex.assert_trees_all_close(whole["state"]["params"], resumed["state"]["params"], atol=1e-6)
  assert whole["meta"]["data"] == resumed["meta"]["data"]


def test_unknown_selection_metric_names_it(planted_dir, tmp_path):
  config = small_config(planted_dir, **{"train.num_epochs": 1})
  config.train.selection_metric = "group_emotion/nonsense"
  with pytest.raises(KeyError, match="nonsense"):
    train.train_and_evaluate(config, str(tmp_path))


def test_masked_mean_and_positions_match_numpy():
  from gems_jax.models import gems
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 3)).astype(np.float32)
  mask = rng.random((2, 5)) > 0.5
  mask[1] = False
  expected = np.stack([x[0][mask[0]].mean(0) if mask[0].any() else np.zeros(3), np.zeros(3)])
  np.testing.assert_allclose(gems.masked_mean(jnp.asarray(x), jnp.asarray(mask), 1), expected,
                             rtol=1e-6, atol=1e-7)
  pe = np.asarray(gems.sinusoidal_positions(7, 6))
  t, i = 3, 2
  np.testing.assert_allclose(pe[t, 2 * i], np.sin(t * 10000 ** (-2 * i / 6)), rtol=1e-5)
  np.testing.assert_allclose(pe[t, 2 * i + 1], np.cos(t * 10000 ** (-2 * i / 6)), rtol=1e-5)


def _final_steps(workdir) -> dict[str, int]:
  rows = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
  return {r["split"]: r["step"] for r in rows if r["split"].startswith("final_")}


def test_eval_mode_reads_the_checkpoint_it_is_asked_for(planted_dir, tmp_path):
  # A learning rate of 0 gives the same score at every evaluation: only the first one improves,
  # so best (epoch 1) and latest (epoch 3) differ.
  config = small_config(planted_dir, **{"train.num_epochs": 3, "optim.learning_rate": 0.0,
                                        "optim.schedule": "constant"})
  train.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = -(-input_pipeline.num_examples(planted_dir, "train") // 16)
  for which, step in (("latest", 3 * steps_per_epoch), ("best", steps_per_epoch)):
    out = tmp_path / f"eval_{which}"
    out.mkdir()
    for name in ("checkpoints", "best", "config.json"):
      (out / name).symlink_to(tmp_path / name)
    results = train.evaluate_checkpoint(config, str(out), which=which, splits=["val"])
    assert set(results) == {"val"}
    assert _final_steps(out) == {"final_val": step}, which
  with pytest.raises(ValueError, match="checkpoint must be one of"):
    train.evaluate_checkpoint(config, str(tmp_path), which="newest")


def test_main_eval_mode_on_the_command_line(planted_dir, tmp_path):
  import subprocess
  import sys
  config = small_config(planted_dir, **{"train.num_epochs": 1})
  train.train_and_evaluate(config, str(tmp_path))
  proc = subprocess.run(
      [sys.executable, "-m", "gems_jax.main", "--config=configs/gems.py:runlocal",
       f"--config.input.data_dir={planted_dir}", "--config.input.batch_size=16",
       "--config.eval.batch_size=16", f"--workdir={tmp_path}", "--mode=eval",
       "--checkpoint=latest", "--eval_splits=test"],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "latest checkpoint" in proc.stderr
  assert proc.stderr.count("orbax") < 5, proc.stderr  # Progress and results, not library chatter.


def test_authors_variant_forecasts_the_step_after_the_input(planted_dir):
  config = gems_config.get_config("runlocal,variant=authors")
  config.input.data_dir = planted_dir
  config.input.num_steps = 5  # The planted clips have 8 steps: step 5 exists and is the target.
  spec = input_pipeline.load_spec(planted_dir)
  task = tasks.get_task(config, spec)
  it = input_pipeline.make_iterator(planted_dir, "train", batch_size=4, shuffle=False, seed=0,
                                    num_epochs=1)
  raw = next(iter(it))
  batch, _ = task.prepare_batch(raw)
  assert batch["step_mask"].shape[1] == 6  # N input steps + the target step.
  variables = task.model.init(jax.random.key(0), jax.tree.map(jnp.asarray, batch))
  outputs = task.model.apply(variables, jax.tree.map(jnp.asarray, batch))
  faces = raw["face_embedding"][:, 5]
  mask = raw["face_mask"][:, 5, :, None]
  frame = (faces * mask).sum(1) / np.maximum(mask.sum(1), 1)
  text = (raw["text_embedding"] * raw["text_mask"][..., None]).reshape(4, -1)
  np.testing.assert_allclose(outputs["forecast_target"][:, 0], np.concatenate([frame, text], -1),
                             rtol=1e-5, atol=1e-6)
  chex.assert_shape(outputs["forecast"], (4, 6, frame.shape[-1] + text.shape[-1]))
  total, terms = task.loss(outputs, {**batch, "valid": np.ones(4, bool)})
  # The authors' sum: no individual-emotion terms, the forecast MSE included.
  expected = sum(v for k, v in terms.items() if not k.startswith("individual"))
  np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_a_config_that_does_not_fit_fails_before_any_work_naming_the_key(planted_dir):
  spec = input_pipeline.load_spec(planted_dir)  # Embeddings storage: no face crops.
  config = small_config(planted_dir)
  config.input.num_steps = 3  # runlocal samples 4 landmark tokens.
  with pytest.raises(ValueError, match="num_landmark_tokens=4 exceeds config.input.num_steps=3"):
    tasks.get_task(config, spec)
  from configs import face_emotion
  with pytest.raises(ValueError, match=r"needs dataset keys \['faces'\]"):
    tasks.get_task(face_emotion.get_config("runlocal"), spec)
  config = small_config(planted_dir)
  config.task = "audio"
  with pytest.raises(ValueError, match="config.task must be one of"):
    tasks.get_task(config, spec)


def test_face_task_evaluates_every_labelled_face_once_in_fixed_size_batches():
  from configs import face_emotion
  spec = planted.planted_spec(storage="crops")
  config = face_emotion.get_config("runlocal")
  config.input.faces_per_batch = 5
  task = tasks.get_task(config, spec)
  rng = np.random.default_rng(0)
  b, t, k = 3, 4, 2
  batch = {"face_mask": rng.random((b, t, k)) < 0.7, "valid": np.array([True, True, False]),
           "individual_emotion": rng.integers(-1, 9, (b, t, k)).astype(np.int32),
           "individual_valence": rng.normal(size=(b, t, k)).astype(np.float32),
           "individual_arousal": rng.normal(size=(b, t, k)).astype(np.float32),
           "faces": rng.integers(0, 256, (b, t, k, 4, 4, 3), dtype=np.uint8)}
  labelled = batch["face_mask"] & (batch["individual_emotion"] >= 0) & batch["valid"][:, None, None]
  seen = []
  for numeric, _ in task.eval_batches(batch):
    chex.assert_shape(numeric["faces"], (5, 1, 1, 4, 4, 3))
    seen += [f.tobytes() for f, v in zip(numeric["faces"][:, 0, 0], numeric["valid"]) if v]
  assert sorted(seen) == sorted(batch["faces"][labelled].reshape(-1, 48).tobytes()[i * 48:(i + 1) * 48]
                                for i in range(int(labelled.sum())))
  assert len(seen) == labelled.sum() > 5
