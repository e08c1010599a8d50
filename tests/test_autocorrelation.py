"""AutoCorrelation, series decomposition and the Autoformer encoder layer vs NumPy references."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gems_jax.models.autocorrelation import (AutoCorrelation, AutoformerEncoderLayer,
                                             SeriesDecomposition, num_delays)
from random_params import random_params


# ---------------------------------------------------------------- NumPy references (float64).
def ref_correlation(q, k):
  """R[b, tau, h, e] = sum_t q[b, (t + tau) mod L, h, e] k[b, t, h, e], by explicit loops."""
  length = q.shape[1]
  r = np.zeros(q.shape)
  for tau in range(length):
    for t in range(length):
      r[:, tau] += q[:, (t + tau) % length] * k[:, t]
  return r


def ref_autocorrelation(q, k, v, factor, train, mask=None):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  length = q.shape[1]
  if k.shape[1] < length:
    pad = ((0, 0), (0, length - k.shape[1]), (0, 0), (0, 0))
    k, v = np.pad(k, pad), np.pad(v, pad)
  k, v = k[:, :length], v[:, :length]
  if mask is not None:
    keep = np.asarray(mask, np.float64)[:, :, None, None]
    q, k, v = q * keep, k * keep, v * keep
  w = ref_correlation(q, k).mean(axis=(2, 3))  # [B, L]
  top_k = max(1, int(factor * math.log(length)))
  out = np.zeros(v.shape)
  for b in range(q.shape[0]):
    lags = np.argsort(-(w.mean(0) if train else w[b]))[:top_k]
    scores = np.exp(w[b, lags] - w[b, lags].max())
    for lag, weight in zip(lags, scores / scores.sum()):
      out[b] += weight * np.roll(v[b], -lag, axis=0)  # out[t] += weight * v[t + lag]
  return out


def ref_moving_average(x, kernel_size, lengths=None):
  b, n, _ = x.shape
  half = (kernel_size - 1) // 2
  out = np.zeros(x.shape)
  for i in range(b):
    last = (n if lengths is None else int(lengths[i])) - 1
    for t in range(n):
      window = [x[i, min(max(t + j, 0), last)] for j in range(-half, half + 1)]
      out[i, t] = np.mean(window, axis=0)
  return out


def ref_encoder_layer(params, x, num_heads, factor, kernel_size, lengths=None):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  b, n, c = x.shape
  mask = None if lengths is None else np.arange(n)[None] < np.asarray(lengths)[:, None]
  attn = p["attention"]
  heads = lambda a: a.reshape(b, n, num_heads, c // num_heads)
  q, k, v = (heads(x @ attn[name]["kernel"] + attn[name]["bias"]) for name in ("query", "key",
                                                                              "value"))
  corr = ref_autocorrelation(q, k, v, factor, False, mask).reshape(b, n, c)
  x = x + corr @ attn["out"]["kernel"] + attn["out"]["bias"]
  x = x - ref_moving_average(x, kernel_size, lengths)
  hidden = x @ p["ff_in"]["kernel"]
  hidden = 0.5 * hidden * (1.0 + np.vectorize(math.erf)(hidden / math.sqrt(2.0)))
  y = x + hidden @ p["ff_out"]["kernel"]
  out = y - ref_moving_average(y, kernel_size, lengths)
  return out if mask is None else out * mask[..., None]


def _qkv(b, l, s, h=2, e=3, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (b, l, h, e)), jax.random.normal(keys[1], (b, s, h, e)),
          jax.random.normal(keys[2], (b, s, h, e)))


def _length_mask(lengths, n):
  return jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]


# ---------------------------------------------------------------- tests.
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("l,s", [(16, 16), (15, 11), (12, 17)])
def test_autocorrelation_matches_reference(train, l, s):
  q, k, v = _qkv(3, l, s)
  layer = AutoCorrelation(factor=2.0)
  out = jax.jit(lambda q, k, v: layer.apply({}, q, k, v, train=train))(q, k, v)
  chex.assert_shape(out, q.shape)
  np.testing.assert_allclose(np.asarray(out), ref_autocorrelation(q, k, v, 2.0, train),
                             rtol=1e-5, atol=1e-5)


def test_training_shares_delays_across_the_batch_and_inference_does_not():
  # q is k circularly advanced by 3 steps (example 0) or 7 steps (example 1), so the correlation
  # R[tau] = sum_t q[t + tau] k[t] peaks at tau = -3 resp. -7 (mod 20).
  k = np.random.default_rng(0).normal(size=(20, 1, 1))
  q = jnp.asarray(np.stack([np.roll(k, -3, axis=0), np.roll(k, -7, axis=0)]), jnp.float32)
  k = jnp.asarray(np.stack([k, k]), jnp.float32)
  v = jnp.broadcast_to(jnp.arange(20.0)[None, :, None, None], q.shape)  # value = its own time
  layer = AutoCorrelation(factor=0.4)  # int(0.4 ln 20) = 1 delay, so out[0] = the chosen lag
  lags = np.asarray(layer.apply({}, q, k, v, train=False))[:, 0, 0, 0]
  np.testing.assert_array_equal(lags, [17, 13])
  lags = np.asarray(layer.apply({}, q, k, v, train=True))[:, 0, 0, 0]
  assert lags[0] == lags[1] and lags[0] in (17, 13)


def test_masked_autocorrelation_zeroes_padding_before_the_ffts():
  q, k, v = _qkv(2, 14, 14, seed=3)
  mask = _length_mask([14, 9], 14)
  noisy = [a.at[1, 9:].set(100.0) for a in (q, k, v)]
  out = AutoCorrelation().apply({}, *noisy, mask)
  np.testing.assert_allclose(np.asarray(out), ref_autocorrelation(q, k, v, 1.0, False, mask),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lengths", [None, [30, 17, 1]])
def test_series_decomposition_replicates_the_ends(lengths):
  x = jax.random.normal(jax.random.key(1), (3, 30, 4))
  mask = None if lengths is None else _length_mask(lengths, 30)
  seasonal, trend = jax.jit(lambda x, m: SeriesDecomposition(7).apply({}, x, m))(x, mask)
  want = ref_moving_average(np.asarray(x), 7, lengths)
  real = np.ones((3, 30), bool) if mask is None else np.asarray(mask)
  np.testing.assert_allclose(np.asarray(trend)[real], want[real], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(seasonal + trend), np.asarray(x), atol=1e-6)
  if lengths is not None:  # a prefix-masked series decomposes like the unpadded one
    alone = SeriesDecomposition(7).apply({}, x[1:2, :17])[1]
    np.testing.assert_allclose(np.asarray(trend[1, :17]), np.asarray(alone[0]), atol=1e-6)


@pytest.mark.parametrize("lengths", [None, [16, 11]])
def test_encoder_layer_matches_reference(lengths):
  layer = AutoformerEncoderLayer(d_model=12, num_heads=3, d_ff=20, factor=1.5, moving_avg=5)
  x = jax.random.normal(jax.random.key(2), (2, 16, 12))
  mask = None if lengths is None else _length_mask(lengths, 16)
  variables = {"params": random_params(layer, x, mask)}
  out = jax.jit(layer.apply)(variables, x, mask)
  want = ref_encoder_layer(variables["params"], x, 3, 1.5, 5, lengths)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  if lengths is not None:  # padded content does not reach real tokens
    garbage = jnp.where(mask[..., None], x, 50.0)
    np.testing.assert_allclose(np.asarray(jax.jit(layer.apply)(variables, garbage, mask)),
                               np.asarray(out), rtol=1e-5, atol=1e-5)


def test_encoder_layer_gradients_match_finite_differences():
  with jax.enable_x64(True):
    layer = AutoformerEncoderLayer(d_model=6, num_heads=2, d_ff=8, moving_avg=3, dropout_rate=0.0,
                                   dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(0), (2, 8, 6), jnp.float64)
    mask = _length_mask([8, 6], 8)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), random_params(layer, x, mask))
    weights = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
    loss = jax.jit(lambda x, p: jnp.sum(layer.apply({"params": p}, x, mask, train=True) * weights))
    check_grads(loss, (x, params), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_delay_count_and_configuration_errors():
  assert num_delays(96, 1) == 4 and num_delays(96, 3) == 13  # Autoformer: top-k = factor * ln(N)
  assert num_delays(2, 1) == 1
  x = jnp.zeros((1, 8, 4))
  with pytest.raises(ValueError, match="kernel_size=4"):
    SeriesDecomposition(4).apply({}, x)
  with pytest.raises(ValueError, match="activation='tanh'"):
    AutoformerEncoderLayer(4, 2, activation="tanh").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="mask must have shape"):
    AutoCorrelation().apply({}, *_qkv(1, 8, 8), jnp.ones((1, 7), bool))
