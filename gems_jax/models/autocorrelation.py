"""Autoformer AutoCorrelation, series decomposition and encoder layer (Wu et al., NeurIPS 2021).

The GEMS paper's figure puts an "AutoCorrelation + Feed Forward" encoder before the S3Attention
blocks; the authors' code never runs one (their copy cannot run: it reads undefined attributes).
This is the plain FFT form of Autoformer (Wu et al., NeurIPS 2021), re-implemented from its
description.

AutoCorrelation, for queries q [B, L, H, E], keys k [B, S, H, E] and values v [B, S, H, D]:
1. keys and values are zero-padded (S < L) or truncated (S > L) to length L;
2. period discovery: R[b, tau, h, e] = sum_t q[(t + tau) mod L] k[t], the circular cross-correlation
   for every lag, computed as irfft(rfft(q) * conj(rfft(k)), n=L) in O(L log L);
3. w[b, tau] = mean over (h, e) of R; top_k = max(1, int(factor * ln L)) lags;
   training: the lags are the top-k of the batch mean of w, shared by the batch (Autoformer's
   `time_delay_agg_training`); inference: the top-k of each w[b] (`time_delay_agg_inference`);
4. out[b, t] = sum_i softmax_i(w[b, tau_i]) v[b, (t + tau_i) mod L].
Autoformer calls irfft without n, which returns L-1 lags for odd L; here n=L, the correct length.

Padding mask (True = real token): q, k and v are zeroed at padded positions before the FFTs, so
padded tokens add nothing to the correlation and the rolled values. The limitation: the correlation
is still circular over the padded length L, not over each example's real length, so real-token
outputs differ from those of the unpadded sequence (they are only independent of what the padded
slots hold). The moving average replicates the last *real* token at the end, which makes the
decomposition of a prefix-masked sequence equal to that of the unpadded one; it assumes the real
tokens come first (end padding), as everywhere in GEMS.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gems_jax.models import pytorch_init

ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu}


def num_delays(length: int, factor: float) -> int:
  """Autoformer's top_k = int(factor * ln L), at least 1 and at most L."""
  return min(max(1, int(factor * math.log(length))), length)


def circular_correlation(q: jax.Array, k: jax.Array) -> jax.Array:
  """R[b, tau] = sum_t q[b, (t + tau) mod L] * k[b, t] along axis 1, via FFTs; q, k [B, L, ...]."""
  length = q.shape[1]
  spectrum = jnp.fft.rfft(q, axis=1) * jnp.conj(jnp.fft.rfft(k, axis=1))
  return jnp.fft.irfft(spectrum, n=length, axis=1)


def aggregate_delays(values: jax.Array, delays: jax.Array, weights: jax.Array) -> jax.Array:
  """out[b, t] = sum_i weights[b, i] * values[b, (t + delays[b, i]) mod L]; values [B, L, ...]."""
  length = values.shape[1]
  index = (jnp.arange(length)[None, None, :] + delays[:, :, None]) % length  # [B, k, L]
  shifted = jax.vmap(lambda v, i: v[i])(values, index)  # [B, k, L, ...]
  weights = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
  return jnp.sum(shifted * weights.astype(values.dtype), axis=1)


class AutoCorrelation(nn.Module):
  """Parameter-free AutoCorrelation: (q [B,L,H,E], k [B,S,H,E], v [B,S,H,D]) -> [B,L,H,D]."""
  factor: float = 1.0

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    b, length = q.shape[:2]
    if k.shape[1] < length:
      pad = ((0, 0), (0, length - k.shape[1]), (0, 0), (0, 0))
      k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    k, v = k[:, :length], v[:, :length]
    if mask is not None:
      if mask.shape != (b, length):
        raise ValueError(f"AutoCorrelation mask must have shape {(b, length)}, got {mask.shape}")
      keep = mask.astype(q.dtype)[:, :, None, None]
      q, k, v = q * keep, k * keep, v * keep
    accum = jnp.promote_types(q.dtype, jnp.float32)
    corr = circular_correlation(q.astype(accum), k.astype(accum))
    mean_corr = jnp.mean(corr, axis=(2, 3))  # [B, L]
    top_k = num_delays(length, self.factor)
    if train:
      _, shared = jax.lax.top_k(jnp.mean(mean_corr, axis=0), top_k)
      delays = jnp.broadcast_to(shared, (b, top_k))
      scores = jnp.take(mean_corr, shared, axis=1)
    else:
      scores, delays = jax.lax.top_k(mean_corr, top_k)
    return aggregate_delays(v, delays, jax.nn.softmax(scores, axis=-1))


