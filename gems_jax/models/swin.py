"""Swin Transformer v1 (Liu et al., 2021) in Flax linen, numerically equal to timm's PyTorch Swin.

Images go in as NHWC float arrays, normalised the way timm expects (ImageNet mean/std). The module
mirrors timm's `SwinTransformer` layer by layer and names its parameters after timm's state-dict keys
(`layers_1/downsample/reduction` for `layers.1.downsample.reduction`, ...), so
`gems_jax.tools.convert_swin` can map a timm checkpoint onto it one key at a time.

Outputs of `SwinTransformer.__call__(x, train=False, return_features=False)`:
  * default: logits `[B, num_classes]`; with `num_classes=0` the pooled features `[B, C_final]`
    (1024 for Swin-B), i.e. timm's `forward_head(forward_features(x), pre_logits=True)`.
  * `return_features=True`: a dict with
      'stages'      list of per-stage outputs `[B, H_i, W_i, C_i]` (timm's `forward_intermediates`, NHWC),
      'feature_map' final-norm output `[B, H_last, W_last, C_final]` (timm's `forward_features`),
      'pooled'      its spatial mean `[B, C_final]`,
      'logits'      `[B, num_classes]` (only when `num_classes > 0`).

Training: `train=True` enables dropout, attention dropout and stochastic depth; they draw from the
'dropout' rng collection. `dtype` is the compute dtype (e.g. bfloat16) and `param_dtype` the storage
dtype of the parameters; softmax and LayerNorm statistics always run in float32.

Layout (for CPU speed; the function is timm's): inside a stage the tokens stay in window order
`[B, nW, N, C]`; a shifted block permutes its attention input and output with one constant gather each
instead of rolling and re-partitioning the grid, and attention runs head-major. The relative-position
index, the shifted-window mask and the permutations depend only on the geometry: numpy constants built
once per geometry, entering the XLA graph as literals; the bias table is gathered once per block per
call. Unlike timm, which zero-pads token grids that do not tile into windows, this port requires exact
tiling and raises `ValueError` naming the sizes.
"""
import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# Logit offset for token pairs that come from different image regions inside one shifted window
# (the value of the Swin paper code and timm; softmax turns it into ~0 weight).
MASK_VALUE = -100.0
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default, used by timm.

# timm's trunc_normal_(std=0.02): a normal with standard deviation 0.02 (cut at +-2 std here; flax's
# `stddev` is that of the untruncated normal, so divide by the std of a +-2 cut unit normal).
_dense_init = nn.initializers.truncated_normal(stddev=0.02 / 0.87962566103423978)

