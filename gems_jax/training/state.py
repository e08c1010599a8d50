"""Train state, optimizer and learning-rate schedules."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util


class TrainState(flax.struct.PyTreeNode):
  """Everything a training step changes; saved whole in checkpoints.

  params: trainable Flax parameters. model_state: the other variable collections (BatchNorm
  'batch_stats', S3Attention 'constants' such as the landmark indices). `tx` is static.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def variables(self) -> dict:
    return {"params": self.params, **self.model_state}

  def apply_gradients(self, grads, model_state) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state, model_state=model_state)


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_epochs: int) -> optax.Schedule:
  """'warmup_cosine' (ours), 'constant', or 'halve_per_epoch' (the authors' lradj='type1':
  lr0 for epochs 0 and 1, then halved after every epoch)."""
  lr = optim.learning_rate
  total = max(1, steps_per_epoch * num_epochs)
  if optim.schedule == "warmup_cosine":
    warmup = max(1, min(int(optim.warmup_epochs * steps_per_epoch), total - 1))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1),
                                              end_value=lr * 1e-2)
  if optim.schedule == "constant":
    return optax.constant_schedule(lr)
  if optim.schedule == "halve_per_epoch":
    return lambda step: lr * 0.5 ** jnp.maximum(step // steps_per_epoch - 1, 0)
  raise ValueError(f"config.optim.schedule must be warmup_cosine, constant or halve_per_epoch, "
                   f"got {optim.schedule!r}")


def create_optimizer(optim: ml_collections.ConfigDict, schedule: optax.Schedule,
                     params, frozen_prefixes: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """`optim.name` 'adam' (AdamW when weight_decay > 0; the default) or 'sgd' (with `momentum`,
  decoupled weight decay when > 0), with optional clipping; parameters whose path starts with one
  of `frozen_prefixes` (e.g. 'face_branch/encoder') get no updates and no optimizer state."""
  parts = []
  if optim.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  name = optim.get("name", "adam")
  if name == "adam":
    parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay))
  elif name == "sgd":
    if optim.weight_decay:
      parts.append(optax.add_decayed_weights(optim.weight_decay))
    parts.append(optax.sgd(schedule, momentum=optim.momentum or None))
  else:
    raise ValueError(f"config.optim.name must be 'adam' or 'sgd', got {name!r}")
  tx = optax.chain(*parts)
  if not frozen_prefixes:
    return tx
  flat = traverse_util.flatten_dict(params, sep="/")
  labels = traverse_util.unflatten_dict(
      {k: "frozen" if any(k == p or k.startswith(p + "/") for p in frozen_prefixes) else "train"
       for k in flat}, sep="/")
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