class AutoCorrelationLayer(nn.Module):
  """Q/K/V projections (with bias) -> AutoCorrelation -> output projection; [B,L,C] -> [B,L,C]."""
  d_model: int
  num_heads: int
  factor: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, keys: jax.Array, values: jax.Array,
               mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    c, h = self.d_model, self.num_heads
    if c % h:
      raise ValueError(f"d_model={c} must be divisible by num_heads={h}")

    def project(x, name):
      y = pytorch_init.torch_dense(c, x.shape[-1], dtype=self.dtype, name=name)(x)
      return y.reshape(x.shape[:2] + (h, c // h))

    out = AutoCorrelation(self.factor)(project(queries, "query"), project(keys, "key"),
                                       project(values, "value"), mask, train=train)
    out = out.reshape(out.shape[:2] + (c,)).astype(self.dtype)
    return pytorch_init.torch_dense(c, c, dtype=self.dtype, name="out")(out)


def moving_average(x: jax.Array, kernel_size: int, mask: jax.Array | None = None) -> jax.Array:
  """Mean over a centred window of odd `kernel_size` along time, replicate-padding both ends.

  x [B, N, C]; with a mask, the end is padded with the last real token of each example.
  """
  b, n = x.shape[:2]
  half = (kernel_size - 1) // 2
  last = jnp.full((b,), n - 1) if mask is None else jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
  index = jnp.clip(jnp.arange(-half, n + half)[None, :], 0, last[:, None])  # [B, N + 2 half]
  padded = jnp.take_along_axis(x, index[:, :, None], axis=1)
  return sum(padded[:, j:j + n] for j in range(kernel_size)) / kernel_size


class SeriesDecomposition(nn.Module):
  """x -> (seasonal = x - trend, trend = moving average of x); x [B, N, C]."""
  kernel_size: int = 25

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise ValueError(f"SeriesDecomposition.kernel_size={self.kernel_size} must be odd and >= 1 "
                       "(an even window shortens the series in Autoformer)")
    trend = moving_average(x, self.kernel_size, mask)
    return x - trend, trend


class AutoformerEncoderLayer(nn.Module):
  """Autoformer encoder layer, residuals included: [B, N, C] -> [B, N, C].

  x = decomp(x + Dropout(AutoCorrelation(x))); y = Dropout(W2 Dropout(act(W1 x)));
  out = decomp(x + y), keeping the seasonal parts. W1 (C -> d_ff) and W2 (d_ff -> C) are
  Autoformer's kernel-1 Conv1d layers without bias. Padded positions of the output are zero.
  """
  d_model: int
  num_heads: int
  d_ff: int = 2048
  factor: float = 1.0
  moving_avg: int = 25
  dropout_rate: float = 0.05
  activation: str = "gelu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"AutoformerEncoderLayer.activation={self.activation!r}; expected one of "
                       f"{sorted(ACTIVATIONS)}")
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"AutoformerEncoderLayer expects [B, N, {self.d_model}], got {x.shape}")
    c = self.d_model
    x = x.astype(self.dtype)
    attended = AutoCorrelationLayer(c, self.num_heads, self.factor, self.dtype,
                                    name="attention")(x, x, x, mask, train=train)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(attended)
    x, _ = SeriesDecomposition(self.moving_avg)(x, mask)
    y = pytorch_init.torch_dense(self.d_ff, c, use_bias=False, dtype=self.dtype, name="ff_in")(x)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(ACTIVATIONS[self.activation](y))
    y = pytorch_init.torch_dense(c, self.d_ff, use_bias=False, dtype=self.dtype, name="ff_out")(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    out, _ = SeriesDecomposition(self.moving_avg)(x + y, mask)
    if mask is not None:
      out = out * mask[..., None].astype(out.dtype)
    return out
