"""Learning-rate schedules and the optimizer of gems_jax/training/state.py against closed forms,
the authors' `adjust_learning_rate(lradj='type1')` (gems_reference.md §4.2) and optax itself."""
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import gems as gems_config
from gems_jax.training import state as state_lib


def optim_config(**overrides):
  optim = gems_config.get_config().optim
  for key, value in overrides.items():
    optim[key] = value
  return optim


def values(schedule, steps) -> np.ndarray:
  return np.array([float(schedule(jnp.asarray(s, jnp.int32))) for s in steps])


# ---------------------------------------------------------------------------- schedules.
def ref_warmup_cosine(step, lr, warmup, total):
  """0 -> lr linearly over `warmup` steps, then cosine from lr to lr/100 at `total` steps."""
  if step <= warmup:
    return lr * step / warmup
  frac = min(step - warmup, total - warmup) / (total - warmup)
  end = lr * 1e-2
  return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * frac))


@pytest.mark.parametrize("warmup_epochs,steps_per_epoch,num_epochs", [(1.0, 10, 4), (0.5, 6, 5)])
def test_warmup_cosine(warmup_epochs, steps_per_epoch, num_epochs):
  lr = 3e-3
  optim = optim_config(schedule="warmup_cosine", learning_rate=lr, warmup_epochs=warmup_epochs)
  schedule = state_lib.learning_rate_schedule(optim, steps_per_epoch, num_epochs)
  warmup, total = int(warmup_epochs * steps_per_epoch), steps_per_epoch * num_epochs
  middle = (warmup + total) // 2 if (warmup + total) % 2 == 0 else None
  checks = {0: 0.0, warmup: lr, total: lr * 1e-2}
  if middle is not None:
    checks[middle] = (lr + lr * 1e-2) / 2  # cos(pi/2) = 0
  for step, expected in checks.items():
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-12,
                               err_msg=f"step {step}")
  steps = np.arange(total + 5)
  np.testing.assert_allclose(values(schedule, steps),
                             [ref_warmup_cosine(s, lr, warmup, total) for s in steps],
                             rtol=1e-5, atol=1e-12)


def test_constant():
  schedule = state_lib.learning_rate_schedule(optim_config(schedule="constant",
                                                           learning_rate=2e-4), 7, 3)
  np.testing.assert_allclose(values(schedule, [0, 1, 6, 7, 20, 100]), 2e-4, rtol=1e-6)


