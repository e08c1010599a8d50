"""Masked dense multi-head self-attention with the same call signature as S3Attention.

Used for the "dense attention instead of S3" ablation and as the benchmark peer. x [B, N, C] ->
qkv = x W_qkv (one fused C -> 3C matmul, head h owns channels h*d_h..(h+1)*d_h-1 of each of Q, K, V)
-> softmax(Q K^T / sqrt(d_h)) V per head with padded keys masked out -> merge heads -> optional
output projection (with bias) -> dropout. Returns the block output WITHOUT residual; outputs at
padded positions are zero.

Without attention dropout the attention runs through `jax.nn.dot_product_attention` (XLA on CPU);
with dropout in training it is written out (softmax, dropout, matmul), because that function has no
dropout. For long N, `query_chunk_size` splits the queries into chunks processed one after another
with `lax.map` under `jax.checkpoint`, so the [chunk, N] score matrix, not the [N, N] one, bounds
the memory of both the forward and the backward pass.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gems_jax.models import pytorch_init


def attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None,
           dropout_rate: float, dropout_key: jax.Array | None) -> jax.Array:
  """Softmax attention; q [B, T, H, D], k/v [B, S, H, D], key_mask [B, S] -> [B, T, H, D].

  dropout_key None means no attention dropout (uses jax.nn.dot_product_attention).
  """
  mask = None if key_mask is None else key_mask[:, None, None, :]
  if dropout_key is None:
    return jax.nn.dot_product_attention(q, k, v, mask=mask)
  accum = jnp.promote_types(q.dtype, jnp.float32)
  logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=accum)
  logits = logits / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(accum).min)
  probs = jax.nn.softmax(logits, axis=-1)
  keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, probs.shape)
  probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhts,bshd->bthd", probs.astype(v.dtype), v)


def chunked_attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None,
                   dropout_rate: float, dropout_key: jax.Array | None,
                   chunk_size: int) -> jax.Array:
  """`attend` over query chunks of `chunk_size` (the last one zero-padded), one at a time."""
  b, n, h, d = q.shape
  num_chunks = -(-n // chunk_size)
  q = jnp.pad(q, ((0, 0), (0, num_chunks * chunk_size - n), (0, 0), (0, 0)))
  chunks = jnp.moveaxis(q.reshape(b, num_chunks, chunk_size, h, d), 1, 0)
  keys = (jnp.zeros((num_chunks,), jnp.uint32) if dropout_key is None
          else jax.random.split(dropout_key, num_chunks))

  @jax.checkpoint
  def one_chunk(args):
    q_chunk, key = args
    return attend(q_chunk, k, v, key_mask, dropout_rate, None if dropout_key is None else key)

  out = jax.lax.map(one_chunk, (chunks, keys))  # [num_chunks, B, chunk, H, D]
  return jnp.moveaxis(out, 0, 1).reshape(b, num_chunks * chunk_size, h, d)[:, :n]


class DenseSelfAttention(nn.Module):
  """Dense multi-head self-attention block: x [B, N, C], mask [B, N] -> [B, N, C] (no residual).

  Attributes:
    d_model: C. num_heads: H. dropout_rate: on the attention probabilities and on the output.
    qkv_bias: bias in W_qkv. use_output_proj: C -> C Linear after merging heads.
    query_chunk_size: process queries in chunks of this size (None: all at once).
    dtype: compute dtype; parameters are float32.
  """
  d_model: int
  num_heads: int = 8
  dropout_rate: float = 0.05
  qkv_bias: bool = False
  use_output_proj: bool = True
  query_chunk_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    c, h = self.d_model, self.num_heads
    if x.ndim != 3 or x.shape[-1] != c:
      raise ValueError(f"DenseSelfAttention expects x of shape [B, N, d_model={c}], got {x.shape}")
    if c % h:
      raise ValueError(f"d_model={c} must be divisible by num_heads={h}")
    if mask is not None and mask.shape != x.shape[:2]:
      raise ValueError(f"DenseSelfAttention mask must have shape {x.shape[:2]}, got {mask.shape}")
    if self.query_chunk_size is not None and self.query_chunk_size < 1:
      raise ValueError(f"query_chunk_size={self.query_chunk_size} must be >= 1 or None")
    b, n, _ = x.shape
    qkv = pytorch_init.torch_dense(3 * c, c, use_bias=self.qkv_bias, dtype=self.dtype,
                                   name="qkv")(x.astype(self.dtype))
    qkv = qkv.reshape(b, n, 3, h, c // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    key_mask = None if mask is None else mask.astype(bool)
    dropout_key = (self.make_rng("dropout") if train and self.dropout_rate > 0 else None)
    if self.query_chunk_size is None or self.query_chunk_size >= n:
      out = attend(q, k, v, key_mask, self.dropout_rate, dropout_key)
    else:
      out = chunked_attend(q, k, v, key_mask, self.dropout_rate, dropout_key,
                           self.query_chunk_size)
    y = out.reshape(b, n, c)
    if self.use_output_proj:
      y = pytorch_init.torch_dense(c, c, dtype=self.dtype, name="out_proj")(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    if mask is not None:
      y = y * mask[..., None].astype(y.dtype)
    return y