SWIN_VARIANTS: dict[str, dict] = {
    "swin_tiny_patch4_window7_224": dict(
        img_size=224, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_small_patch4_window7_224": dict(
        img_size=224, window_size=7, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin_base_patch4_window7_224": dict(
        img_size=224, window_size=7, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "swin_base_patch4_window12_384": dict(
        img_size=384, window_size=12, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "swin_large_patch4_window7_224": dict(
        img_size=224, window_size=7, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
    "swin_large_patch4_window12_384": dict(
        img_size=384, window_size=12, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclasses.dataclass(frozen=True)
class StageGeometry:
  """Token grid `(H, W)` of one stage, its effective window and the shift of its odd blocks."""
  resolution: tuple[int, int]
  window: tuple[int, int]
  shift: tuple[int, int]


def stage_geometry(img_size: int | Sequence[int], patch_size: int, num_stages: int,
                   window_size: int) -> tuple[StageGeometry, ...]:
  """Per-stage geometry, following timm: a window never exceeds the grid, and no shift when it covers it.

  Raises ValueError (naming the values) when the patches, patch merging or windows do not tile exactly.
  """
  height, width = _pair(img_size)
  if height % patch_size or width % patch_size:
    raise ValueError(f"img_size {(height, width)} is not divisible by patch_size {patch_size}")
  resolution = (height // patch_size, width // patch_size)
  stages = []
  for i in range(num_stages):
    if i > 0:
      if resolution[0] % 2 or resolution[1] % 2:
        raise ValueError(
            f"stage {i}: patch merging needs an even token grid, got {resolution} "
            f"(img_size={img_size}, patch_size={patch_size})")
      resolution = (resolution[0] // 2, resolution[1] // 2)
    window = tuple(min(r, window_size) for r in resolution)
    shift = tuple(0 if r <= window_size else window_size // 2 for r in resolution)
    if resolution[0] % window[0] or resolution[1] % window[1]:
      raise ValueError(
          f"stage {i}: token grid {resolution} is not divisible by window {window} "
          f"(img_size={img_size}, patch_size={patch_size}, window_size={window_size})")
    stages.append(StageGeometry(resolution, window, shift))
  return tuple(stages)


@functools.lru_cache(maxsize=None)
def relative_position_index(window: tuple[int, int]) -> np.ndarray:
  """`[N, N]` int32 row of the bias table for each (query, key) pair of a window, N = wh * ww."""
  wh, ww = window
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
  delta = coords[:, :, None] - coords[:, None, :]  # [2, N, N], query minus key
  index = ((delta[0] + wh - 1) * (2 * ww - 1) + (delta[1] + ww - 1)).astype(np.int32)
  index.setflags(write=False)
  return index


def _partition_np(grid: np.ndarray, window: tuple[int, int]) -> np.ndarray:
  """`[H, W]` -> `[num_windows, N]` in the same window order as `window_partition`."""
  (height, width), (wh, ww) = grid.shape, window
  return grid.reshape(height // wh, wh, width // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)


@functools.lru_cache(maxsize=None)
def shifted_window_mask(resolution: tuple[int, int], window: tuple[int, int],
                        shift: tuple[int, int]) -> np.ndarray:
  """`[num_windows, N, N]` float32: 0 within a region, MASK_VALUE across regions of the rolled grid.

  After rolling the grid by `-shift`, the last window row/column mixes tokens from opposite image borders;
  the grid is cut into 3x3 regions at `H - wh` and `H - sh` (same for W) and only same-region pairs attend.
  """
  region = np.zeros(resolution, np.int32)
  h_cuts = (0, resolution[0] - window[0], resolution[0] - shift[0], resolution[0])
  w_cuts = (0, resolution[1] - window[1], resolution[1] - shift[1], resolution[1])
  for i in range(3):
    for j in range(3):
      region[h_cuts[i]:h_cuts[i + 1], w_cuts[j]:w_cuts[j + 1]] = 3 * i + j
  windows = _partition_np(region, window)
  mask = np.where(windows[:, :, None] != windows[:, None, :], MASK_VALUE, 0.0).astype(np.float32)
  mask.setflags(write=False)
  return mask


def window_partition(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """`[B, H, W, C]` -> `[B, num_windows, wh * ww, C]`, windows in row-major order."""
  batch, height, width, channels = x.shape
  wh, ww = window
  x = x.reshape(batch, height // wh, wh, width // ww, ww, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, -1, wh * ww, channels)


def window_reverse(x: jax.Array, window: tuple[int, int], resolution: tuple[int, int]) -> jax.Array:
  """Inverse of `window_partition`: `[B, num_windows, wh * ww, C]` -> `[B, H, W, C]`."""
  batch, _, _, channels = x.shape
  (wh, ww), (height, width) = window, resolution
  x = x.reshape(batch, height // wh, width // ww, wh, ww, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, height, width, channels)


@functools.lru_cache(maxsize=None)
def shift_permutation(resolution: tuple[int, int], window: tuple[int, int],
                      shift: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Token permutations between the unshifted and the shifted window order, both `[H * W]` int32.

  `tokens[to_shifted]` takes tokens laid out as `window_partition(grid)` to the layout of
  `window_partition(roll(grid, -shift))`; `from_shifted` is its inverse.
  """
  grid = np.arange(resolution[0] * resolution[1]).reshape(resolution)
  unshifted = _partition_np(grid, window).reshape(-1)  # slot -> grid position
  shifted = _partition_np(np.roll(grid, (-shift[0], -shift[1]), axis=(0, 1)), window).reshape(-1)
  slot_of = np.argsort(unshifted)
  to_shifted = slot_of[shifted].astype(np.int32)
  from_shifted = np.argsort(to_shifted).astype(np.int32)
  for index in (to_shifted, from_shifted):
    index.setflags(write=False)
  return to_shifted, from_shifted


def _permute_tokens(x: jax.Array, permutation: np.ndarray) -> jax.Array:
  """Reorders the tokens of `[B, nW, N, C]` (flattened over nW * N) by a constant permutation."""
  batch, num_windows, tokens, channels = x.shape
  x = jnp.take(x.reshape(batch, num_windows * tokens, channels), permutation, axis=1)
  return x.reshape(batch, num_windows, tokens, channels)


class WindowAttention(nn.Module):
  """Multi-head self-attention inside each window, with a learned relative-position bias per head."""
  num_heads: int
  window: tuple[int, int]
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None, *, train: bool) -> jax.Array:
    """x `[B, nW, N, C]`, mask `[nW, N, N]` or None -> `[B, nW, N, C]`."""
    batch, num_windows, tokens, channels = x.shape
    heads, head_dim = self.num_heads, channels // self.num_heads
    wh, ww = self.window
    table = self.param("relative_position_bias_table", _dense_init,
                       ((2 * wh - 1) * (2 * ww - 1), heads), self.param_dtype)
    index = relative_position_index(self.window)
    bias = jnp.take(table.astype(jnp.float32), index.reshape(-1), axis=0)
    bias = bias.reshape(tokens, tokens, heads).transpose(2, 0, 1)  # [h, N, N]
    bias = bias[None] if mask is None else bias[None] + mask[:, None]  # [1 | nW, h, N, N]

    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_dense_init)
    qkv = dense(3 * channels, use_bias=self.qkv_bias, name="qkv")(x)
    # Head-major [3, B, nW, h, N, d]: the attention matmuls then need no further relayout.
    qkv = qkv.reshape(batch, num_windows, tokens, 3, heads, head_dim).transpose(3, 0, 1, 4, 2, 5)
    query, key, value = qkv[0], qkv[1], qkv[2]
    logits = jnp.einsum("bwhqd,bwhkd->bwhqk", query * head_dim**-0.5, key)
    probs = jax.nn.softmax(logits.astype(jnp.float32) + bias, axis=-1).astype(self.dtype)
    probs = nn.Dropout(self.attn_drop_rate)(probs, deterministic=not train)
    out = jnp.einsum("bwhqk,bwhkd->bwhqd", probs, value)
    out = out.transpose(0, 1, 3, 2, 4).reshape(batch, num_windows, tokens, channels)
    out = dense(channels, name="proj")(out)
    return nn.Dropout(self.proj_drop_rate)(out, deterministic=not train)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> dropout -> fc2 -> dropout, as timm's `Mlp`."""
  hidden_dim: int
  drop_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_dense_init)
    y = jax.nn.gelu(dense(self.hidden_dim, name="fc1")(x), approximate=False)
    y = nn.Dropout(self.drop_rate)(y, deterministic=not train)
    y = dense(x.shape[-1], name="fc2")(y)
    return nn.Dropout(self.drop_rate)(y, deterministic=not train)


def _layer_norm(module: nn.Module, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=module.dtype, param_dtype=module.param_dtype,
                      name=name)


class SwinBlock(nn.Module):
  """Pre-norm (shifted-)window attention and MLP, each with a residual and stochastic depth.

  Tokens stay in window order `[B, nW, N, C]` (the unshifted partition) through a whole stage: LayerNorm,
  MLP and residuals act per token, so only attention needs windows, and a shifted block reorders its
  attention input and output with one constant permutation each (`shift_permutation`) instead of
  rolling and re-partitioning the grid.
  """
  num_heads: int
  geometry: StageGeometry
  shifted: bool
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`[B, nW, N, C]` in unshifted window order -> same."""
    geometry = self.geometry
    shift = geometry.shift if self.shifted else (0, 0)
    drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3))  # one draw per sample

    y = _layer_norm(self, "norm1")(x)
    mask = None
    if any(shift):
      to_shifted, from_shifted = shift_permutation(geometry.resolution, geometry.window, shift)
      y = _permute_tokens(y, to_shifted)
      mask = shifted_window_mask(geometry.resolution, geometry.window, shift)
    y = WindowAttention(self.num_heads, geometry.window, self.qkv_bias, self.attn_drop_rate,
                        self.proj_drop_rate, self.dtype, self.param_dtype, name="attn")(
                            y, mask, train=train)
    if any(shift):
      y = _permute_tokens(y, from_shifted)
    x = x + drop_path(y, deterministic=not train)

    y = Mlp(int(x.shape[-1] * self.mlp_ratio), self.proj_drop_rate, self.dtype, self.param_dtype,
            name="mlp")(_layer_norm(self, "norm2")(x), train=train)
    return x + drop_path(y, deterministic=not train)


class PatchMerging(nn.Module):
  """2x2 neighbourhood -> LayerNorm(4C) -> Linear(4C -> out_dim, no bias); halves H and W."""
  out_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    # timm's channel order: (column offset, row offset, channel).
    x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).transpose(0, 1, 3, 4, 2, 5)
    x = _layer_norm(self, "norm")(x.reshape(batch, height // 2, width // 2, 4 * channels))
    return nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=_dense_init, name="reduction")(x)


class PatchEmbed(nn.Module):
  """Non-overlapping `patch_size` conv to `embed_dim` channels, then LayerNorm (NHWC)."""
  patch_size: int
  embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="proj")(x)
    return _layer_norm(self, "norm")(x)


class SwinStage(nn.Module):
  """Optional patch merging (every stage but the first), then `depth` blocks alternating W/SW-MSA."""
  out_dim: int
  depth: int
  num_heads: int
  geometry: StageGeometry
  downsample: bool
  drop_path_rates: tuple[float, ...]
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.downsample:
      x = PatchMerging(self.out_dim, self.dtype, self.param_dtype, name="downsample")(x)
    x = window_partition(x, self.geometry.window)
    for j in range(self.depth):
      x = SwinBlock(self.num_heads, self.geometry, shifted=j % 2 == 1, mlp_ratio=self.mlp_ratio,
                    qkv_bias=self.qkv_bias, proj_drop_rate=self.proj_drop_rate,
                    attn_drop_rate=self.attn_drop_rate, drop_path_rate=self.drop_path_rates[j],
                    dtype=self.dtype, param_dtype=self.param_dtype, name=f"blocks_{j}")(x, train=train)
    return window_reverse(x, self.geometry.window, self.geometry.resolution)


class SwinTransformer(nn.Module):
  """Swin Transformer v1 classifier / feature extractor; see the module docstring for outputs."""
  img_size: int | tuple[int, int] = 224
  patch_size: int = 4
  in_chans: int = 3
  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  num_classes: int = 1000
  drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
    for i, heads in enumerate(self.num_heads):
      if (self.embed_dim * 2**i) % heads:
        raise ValueError(f"stage {i}: width {self.embed_dim * 2**i} is not divisible by {heads} heads")
    self.geometry  # Validates the window arithmetic at construction time.

  @property
  def geometry(self) -> tuple[StageGeometry, ...]:
    return stage_geometry(self.img_size, self.patch_size, len(self.depths), self.window_size)

  @property
  def num_features(self) -> int:
    """Width of the pooled features (1024 for Swin-B)."""
    return self.embed_dim * 2**(len(self.depths) - 1)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    expected = (*_pair(self.img_size), self.in_chans)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(f"expected NHWC input [B, {', '.join(map(str, expected))}], got {x.shape}")
    x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, self.param_dtype,
                   name="patch_embed")(x.astype(self.dtype))
    # Stochastic-depth rate grows linearly over all blocks (timm's stage-wise split of a linspace).
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    stages = []
    for i, (depth, geometry) in enumerate(zip(self.depths, self.geometry)):
      start = sum(self.depths[:i])
      x = SwinStage(self.embed_dim * 2**i, depth, self.num_heads[i], geometry, downsample=i > 0,
                    drop_path_rates=tuple(rates[start:start + depth]), mlp_ratio=self.mlp_ratio,
                    qkv_bias=self.qkv_bias, proj_drop_rate=self.proj_drop_rate,
                    attn_drop_rate=self.attn_drop_rate, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"layers_{i}")(x, train=train)
      stages.append(x)
    feature_map = _layer_norm(self, "norm")(x)
    pooled = jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    features = {"stages": stages, "feature_map": feature_map, "pooled": pooled}
    if self.num_classes > 0:
      head_in = nn.Dropout(self.drop_rate)(pooled, deterministic=not train)
      features["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                                    kernel_init=_dense_init, name="head")(head_in)
    if return_features:
      return features
    return features["logits"] if self.num_classes > 0 else pooled


def create_swin(name: str, **overrides) -> SwinTransformer:
  """Builds the timm variant `name` (a key of SWIN_VARIANTS); keyword overrides replace any field."""
  if name not in SWIN_VARIANTS:
    raise ValueError(f"unknown Swin variant {name!r}; known: {sorted(SWIN_VARIANTS)}")
  return SwinTransformer(**{**SWIN_VARIANTS[name], **overrides})
