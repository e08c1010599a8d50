"""Training and evaluation library (called by main.py; every piece is testable alone).

One program from a laptop CPU to a pod: the mesh comes from `config.mesh`, every jitted function
has explicit `NamedSharding`s, each process feeds its slice of the global batch, the train state is
donated. Model selection uses the validation split only; the test split is evaluated once, at the
end, with the best checkpoint.

This module is the loop and nothing else: what is trained (model, inputs, losses, metrics, frozen
parameters, prediction rows) is the `Task` of `config.task` (gems_jax/tasks/).
"""
import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gems_jax import tasks as tasks_lib
from gems_jax.data import input_pipeline
from gems_jax.evaluation import metrics as metrics_lib
from gems_jax.training import checkpointing
from gems_jax.training import embedding_cache
from gems_jax.training import sharding as shd
from gems_jax.training import state as state_lib
from gems_jax.training.metric_writer import MetricWriter, quiet_library_logs


def _apply(task, variables, batch, *, train, rngs=None):
  mutable = ["batch_stats"] if train and "batch_stats" in variables else False
  out = task.model.apply(variables, task.model_inputs(batch), train=train, rngs=rngs, mutable=mutable)
  return out if mutable else (out, {})


def train_step(state: state_lib.TrainState, batch, rng, *, task: tasks_lib.Task):
  """One optimizer step; returns the new state and scalar metrics (loss terms, lr, grad norm)."""
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    variables = {"params": params, **state.model_state}
    outputs, updates = _apply(task, variables, batch, train=True, rngs={"dropout": dropout_rng})
    total, terms = task.loss(outputs, batch)
    return total, (terms, updates)

  (total, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  model_state = {**state.model_state, **updates}
  new_state = state.apply_gradients(grads, model_state)
  scalars = {"loss": total, "grad_norm": _global_norm(grads), **terms}
  return new_state, scalars


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def eval_step(state: state_lib.TrainState, batch, *, task: tasks_lib.Task):
  """Outputs and loss of one batch; returned replicated so every host sees the whole batch. The
  loss comes back as (loss x number of valid examples, number), so a split's loss is a mean over
  its examples, not over its batches."""
  outputs, _ = _apply(task, state.variables(), batch, train=False)
  total, terms = task.loss(outputs, batch)
  n = jnp.sum(batch["valid"], dtype=jnp.float32)
  weighted = {k: v * n for k, v in {"loss": total, **terms}.items()}
  return task.eval_outputs(outputs), batch, (weighted, n)


class Trainer:
  """Holds the task, the compiled step functions and the shardings of one run."""

  def __init__(self, config, spec, mesh, steps_per_epoch: int):
    self.config, self.spec, self.mesh = config, spec, mesh
    self.task = tasks_lib.get_task(config, spec)
    self.steps_per_epoch = steps_per_epoch
    self.schedule = state_lib.learning_rate_schedule(config.optim, steps_per_epoch,
                                                     config.train.num_epochs)
    self.repl = shd.replicated(mesh)
    self.batch_sharding = shd.batch_sharding(mesh)

  def init_state(self, sample_batch: dict, rng: jax.Array) -> state_lib.TrainState:
    """Initialises parameters directly in their sharded layout (jit with out_shardings)."""
    local = {k: v[: max(1, v.shape[0] // max(1, jax.local_device_count()))] for k, v in
             sample_batch.items()}
    init_rngs = {"params": rng, "dropout": rng}

    def init_fn():
      inputs = self.task.model_inputs(jax.tree.map(jnp.asarray, local))
      variables = self.task.model.init(init_rngs, inputs, train=False)
      params = variables.pop("params")
      frozen = self.task.frozen_prefixes(params)
      tx = state_lib.create_optimizer(self.config.optim, self.schedule, params, frozen)
      return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=tx.init(params), model_state=dict(variables), tx=tx)

    abstract = jax.eval_shape(init_fn)
    self.state_sharding = shd.tree_shardings(abstract, self.mesh)
    state = jax.jit(init_fn, out_shardings=self.state_sharding)()
    state = self.task.load_pretrained(state)
    self._compile()
    return state

  def _compile(self):
    step = functools.partial(train_step, task=self.task)
    self.train_step = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding, self.repl),
                              out_shardings=(self.state_sharding, self.repl), donate_argnums=(0,))
    estep = functools.partial(eval_step, task=self.task)
    self.eval_step = jax.jit(estep, in_shardings=(self.state_sharding, self.batch_sharding),
                             out_shardings=self.repl)

  def evaluate(self, state, split: str, *, collect_predictions: bool = False):
    """Metrics over the whole split (padded last batch masked out; losses are per-example means),
    and optionally the prediction rows."""
    cfg = self.config
    it = input_pipeline.make_iterator(
        cfg.input.data_dir, split, batch_size=shd.per_process_batch_size(
            cfg.eval.batch_size, self.mesh, key="config.eval.batch_size"),
        shuffle=False, seed=0, num_epochs=1, shard_index=jax.process_index(),
        shard_count=jax.process_count(), decode=self.image_keys,
        worker_count=cfg.input.worker_count)
    acc = self.task.metrics()
    loss_sums, count, rows = {}, 0.0, []
    try:
      for numeric, host in (b for batch in it for b in self.task.eval_batches(batch)):
        outputs, labels, (weighted, n) = self.eval_step(state, shd.global_batch(numeric, self.mesh))
        outputs, labels = jax.tree.map(np.asarray, (outputs, labels))
        acc.update(outputs, labels)
        for k, v in weighted.items():
          loss_sums[k] = loss_sums.get(k, 0.0) + float(v)
        count += float(n)
        if collect_predictions:
          rows += self.task.prediction_rows(outputs, labels,
                                            shd.gather_host_values(host, self.mesh))
    finally:
      _close(it)
    result = acc.compute()
    result["loss"] = {k: v / max(count, 1.0) for k, v in loss_sums.items()}
    return result, rows

  @property
  def image_keys(self) -> tuple[str, ...]:
    """The JPEG keys the model reads (decoded by the input pipeline; the others are dropped)."""
    return tuple(k for k in self.task.required_keys() if k in input_pipeline.IMAGE_KEYS)


