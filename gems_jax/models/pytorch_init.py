"""PyTorch-default initialisers for Flax layers.

PyTorch initialises `nn.Linear` and `nn.Conv1d` weights with `kaiming_uniform_(a=sqrt(5))`, i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and their biases with the same bound. Flax's defaults differ
(lecun-normal kernels, zero biases). The GEMS and S3Attention reference models were trained from
PyTorch defaults, so the re-implementation starts from the same distributions.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_kernel_init() -> jax.nn.initializers.Initializer:
  """U(+-1/sqrt(fan_in)) for a Dense kernel [in, out] or a Conv kernel [*window, in, out].

  Flax's variance_scaling computes fan_in = in * prod(window), which is PyTorch's fan_in for convs.
  Uniform with variance scale/fan_in has bound sqrt(3 * scale / fan_in), i.e. 1/sqrt(fan_in) at
  scale 1/3.
  """
  return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> jax.nn.initializers.Initializer:
  """U(+-1/sqrt(fan_in)) for a bias, where fan_in is that of the layer's kernel."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def kaiming_uniform_relu(fan_in: int) -> jax.nn.initializers.Initializer:
  """PyTorch `kaiming_uniform_(mode='fan_in', nonlinearity='relu')`: U(+-sqrt(6/fan_in))."""
  bound = (6.0 / float(fan_in)) ** 0.5

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, in_features: int, *, use_bias: bool = True,
                dtype: Any = jnp.float32, name: str | None = None) -> nn.Dense:
  """An `nn.Dense` initialised like `torch.nn.Linear(in_features, features, bias=use_bias)`."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=torch_kernel_init(), bias_init=torch_bias_init(in_features),
                  name=name)
