"""Random parameters of a module's structure, for reference tests, without compiling `init`."""
import jax
import jax.numpy as jnp
import numpy as np


def random_params(module, *args, seed: int = 0):
  """`module.init(...)["params"]` shapes filled with U(-1, 1)/sqrt(fan_in) values.

  Tracing `init` with `jax.eval_shape` costs no XLA compile (init compiles are a large share of a
  small test's time on CPU); vectors get U(-1, 1)/2 so that biases and norm scales that a
  reference ignores or swaps show up.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [
      jnp.asarray(rng.uniform(-1, 1, l.shape) / np.sqrt(l.shape[0] if l.ndim > 1 else 4), l.dtype)
      for l in leaves])
