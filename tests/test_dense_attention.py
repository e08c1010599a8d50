"""DenseSelfAttention against a NumPy softmax-attention reference, chunked and unchunked."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gems_jax.models.dense_attention import DenseSelfAttention
from random_params import random_params


def ref_dense(params, x, num_heads, mask=None, use_output_proj=True):
  """Per-head softmax(q k^T / sqrt(d)) v with padded keys excluded, by explicit loops (float64)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  b, n, c = x.shape
  d = c // num_heads
  qkv = x @ p["qkv"]["kernel"] + p["qkv"].get("bias", 0.0)
  real = np.ones((b, n), bool) if mask is None else np.asarray(mask)
  out = np.zeros((b, n, c))
  for i in range(b):
    keys = np.flatnonzero(real[i])
    for h in range(num_heads):
      q, k, v = (qkv[i, :, j * c + h * d:j * c + (h + 1) * d] for j in range(3))
      scores = q @ k[keys].T / np.sqrt(d)
      weights = np.exp(scores - scores.max(1, keepdims=True))
      out[i, :, h * d:(h + 1) * d] = weights / weights.sum(1, keepdims=True) @ v[keys]
  if use_output_proj:
    out = out @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
  return out * real[..., None]




@pytest.mark.parametrize("chunk,masked,qkv_bias", [(None, False, False), (None, True, True),
                                                    (4, True, False), (5, False, True)])
def test_matches_reference(chunk, masked, qkv_bias):
  model = DenseSelfAttention(d_model=16, num_heads=4, qkv_bias=qkv_bias, query_chunk_size=chunk)
  x = jax.random.normal(jax.random.key(0), (3, 13, 16))
  mask = (jnp.arange(13)[None] < jnp.array([[13], [7], [1]])) if masked else None
  variables = {"params": random_params(model, x, mask)}
  y = jax.jit(model.apply)(variables, x, mask)
  chex.assert_shape(y, x.shape)
  np.testing.assert_allclose(np.asarray(y), ref_dense(variables["params"], x, 4, mask),
                             rtol=1e-5, atol=1e-5)


def test_padding_content_and_chunking_do_not_change_real_tokens():
  x = jax.random.normal(jax.random.key(0), (2, 12, 8))
  mask = jnp.arange(12)[None] < jnp.array([[12], [5]])
  whole = DenseSelfAttention(d_model=8, num_heads=2, use_output_proj=False)
  chunked = DenseSelfAttention(d_model=8, num_heads=2, use_output_proj=False, query_chunk_size=5)
  variables = {"params": random_params(whole, x, mask)}
  garbage = jnp.where(mask[..., None], x, 1e3)
  outs = [jax.jit(m.apply)(variables, inp, mask) for m in (whole, chunked) for inp in (x, garbage)]
  for other in outs[1:]:
    np.testing.assert_allclose(np.asarray(other), np.asarray(outs[0]), rtol=1e-5, atol=1e-5)
  assert set(variables["params"]) == {"qkv"}


def test_attention_dropout_is_seeded_and_chunked_gradients_are_right():
  model = DenseSelfAttention(d_model=8, num_heads=2, dropout_rate=0.3, query_chunk_size=3)
  x = jax.random.normal(jax.random.key(0), (2, 7, 8))
  variables = {"params": random_params(model, x)}
  run = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key}))
  np.testing.assert_array_equal(run(jax.random.key(3)), run(jax.random.key(3)))
  assert not np.allclose(run(jax.random.key(3)), run(jax.random.key(4)))
  # jax.nn.dot_product_attention takes its softmax in float32 even under x64, so finite differences
  # get a float32-sized tolerance; the chunked and whole gradients must agree tightly.
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 5, 4), jnp.float64)
    mask = jnp.arange(5)[None] < jnp.array([[5], [3]])
    weights = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
    losses = []
    for chunk in (2, None):
      model = DenseSelfAttention(d_model=4, num_heads=2, dropout_rate=0.0, query_chunk_size=chunk,
                                 dtype=jnp.float64)
      params = jax.tree.map(lambda a: a.astype(jnp.float64), random_params(model, x, mask))
      losses.append(jax.jit(
          lambda x, p, m=model: jnp.sum(m.apply({"params": p}, x, mask) * weights)))
    check_grads(losses[0], (x, params), order=1, modes=["rev"], eps=1e-3, atol=1e-3, rtol=1e-3)
    grads = [jax.grad(loss, argnums=(0, 1))(x, params) for loss in losses]
    chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_bad_configuration_errors():
  x = jnp.zeros((1, 4, 6))
  with pytest.raises(ValueError, match="num_heads=4"):
    DenseSelfAttention(d_model=6, num_heads=4).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="query_chunk_size=0"):
    DenseSelfAttention(d_model=6, num_heads=2, query_chunk_size=0).init(jax.random.key(0), x)