def class_names(spec) -> dict[str, tuple[str, ...]]:
  return {"group_emotion": spec.emotion_names, "individual_emotion": spec.emotion_names,
          "group_category": spec.group_category_names, "situation": spec.situation_names,
          "situational_emotion": spec.situational_emotion_names}


def headline_metrics(result: dict) -> dict[str, float]:
  """{'group_emotion/uar': ..., 'loss/loss': ...}: the model's numbers without baselines."""
  flat = {f"{head}/{name}": value for head, r in result.items() if head != "loss"
          for name, value in r["model"].items()}
  flat.update({f"loss/{name}": value for name, value in result.get("loss", {}).items()})
  return flat


def _close(iterator) -> None:
  """Stops the grain worker processes of an iterator (input.worker_count > 0), if it has any."""
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails before any work (no face cache, no checkpoint) on a configuration that cannot run,
  with a message that names the key: the mesh, the batch sizes, the dataset's fields."""
  if not config.input.data_dir:
    raise ValueError("config.input.data_dir is not set (the folder written by preprocessing.build)")
  mesh = shd.make_mesh(config.mesh)
  shd.per_process_batch_size(config.input.batch_size, mesh)
  shd.per_process_batch_size(config.eval.batch_size, mesh, key="config.eval.batch_size")
  tasks_lib.get_task(config, input_pipeline.load_spec(config.input.data_dir))


