"""S3Attention block (smoother + conv stem + skeleton attention), as used by GEMS.

Re-implemented from the S3Attention paper (KDD'23 submission, §3, eq. 1-4) and the behaviour of the
authors' `Attention` module (GEMS `run.py:112-201`, a copy of S3Attention's time-series `run.py:98-187`). Shapes:
x [B, N, C] -> [B, N, C], heads H with head width d_h = C / H. The block returns its output
WITHOUT a residual; the caller adds x + block(x).

Computation, for the L = max_len positions the block is built for (a shorter input is padded to L
inside the block and marked as padding, so it behaves exactly like a padded batch):
1. Smoother: U = segment mean of X over r groups of C/r consecutive channels, [B, L, r];
   M = irfft(rfft(U) * F) with orthonormal FFTs and a learned complex filter F [C, L//2+1], where
   channel c reads segment `c mod r` ('mod', the authors' tiling) or `c // (C/r)` ('block', the
   paper's matrix S). This is a learned circular convolution along time with a length-L kernel.
2. Stem: Conv1d over time, kernel 3, zero padding, on concat[M, X] (2C -> C) with bias, then a norm,
   ELU and dropout. 'batch_positions' is the authors' BatchNorm1d(L) applied to [B, L, C]: one
   statistic per *position* over (batch, channels), which ties the block to length L. 'layer' is a
   per-token LayerNorm over C, independent of the length and of the other tokens.
3. Skeleton attention on [Q|K|V] = X~ W_qkv (projected only where it is read; see
   `SkeletonProjection`), per head:
   rows:    O1 = softmax(Q K[I]^T / sqrt(d_h)) V[I]           (I: s1 landmark tokens)
   columns: O2 = V[:, J] softmax(K[:, J]^T Q / sqrt(n))^T      (J: s2 landmark features of a head)
   Y = LN1(O1) + LN2(O2), halved for combine='mean' (the authors' code; the paper writes a sum),
   then an optional output projection (the authors define one but never apply it) and dropout.

Landmarks. The authors draw I = randperm(N)[:s1] and J = randperm(d_h)[:s2] once at construction and
never save them. Here a seeded NumPy generator draws a permutation `token_order` of the L positions
and `feature_index` (s2 distinct features); both live in the 'constants' collection, so a
checkpoint of the variables restores them. Without padding I = token_order[:s1], exactly the
authors' rule. With a padding mask, I is the first s1 *real* positions in `token_order`: always
distinct real tokens, the same set for every example with the same mask, and unaffected by what the
padded slots hold. If an example has fewer than s1 real tokens, the missing landmarks are masked out
of the row softmax. Use a different `landmark_seed` per block to give blocks different landmarks,
as the authors' blocks have.

Padding mask (True = real token). Padded tokens are zeroed before the smoother and after the stem,
so they add nothing to the circular convolution, the conv stem, the BatchNorm statistics (which are
computed over real entries only), the column attention's sum over tokens or the row landmarks. The
column scale sqrt(n) uses the number of real tokens n of each example (= N without a mask). Outputs
at padded positions are zero. Real-token outputs therefore do not depend on the padded content or on
how much padding there is (up to L); they do depend on L itself, because the filter and the
BatchNorm are defined for L positions.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gems_jax.models import pytorch_init

SEGMENT_MAPS = ("mod", "block")
COMBINES = ("mean", "sum")
NORMS = ("batch_positions", "layer")


def draw_token_order(seed: int, num_positions: int) -> np.ndarray:
  """A seeded random permutation of the L positions, int32 [L]."""
  return np.random.default_rng([seed, 0]).permutation(num_positions).astype(np.int32)


def draw_feature_index(seed: int, head_dim: int, num_features: int) -> np.ndarray:
  """s2 distinct seeded random features of a head, int32 [s2]."""
  order = np.random.default_rng([seed, 1]).permutation(head_dim)
  return order[:num_features].astype(np.int32)


def select_landmark_tokens(token_order: jax.Array, real: jax.Array,
                           num_tokens: int) -> tuple[jax.Array, jax.Array]:
  """The first `num_tokens` real positions of each example, in `token_order`.

  Args:
    token_order: [L] int, a permutation of the positions.
    real: [B, L] bool, True for real tokens.
    num_tokens: s1.
  Returns:
    (index [B, s1] int32 positions, valid [B, s1] bool); `valid` is False only when an example has
    fewer than s1 real tokens.
  """
  length = token_order.shape[0]
  real_in_order = jnp.take(real, token_order, axis=1)
  priority = jnp.where(real_in_order, length - jnp.arange(length), 0)
  _, rank = jax.lax.top_k(priority, num_tokens)
  return token_order[rank], jnp.take_along_axis(real_in_order, rank, axis=1)


def conv3_same(channel_major: jax.Array, x: jax.Array, real: jax.Array, kernel: jax.Array,
               bias: jax.Array) -> jax.Array:
  """Conv1d over time, kernel 3, zero padding 1, on the channel concat [M, X]; [B, N, C_out].

  M arrives channel-major, [C_m, B, N] (the layout the smoother's FFT produces), X token-major,
  [B, N, C_x] and already zero where `real` [B, N] is False; M counts as zero there too (its
  matmul's output rows are masked, which is cheaper than a pass over M). Each part is multiplied
  into the 3 taps at once ([B*N, C_i] @ [C_i, 3*C_out]; M through a transposed-operand matmul,
  which XLA runs without copying M), then the taps are summed with shifts. This avoids
  materialising the concat, transposing M and XLA's generic convolution, whose backward pass is
  several times slower on CPU. kernel [3, C_m + C_x, C_out] (Flax nn.Conv layout, tap 0 reads
  position t-1), bias [C_out].
  """
  b, n, c_x = x.shape
  c_m, c_out = channel_major.shape[0], kernel.shape[-1]
  taps_weight = jnp.transpose(kernel, (1, 0, 2)).reshape(c_m + c_x, 3 * c_out)
  taps = jax.lax.dot_general(channel_major.reshape(c_m, b * n), taps_weight[:c_m],
                             (((0,), (0,)), ((), ())))
  taps = (taps * real.reshape(b * n, 1).astype(taps.dtype)
          + x.reshape(b * n, c_x) @ taps_weight[c_m:])
  taps = taps.reshape(b, n, 3, c_out)
  before = jnp.pad(taps[:, :-1, 0], ((0, 0), (1, 0), (0, 0)))
  after = jnp.pad(taps[:, 1:, 2], ((0, 0), (0, 1), (0, 0)))
  return taps[:, :, 1] + before + after + bias


def block_diagonal(blocks: jax.Array) -> jax.Array:
  """[B, H, P, Q] -> [B, H*P, H*Q], the H blocks on the diagonal and zeros elsewhere.

  Multiplying a heads-merged [B, N, H*P] array by this applies each head's [P, Q] block to its own
  P features: a per-head product as one matmul in the [B, N, C] layout, with no transposes of the
  N-sized arrays. The zero blocks add exact zeros, so the result equals the per-head einsum.
  """
  b, h, p, q = blocks.shape
  eye = jnp.eye(h, dtype=blocks.dtype)
  return jnp.einsum("bhpq,hg->bhpgq", blocks, eye).reshape(b, h * p, h * q)


class PositionBatchNorm(nn.Module):
  """PyTorch `BatchNorm1d(L)` on [B, L, C]: per-position statistics over (batch, channels), masked.

  Train mode normalises with the batch statistics of the real entries (biased variance) and updates
  running statistics with PyTorch's momentum 0.1 and unbiased variance; positions with no real entry
  in the batch keep their running statistics. Eval mode uses the running statistics.
  """
  num_positions: int
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Any = jnp.float32  # statistics dtype (float32, or float64 in gradient checks)

  @nn.compact
  def __call__(self, z: jax.Array, real: jax.Array, *, train: bool) -> jax.Array:
    length = self.num_positions
    scale = self.param("scale", nn.initializers.ones, (length,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (length,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (length,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (length,), jnp.float32)
    z = z.astype(self.dtype)
    if train:
      weight = real.astype(self.dtype)[:, :, None]
      count = jnp.sum(weight, axis=(0, 2)) * z.shape[-1]
      mean = jnp.sum(z * weight, axis=(0, 2)) / jnp.maximum(count, 1.0)
      var = jnp.sum(jnp.square(z - mean[:, None]) * weight, axis=(0, 2)) / jnp.maximum(count, 1.0)
      if not self.is_initializing():
        seen = count > 0
        unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
        new_mean = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
        new_var = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
        ra_mean.value = jnp.where(seen, new_mean, ra_mean.value)
        ra_var.value = jnp.where(seen, new_var, ra_var.value)
    else:
      mean, var = ra_mean.value, ra_var.value
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    return (z - mean[:, None]) * inv[:, None] + bias[:, None]


class SkeletonProjection(nn.Module):
  """W_qkv [C, 3C] (+ bias), applied only where skeleton attention reads its output.

  The two attentions read all of Q = X W_q, but K and V only at the s1 landmark tokens (rows) and
  at the s2 landmark features of each head (columns). Projecting just those gives the same numbers
  as X W_qkv followed by the selections, with (C + 2 H s2) / 3C of the N-proportional matmul work
  (5/12 at the GEMS sizes C=512, H=s2=8) and without gathers on [B, L, C]-sized arrays. The
  parameters are those of `nn.Dense(3C)` named 'qkv' (kernel [C, 3C] = [W_q | W_k | W_v]), so
  checkpoints and PyTorch weight mappings are unchanged.
  """
  d_model: int
  num_heads: int
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, token_index: jax.Array, feature_index: jax.Array):
    """x [B, L, C], token_index [B, s1], feature_index [s2] ->
    q [B, L, C] (heads merged), (k1, v1) [B, s1, H, d_h], (k2, v2) [B, L, H, s2]."""
    b, length, c = x.shape
    h, s2 = self.num_heads, feature_index.shape[0]
    kernel = self.param("kernel", pytorch_init.torch_kernel_init(), (c, 3 * c), jnp.float32)
    bias = (self.param("bias", pytorch_init.torch_bias_init(c), (3 * c,), jnp.float32)
            if self.use_bias else jnp.zeros((3 * c,), jnp.float32))
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    x = x.astype(self.dtype)
    q = x @ kernel[:, :c] + bias[:c]
    rows = jnp.take_along_axis(x, token_index[:, :, None], axis=1)  # [B, s1, C]
    kv1 = (rows @ kernel[:, c:] + bias[c:]).reshape(b, -1, 2, h, c // h)
    # Landmark-feature columns of W_k and W_v, per head: [C, 2, H, s2].
    columns = jnp.take(kernel[:, c:].reshape(c, 2, h, c // h), feature_index, axis=3)
    column_bias = jnp.take(bias[c:].reshape(2, h, c // h), feature_index, axis=2)
    kv2 = (x @ columns.reshape(c, 2 * h * s2)).reshape(b, length, 2, h, s2) + column_bias
    return q, (kv1[:, :, 0], kv1[:, :, 1]), (kv2[:, :, 0], kv2[:, :, 1])


class S3Attention(nn.Module):
  """S3Attention block: x [B, N, C], mask [B, N] (True = real) -> [B, N, C], without residual.

  Attributes:
    d_model: C. num_heads: H. num_segments: r. num_landmark_tokens: s1. num_landmark_features: s2.
    max_len: L, the number of positions the Fourier filter, the landmark order and (for
      'batch_positions') the BatchNorm are built for. None: the length seen at init; later inputs
      may be shorter (padded inside) but not longer.
    dropout_rate: after ELU, on both attention maps, and on the output (rng name 'dropout').
    segment_map: 'mod' (authors' code) or 'block' (paper's S).
    combine: 'mean' (authors' code) or 'sum' (paper's eq. 1) of the two normalised branches.
    norm: 'batch_positions' (authors) or 'layer' (per-token LayerNorm, length-independent).
    use_output_proj: apply a C->C Linear after the combine (defined but unused by the authors).
    qkv_bias: bias in W_qkv. landmark_seed: seed of the landmark draw.
    dtype: compute dtype of the matmuls (float32 or bfloat16). Parameters are float32; FFTs,
      norms, softmaxes and the reductions over tokens run in float32 (float64 under x64).
  """
  d_model: int
  num_heads: int = 8
  num_segments: int = 8
  num_landmark_tokens: int = 8
  num_landmark_features: int = 8
  max_len: int | None = None
  dropout_rate: float = 0.05
  segment_map: str = "mod"
  combine: str = "mean"
  norm: str = "batch_positions"
  use_output_proj: bool = False
  qkv_bias: bool = False
  landmark_seed: int = 0
  dtype: Any = jnp.float32

  @property
  def _accum_dtype(self) -> Any:
    """float32 for float32/bfloat16 compute; float64 when the block itself runs in float64."""
    return jnp.promote_types(self.dtype, jnp.float32)

  def _check_config(self, x: jax.Array, mask: jax.Array | None) -> None:
    c, h, r = self.d_model, self.num_heads, self.num_segments
    if x.ndim != 3 or x.shape[-1] != c:
      raise ValueError(f"S3Attention expects x of shape [B, N, d_model={c}], got {x.shape}")
    if mask is not None and mask.shape != x.shape[:2]:
      raise ValueError(f"S3Attention mask must have shape {x.shape[:2]}, got {mask.shape}")
    if c % h or c % r:
      raise ValueError(f"d_model={c} must be divisible by num_heads={h} and num_segments={r}")
    if not 1 <= self.num_landmark_features <= c // h:
      raise ValueError(f"num_landmark_features={self.num_landmark_features} must be in "
                       f"[1, head_dim={c // h}]")
    for name, value, allowed in (("segment_map", self.segment_map, SEGMENT_MAPS),
                                 ("combine", self.combine, COMBINES), ("norm", self.norm, NORMS)):
      if value not in allowed:
        raise ValueError(f"S3Attention.{name}={value!r}; expected one of {allowed}")

  def _block_length(self, n: int) -> int:
    """L: max_len, else the length the variables were created for, else the input length."""
    if self.max_len is not None:
      length = self.max_len
    elif self.has_variable("constants", "token_order"):
      length = self.get_variable("constants", "token_order").shape[0]
    else:
      length = n
    if n > length:
      raise ValueError(f"S3Attention got N={n} tokens but is built for L={length} positions "
                       f"(max_len={self.max_len}); raise max_len")
    if self.num_landmark_tokens > length:
      raise ValueError(f"num_landmark_tokens={self.num_landmark_tokens} exceeds L={length}")
    return length

  def _smooth(self, x: jax.Array) -> jax.Array:
    """Segment mean -> rFFT -> learned complex filter per channel -> irFFT; [C, B, L] float32.

    Channel-major, so that the inverse FFT runs over the last axis and neither its input nor its
    output needs a transpose; the stem's matmul reads the result transposed for free. For the same
    reason the filter is stored [C, L//2+1, 2] (real, imaginary); the authors store [L//2+1, C, 2].
    The output is not zeroed at padded positions; `conv3_same` does that.
    """
    b, length, c = x.shape
    r = self.num_segments
    width = c // r
    segment_mean = jnp.mean(x.astype(self._accum_dtype).reshape(b, length, r, width), axis=-1)
    # Orthonormal rfft then orthonormal irfft scale by 1/sqrt(L) twice, exactly as the default
    # norms do (1, then 1/L); the defaults avoid a rescaling pass over the [C, B, L] output.
    spectrum = jnp.fft.rfft(jnp.transpose(segment_mean, (2, 0, 1)), axis=-1)
    filt = self.param("fourier_filter", pytorch_init.kaiming_uniform_relu(2 * c),
                      (c, length // 2 + 1, 2), jnp.float32)
    filt = jax.lax.complex(filt[..., 0], filt[..., 1])  # [C, F]
    freqs = spectrum.shape[-1]
    if self.segment_map == "mod":  # channel c = w * r + j reads segment j = c mod r
      filtered = spectrum[None] * filt.reshape(width, r, 1, freqs)
    else:  # channel c = j * width + w reads segment j = c // width
      filtered = spectrum[:, None] * filt.reshape(r, width, 1, freqs)
    return jnp.fft.irfft(filtered.reshape(c, b, freqs), n=length, axis=-1)

  def _stem(self, smoothed: jax.Array, x: jax.Array, real: jax.Array, train: bool) -> jax.Array:
    """Conv(k=3) on concat[smoothed ([C, B, L]), x ([B, L, C])] -> norm -> ELU -> dropout; padded
    tokens zeroed."""
    c = self.d_model
    kernel = self.param("stem_kernel", pytorch_init.torch_kernel_init(), (3, 2 * c, c), jnp.float32)
    bias = self.param("stem_bias", pytorch_init.torch_bias_init(3 * 2 * c), (c,), jnp.float32)
    z = conv3_same(smoothed.astype(self.dtype), x, real, kernel.astype(self.dtype),
                   bias.astype(self.dtype))
    if self.norm == "batch_positions":
      z = PositionBatchNorm(num_positions=x.shape[1], dtype=self._accum_dtype,
                            name="norm")(z, real, train=train)
    else:
      z = nn.LayerNorm(epsilon=1e-5, dtype=self._accum_dtype, name="norm")(z)
    z = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.elu(z))
    return (z * real[..., None]).astype(self.dtype)

  def _landmarks(self, real: jax.Array, mask_given: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(token index [B,s1], token valid [B,s1], feature index [s2]) from the 'constants'."""
    b, length = real.shape
    s1 = self.num_landmark_tokens
    s2, seed = self.num_landmark_features, self.landmark_seed
    order = self.variable("constants", "token_order",
                          lambda: jnp.asarray(draw_token_order(seed, length))).value
    features = self.variable(
        "constants", "feature_index",
        lambda: jnp.asarray(draw_feature_index(seed, self.d_model // self.num_heads, s2))).value
    if order.shape != (length,) or features.shape != (s2,):
      raise ValueError(f"S3Attention constants have shapes token_order {order.shape}, "
                       f"feature_index {features.shape}; expected ({length},), ({s2},)")
    if mask_given:
      index, valid = select_landmark_tokens(order, real, s1)
    else:
      index = jnp.broadcast_to(order[:s1], (b, s1))
      valid = jnp.ones((b, s1), bool)
    return index, valid, features

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    self._check_config(x, mask)
    b, n, c = x.shape
    h = self.num_heads
    head_dim = c // h
    length = self._block_length(n)
    real = jnp.ones((b, n), bool) if mask is None else mask.astype(bool)
    if n < length:
      x = jnp.pad(x, ((0, 0), (0, length - n), (0, 0)))
      real = jnp.pad(real, ((0, 0), (0, length - n)))
    x = x.astype(self.dtype) * real[..., None].astype(self.dtype)

    stem = self._stem(self._smooth(x), x, real, train)
    token_index, token_valid, feature_index = self._landmarks(real, mask is not None or n < length)
    q, (k1, v1), (k2, v2) = SkeletonProjection(
        d_model=c, num_heads=h, use_bias=self.qkv_bias, dtype=self.dtype,
        name="qkv")(stem, token_index, feature_index)
    q = q * real[:, :, None].astype(q.dtype)

    # Row attention over the s1 landmark tokens: logits [B, L, H, s1]. The per-head products run
    # as matmuls with block-diagonal right-hand sides, so q and the outputs stay [B, L, C].
    logits1 = jnp.matmul(q, block_diagonal(jnp.einsum("bshd->bhds", k1)),
                         preferred_element_type=self._accum_dtype).reshape(b, length, h, -1)
    logits1 = logits1 / np.sqrt(head_dim)
    logits1 = jnp.where(token_valid[:, None, None, :], logits1, jnp.finfo(logits1.dtype).min)
    probs1 = nn.Dropout(self.dropout_rate, deterministic=not train)(jax.nn.softmax(logits1, -1))
    out1 = probs1.reshape(b, length, -1).astype(self.dtype) @ block_diagonal(
        jnp.einsum("bshd->bhsd", v1))

    # Column attention over the s2 landmark features of each head: logits [B, H, d_h, s2], the
    # diagonal (same-head) blocks of the one [C, H*s2] product over tokens. The cross-head blocks
    # are wasted work (H*C*H*s2 per token, small next to the C*C projections) that saves
    # transposing q to head-major.
    num_real = jnp.maximum(jnp.sum(real, axis=1), 1).astype(self._accum_dtype)
    all_pairs = jnp.einsum("bnc,bng->bcg", q, k2.reshape(b, length, -1),
                           preferred_element_type=self._accum_dtype)
    logits2 = jnp.einsum("bhdhs->bhds", all_pairs.reshape(b, h, head_dim, h, -1))
    logits2 = logits2 / jnp.sqrt(num_real)[:, None, None, None]
    probs2 = nn.Dropout(self.dropout_rate, deterministic=not train)(jax.nn.softmax(logits2, -1))
    out2 = v2.reshape(b, length, -1) @ block_diagonal(
        jnp.einsum("bhds->bhsd", probs2.astype(self.dtype)))

    y1 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_row")(out1)
    y2 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_col")(out2)
    y = y1 + y2
    if self.combine == "mean":
      y = 0.5 * y
    if self.use_output_proj:
      y = pytorch_init.torch_dense(c, c, dtype=self.dtype, name="out_proj")(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = y * real[..., None].astype(y.dtype)
    return y[:, :n].astype(self.dtype)