def authors_lr_table(lr0: float, num_epochs: int) -> list[float]:
  """The lr each 0-based epoch trains with, by running the authors' loop (run.py:1259,
  utils/tools.py:8-25): after epoch `e`, adjust_learning_rate(epoch=e+1) with lradj='type1'
  sets lr = lr0 * 0.5 ** ((epoch - 1) // 1)."""
  lr, table = lr0, []
  for e in range(num_epochs):
    table.append(lr)
    epoch = e + 1
    lr = lr0 * (0.5 ** ((epoch - 1) // 1))
  return table


def test_halve_per_epoch_matches_authors_type1():
  lr0, steps_per_epoch, num_epochs = 5e-5, 3, 7
  table = authors_lr_table(lr0, num_epochs)
  assert table[:4] == [lr0, lr0, lr0 / 2, lr0 / 4]  # 1-based epochs 1 and 2 use lr0
  schedule = state_lib.learning_rate_schedule(
      optim_config(schedule="halve_per_epoch", learning_rate=lr0), steps_per_epoch, num_epochs)
  steps = np.arange(steps_per_epoch * num_epochs)
  np.testing.assert_allclose(values(schedule, steps),
                             [table[s // steps_per_epoch] for s in steps], rtol=1e-6)


def test_unknown_schedule_raises():
  with pytest.raises(ValueError, match=r"config\.optim\.schedule"):
    state_lib.learning_rate_schedule(optim_config(schedule="linear"), 10, 2)


# ---------------------------------------------------------------------------- optimizer.
def toy_params():
  """A GEMS-like tree; the frozen encoder leaves have a shape no trained leaf has."""
  return {"face_branch": {"encoder": {"kernel": jnp.ones((7, 3)), "bias": jnp.ones((11,))},
                          "emotion": {"kernel": jnp.ones((4, 9)), "bias": jnp.zeros((9,))}},
          "embed": {"kernel": jnp.full((5, 4), 0.5), "bias": jnp.zeros((4,))}}


def leaf_paths(tree) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_frozen_prefixes_get_no_update_and_no_state(weight_decay):
  params = toy_params()
  optim = optim_config(learning_rate=1e-2, weight_decay=weight_decay)
  tx = state_lib.create_optimizer(optim, optax.constant_schedule(1e-2), params,
                                  frozen_prefixes=("face_branch/encoder",))
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  new = params
  update = jax.jit(tx.update)
  for _ in range(2):
    updates, opt_state = update(grads, opt_state, new)
    new = optax.apply_updates(new, updates)
  chex.assert_trees_all_equal(new["face_branch"]["encoder"], params["face_branch"]["encoder"])
  trained = lambda tree: jax.tree.leaves((tree["embed"], tree["face_branch"]["emotion"]))
  for old, moved in zip(trained(params), trained(new)):
    assert np.all(np.asarray(old) != np.asarray(moved))
  # Adam moments exist for the trained leaves only.
  paths = leaf_paths(opt_state)
  assert not any("encoder" in p for p in paths), paths
  shapes = [tuple(x.shape) for x in jax.tree.leaves(opt_state)]
  assert (7, 3) not in shapes and (11,) not in shapes
  for shape in ((4, 9), (9,), (5, 4), (4,)):
    assert shapes.count(shape) >= 2, (shape, shapes)  # mu and nu


def test_without_frozen_prefixes_every_leaf_has_state():
  """Sanity for the test above: without the prefix the encoder leaves do get Adam moments."""
  params = toy_params()
  tx = state_lib.create_optimizer(optim_config(), optax.constant_schedule(1e-2), params)
  shapes = [tuple(x.shape) for x in jax.tree.leaves(tx.init(params))]
  assert shapes.count((7, 3)) == 2 and shapes.count((11,)) == 2


def two_adam_steps(tx, params):
  """A huge gradient, then a moderate one of the other sign; returns the params after both."""
  state = tx.init(params)
  for scale in (1e6, -1.0):
    grads = jax.tree.map(lambda p: scale * jnp.linspace(0.5, 1.5, p.size).reshape(p.shape), params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_gradient_clipping_matches_optax_chain():
  params = {"a": jnp.ones((3, 4)), "b": jnp.zeros((5,))}
  lr = 1e-2
  optim = optim_config(learning_rate=lr, grad_clip_norm=1.0, weight_decay=0.0)
  adam = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  ours = two_adam_steps(
      state_lib.create_optimizer(optim, optax.constant_schedule(lr), params), params)
  clipped = two_adam_steps(optax.chain(optax.clip_by_global_norm(1.0), adam), params)
  plain = two_adam_steps(adam, params)
  chex.assert_trees_all_close(ours, clipped, rtol=1e-6, atol=1e-7)
  # Sanity: clipping visibly changes this sequence, so the comparison above can fail.
  assert np.abs(np.asarray(clipped["a"] - plain["a"])).max() > 1e-3
  # grad_clip_norm = 0 disables clipping: plain Adam.
  unclipped = state_lib.create_optimizer(optim_config(learning_rate=lr, grad_clip_norm=0.0),
                                         optax.constant_schedule(lr), params)
  chex.assert_trees_all_close(two_adam_steps(unclipped, params), plain, rtol=1e-6, atol=1e-7)


def test_sgd_with_momentum_matches_the_heavy_ball_update():
  """config.optim.name='sgd' (the privacy audio-visual model): torch's SGD(momentum) update,
  v <- mu v + g, p <- p - lr v, written out by hand."""
  optim = ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.1, momentum=0.9,
                                         weight_decay=0.0, grad_clip_norm=0.0))
  params = {"w": jnp.array([1.0, -2.0])}
  tx = state_lib.create_optimizer(optim, optax.constant_schedule(0.1), params)
  opt_state = tx.init(params)
  p, v = np.array([1.0, -2.0]), np.zeros(2)
  for _ in range(3):
    grads = {"w": 2.0 * params["w"]}  # d/dw of |w|^2.
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    v = 0.9 * v + 2.0 * p
    p = p - 0.1 * v
  np.testing.assert_allclose(params["w"], p, rtol=1e-6)
  with pytest.raises(ValueError, match="config.optim.name"):
    state_lib.create_optimizer(ml_collections.ConfigDict(dict(name="lamb", grad_clip_norm=0.0)),
                           optax.constant_schedule(0.1), params)