PATH_KEYS = ("data_dir", "checkpoint")  # Config fields that hold a file path, in any section.


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy whose file paths (every non-empty field named in PATH_KEYS, e.g. input.data_dir,
  model.face_encoder.checkpoint) are absolute, so the saved config.json works from any folder."""
  def visit(section: ml_collections.ConfigDict):
    for key, value in section.items():
      if isinstance(value, ml_collections.ConfigDict):
        visit(value)
      elif key in PATH_KEYS and isinstance(value, str) and value:
        section[key] = os.path.abspath(value)
  config = ml_collections.ConfigDict(config.to_dict())
  visit(config)
  return config


def selection_score(config, result: dict) -> float:
  """The validation number that selects the best checkpoint (higher is better; 'loss' negated)."""
  name = config.train.selection_metric
  flat = headline_metrics(result)
  if name == "loss":
    return -float(flat["loss/loss"])
  if name not in flat:
    raise KeyError(f"config.train.selection_metric={name!r} is not among the metrics: {sorted(flat)}")
  return float(flat[name])


def _check_finite(step: int, scalars: dict, ckpt) -> None:
  loss = float(scalars["loss"])
  if not np.isfinite(loss):
    last = ckpt.latest.latest_step()
    raise FloatingPointError(
        f"non-finite training loss {loss} at step {step} (terms: "
        f"{ {k: float(v) for k, v in scalars.items()} }); stopping. The last good checkpoint is "
        f"step {last} in {ckpt.latest.directory}; lower config.optim.learning_rate or check the data.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains with early stopping on the eval split, then evaluates the best checkpoint on the eval
  and test splits; writes metrics, predictions and a report into `workdir`. Resumes if the workdir
  holds checkpoints. Returns the final metrics {split: metrics}."""
  from tqdm import tqdm

  quiet_library_logs()
  check_config(config)
  config = with_absolute_paths(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  config = embedding_cache.prepare_input(config, workdir)
  mesh = shd.make_mesh(config.mesh)
  spec = input_pipeline.load_spec(config.input.data_dir)
  n_train = input_pipeline.num_examples(config.input.data_dir, config.input.train_split)
  steps_per_epoch = max(1, -(-n_train // config.input.batch_size))
  total_steps = steps_per_epoch * config.train.num_epochs
  trainer = Trainer(config, spec, mesh, steps_per_epoch)
  make_train_iter = functools.partial(
      input_pipeline.make_iterator, config.input.data_dir, config.input.train_split,
      batch_size=shd.per_process_batch_size(config.input.batch_size, mesh), shuffle=True,
      seed=config.seed, num_epochs=None, shard_index=jax.process_index(),
      shard_count=jax.process_count(), decode=trainer.image_keys,
      worker_count=config.input.worker_count)
  train_iter = make_train_iter()
  rng = jax.random.key(config.seed)
  sample, _ = trainer.task.prepare_batch(next(make_train_iter(worker_count=0)),
                                        np.random.default_rng(0))
  state = trainer.init_state(sample, rng)
  logging.info("model %s: %d parameters", type(trainer.task.model).__name__,
               state_lib.count_params(state.params))

  ckpt = checkpointing.Checkpoints(workdir, keep=config.checkpoint.keep)
  meta = {"best_score": None, "best_step": None, "bad_evals": 0, "stopped": False, "data": None}
  restored = ckpt.restore(state)
  if restored is not None:
    state, meta = restored
    train_iter.set_state(meta["data"])
    ckpt.ensure_best(state, meta)
    logging.info("resumed from step %d in %s", int(state.step), workdir)
  step = int(state.step)
  writer = MetricWriter(workdir)  # Drops what a killed run logged after its checkpoint.
  writer.keep_only(lambda r: r["step"] <= step and not r["split"].startswith("final_"))
  bar = tqdm(total=total_steps, initial=step, desc="train", unit="step",
             disable=jax.process_index() != 0)
  while step < total_steps and not meta["stopped"]:
    numeric, _ = trainer.task.prepare_batch(next(train_iter), np.random.default_rng((config.seed, step)))
    state, scalars = trainer.train_step(state, shd.global_batch(numeric, mesh), rng)
    step += 1
    bar.update(1)
    epoch_end = step % steps_per_epoch == 0 or step == total_steps
    if step % config.train.log_every_steps == 0 or epoch_end:
      scalars = {k: float(v) for k, v in jax.device_get(scalars).items()}
      _check_finite(step, scalars, ckpt)
      writer.write(step, "train", {**scalars, "learning_rate": float(trainer.schedule(step - 1)),
                                   "steps_per_second": bar.format_dict.get("rate") or 0.0})
      bar.set_postfix(loss=f"{scalars['loss']:.3f}")
    epoch = step // steps_per_epoch
    if epoch_end and (epoch % config.train.eval_every_epochs == 0 or step == total_steps):
      result, _ = trainer.evaluate(state, config.input.eval_split)
      writer.write(step, config.input.eval_split, headline_metrics(result))
      score = selection_score(config, result)
      improved = meta["best_score"] is None or score > meta["best_score"]
      if improved:
        meta.update(best_score=score, best_step=step, bad_evals=0)
      else:
        meta["bad_evals"] += 1
      meta["stopped"] = meta["bad_evals"] >= config.train.patience
      logging.info("step %d (epoch %d): val %s = %.4f (best %.4f at step %d)", step, epoch,
                   config.train.selection_metric, score, meta["best_score"], meta["best_step"])
      ckpt.save(step, state, dict(meta, data=train_iter.get_state()), best=improved)
    elif config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0:
      ckpt.save(step, state, dict(meta, data=train_iter.get_state()))
  bar.close()
  _close(train_iter)
  if meta["stopped"]:
    logging.info("early stopping: no improvement in %d evaluations", config.train.patience)
  results = _final_evaluation(trainer, ckpt, state, workdir, writer)
  writer.close()
  ckpt.close()
  return results


def _final_evaluation(trainer, ckpt, state, workdir, writer, splits: tuple[str, ...] | None = None,
                      which: str = checkpointing.BEST) -> dict:
  """Evaluates the `which` checkpoint once per split; writes predictions, metrics and the report."""
  from gems_jax.evaluation import predictions as predictions_lib
  from gems_jax.evaluation import report as report_lib

  cfg = trainer.config
  restored = ckpt.restore(state, which=which)
  if restored is None:
    raise FileNotFoundError(f"no {which!r} checkpoint in {workdir}")
  state, meta = restored
  splits = splits or (cfg.input.eval_split, cfg.input.test_split)
  available = input_pipeline.split_names(cfg.input.data_dir)
  results = {}
  for split in splits:
    if split not in available:
      logging.warning("split %r not in the dataset (has %s); skipped", split, sorted(available))
      continue
    result, rows = trainer.evaluate(state, split, collect_predictions=True)
    results[split] = result
    writer.write(int(state.step), f"final_{split}", headline_metrics(result))
    heads = {k: v for k, v in result.items() if k != "loss"}
    if jax.process_index() == 0:
      out_dir = os.path.join(workdir, "report", split)
      predictions_lib.write_predictions(out_dir, rows)
      report_lib.write_report(out_dir, heads, class_names(trainer.spec), writer.jsonl_path)
      logging.info("%s (%s checkpoint, step %d):\n%s", split, which, int(state.step),
                   metrics_lib.format_table(heads))
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        which: str = checkpointing.BEST, splits=None) -> dict:
  """Eval-only mode: restores the `which` ('best' or 'latest') checkpoint and writes predictions
  and metrics per split."""
  quiet_library_logs()
  check_config(config)
  config = embedding_cache.prepare_input(with_absolute_paths(config), workdir)
  mesh = shd.make_mesh(config.mesh)
  spec = input_pipeline.load_spec(config.input.data_dir)
  trainer = Trainer(config, spec, mesh, steps_per_epoch=1)
  it = input_pipeline.make_iterator(
      config.input.data_dir, config.input.eval_split, batch_size=shd.per_process_batch_size(
          config.eval.batch_size, mesh, key="config.eval.batch_size"), shuffle=False, seed=0,
      num_epochs=1, decode=trainer.image_keys)
  sample, _ = trainer.task.prepare_batch(next(iter(it)))
  state = trainer.init_state(sample, jax.random.key(config.seed))
  ckpt = checkpointing.Checkpoints(workdir, keep=config.checkpoint.keep)
  writer = MetricWriter(workdir)
  evaluated = {f"final_{split}" for split in (splits or (config.input.eval_split,
                                                         config.input.test_split))}
  writer.keep_only(lambda r: r["split"] not in evaluated)  # An evaluation replaces the previous.
  results = _final_evaluation(trainer, ckpt, state, workdir, writer,
                              splits=tuple(splits) if splits else None, which=which)
  writer.close()
  ckpt.close()
  return results
