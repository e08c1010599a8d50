"""Vision Transformer (Dosovitskiy et al., 2021) in Flax linen, numerically equal to timm's PyTorch ViT.

Covers the layouts of timm's `VisionTransformer` that this project uses: the plain ViT-B/16 and ViT-L/16
(`vit_base_patch16_224`, `vit_large_patch16_224`) and the CLIP image tower ViT-L/14
(`vit_large_patch14_clip_224`, the video branch of Augusma et al. 2023). The CLIP tower differs from the
plain layout in three ways, all taken from timm: a LayerNorm `norm_pre` after the position embedding, a
patch projection without bias, and LayerNorm eps 1e-5 (plain ViT: 1e-6). Its MLP uses exact GELU, as
timm's `vit_large_patch14_clip_224` (laion2b tags) does; the OpenAI weights need the `_quickgelu_`
model, which this port does not cover.

Images go in as NHWC float arrays, normalised the way the checkpoint expects (the CLIP laion2b tag:
mean = std = 0.5; ImageNet ViTs: see timm's pretrained_cfg). Parameters are named after timm's
state-dict keys (`blocks_3/attn/qkv` for `blocks.3.attn.qkv`), so `gems_jax.tools.convert_vit` maps a
timm checkpoint onto the module one key at a time.

Outputs of `VisionTransformer.__call__(x, train=False, return_features=False)`:
  * default: logits `[B, num_classes]`; with `num_classes=0` the pooled features `[B, embed_dim]`
    (1024 for ViT-L), i.e. timm's `forward_head(forward_features(x), pre_logits=True)`.
  * `return_features=True`: a dict with
      'tokens'  `[B, 1 + N, embed_dim]`, class token first (timm's `forward_features`: after the final
                LayerNorm `norm`, or without it when `fc_norm` moves that norm after the pooling),
      'pooled'  `[B, embed_dim]`: the class token (`global_pool='token'`) or the mean of the N patch
                tokens (`'avg'`), then `fc_norm` if enabled,
      'logits'  `[B, num_classes]` (only when `num_classes > 0`).
  N = (img_size / patch_size)^2, e.g. 256 for ViT-L/14 at 224 px (257 tokens with the class token).

Training: `train=True` enables dropout, attention dropout and stochastic depth; they draw from the
'dropout' rng collection. `dtype` is the compute dtype (e.g. bfloat16) and `param_dtype` the storage
dtype of the parameters; softmax and LayerNorm statistics always run in float32.

Memory of a train step: the backward pass keeps ~36 MiB of activations per image and block at ViT-L/14's
shape (fp32; the [h, N, N] attention weights, the MLP's 4096-wide GELU inputs), 0.9 GiB per image over
24 blocks, so fine-tuning on b clips x T_v frames needs ~0.9 b T_v GiB. `remat_chunk=n > 0` encodes the
batch in a loop (`lax.map`) over chunks of n images, each under `jax.checkpoint`: the backward pass
recomputes one chunk's activations at a time, so a step holds one chunk's (~0.9 n GiB) whatever the
batch, for one more forward pass (~1/3 more compute). Values and gradients are unchanged (dropout draws
per chunk instead); so are the parameters (tests/test_vit_remat.py). It is a loop, not `nn.remat` on
the blocks, because XLA's CPU compiler undoes the latter: it drops the optimisation barriers that keep
the recomputation apart, merges it back into the forward pass (CSE) and keeps every activation.

Attention is written out with head-major einsums, normalising after the value product (see
`SelfAttention`). At ViT-L/14's shape (batch 8, 257 tokens, 16 heads, fp32) on the project's 2-core CPU
this measured 1.5x faster than `jax.nn.dot_product_attention` for the attention itself (1.15x of it from
the late normalisation) and 1.1x with the qkv and output projections; it also allows attention dropout.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gems_jax.models import pytorch_init
from gems_jax.models.swin import Mlp

Dtype = Any

# timm's trunc_normal_(std=0.02) for Linear weights and the position embedding (flax's `stddev` is that
# of the untruncated normal: divide by the std of a unit normal cut at +-2).
_trunc_normal_002 = nn.initializers.truncated_normal(stddev=0.02 / 0.87962566103423978)

VIT_VARIANTS: dict[str, dict] = {
    "vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_large_patch14_clip_224": dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                                       pre_norm=True, layer_norm_eps=1e-5),
}
GLOBAL_POOLS = ("token", "avg")


class SelfAttention(nn.Module):
  """Multi-head self-attention over all tokens: qkv projection, softmax(q k^T / sqrt(d)) v, projection.

  The softmax is normalised after the value product: `(exp(l - max l) v) / sum exp(l - max l)`, which
  equals `softmax(l) v` row by row and saves one pass over the `[B, h, N, N]` scores (attention dropout,
  applied to the unnormalised weights, commutes with the per-row division).
  """
  num_heads: int
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`[B, N, C]` -> `[B, N, C]`."""
    batch, tokens, channels = x.shape
    heads, head_dim = self.num_heads, channels // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_trunc_normal_002)
    qkv = dense(3 * channels, use_bias=self.qkv_bias, name="qkv")(x)
    # Head-major [3, B, h, N, d] (timm's channel order: q|k|v, then heads).
    qkv = qkv.reshape(batch, tokens, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    query, key, value = qkv[0], qkv[1], qkv[2]
    logits = jnp.einsum("bhqd,bhkd->bhqk", query * head_dim**-0.5, key).astype(jnp.float32)
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    total = weights.sum(axis=-1, keepdims=True)
    weights = nn.Dropout(self.attn_drop_rate)(weights, deterministic=not train)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(self.dtype), value)
    out = (out / total).astype(self.dtype)
    out = out.transpose(0, 2, 1, 3).reshape(batch, tokens, channels)
    out = dense(channels, name="proj")(out)
    return nn.Dropout(self.proj_drop_rate)(out, deterministic=not train)


def _layer_norm(module: nn.Module, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=module.layer_norm_eps, dtype=module.dtype,
                      param_dtype=module.param_dtype, name=name)


class Block(nn.Module):
  """Pre-norm attention and MLP, each with a residual and stochastic depth (timm's `Block`)."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`[B, N, C]` -> `[B, N, C]`."""
    drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2))  # one draw per sample
    y = SelfAttention(self.num_heads, self.qkv_bias, self.attn_drop_rate, self.proj_drop_rate,
                      self.dtype, self.param_dtype, name="attn")(_layer_norm(self, "norm1")(x),
                                                                 train=train)
    x = x + drop_path(y, deterministic=not train)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), self.proj_drop_rate, self.dtype, self.param_dtype,
            name="mlp")(_layer_norm(self, "norm2")(x), train=train)
    return x + drop_path(y, deterministic=not train)


class PatchEmbed(nn.Module):
  """Non-overlapping `patch_size` conv to `embed_dim` channels: `[B, H, W, C]` -> `[B, N, embed_dim]`,
  patches in row-major order (timm's `flatten(2).transpose(1, 2)`). Initialised like torch's Conv2d."""
  patch_size: int
  embed_dim: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", use_bias=self.use_bias,
                dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=pytorch_init.torch_kernel_init(),
                bias_init=pytorch_init.torch_bias_init(x.shape[-1] * p * p), name="proj")(x)
    return x.reshape(x.shape[0], -1, self.embed_dim)


class VisionTransformer(nn.Module):
  """ViT classifier / feature extractor with a class token; see the module docstring for outputs.

  Fields follow timm's `VisionTransformer` arguments of the same names: `pre_norm` adds `norm_pre` and
  drops the patch-projection bias; `fc_norm=None` means "after the pooling iff global_pool='avg'".
  """
  img_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  num_classes: int = 1000
  global_pool: str = "token"
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  pre_norm: bool = False
  fc_norm: bool | None = None
  layer_norm_eps: float = 1e-6
  drop_rate: float = 0.0
  pos_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_chunk: int = 0  # > 0: images per rematerialised chunk (module docstring); 0: off.

  def __post_init__(self):
    super().__post_init__()
    if self.global_pool not in GLOBAL_POOLS:
      raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
    if self.img_size % self.patch_size:
      raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads")

  @property
  def num_features(self) -> int:
    """Width of the pooled features (1024 for ViT-L)."""
    return self.embed_dim

  @property
  def num_patches(self) -> int:
    return (self.img_size // self.patch_size) ** 2

  @property
  def use_fc_norm(self) -> bool:
    return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    expected = (self.img_size, self.img_size, self.in_chans)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(f"expected NHWC input [B, {', '.join(map(str, expected))}], got {x.shape}")
    if self.remat_chunk > 0 and not self.is_initializing():
      return self._in_remat_chunks(x, train=train, return_features=return_features)
    batch = x.shape[0]
    x = PatchEmbed(self.patch_size, self.embed_dim, use_bias=not self.pre_norm, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="patch_embed")(x.astype(self.dtype))

    cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.embed_dim),
                           self.param_dtype)
    pos_embed = self.param("pos_embed", _trunc_normal_002, (1, 1 + self.num_patches, self.embed_dim),
                           self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(self.dtype), (batch, 1, self.embed_dim)),
                         x], axis=1)
    x = nn.Dropout(self.pos_drop_rate)(x + pos_embed.astype(self.dtype), deterministic=not train)
    if self.pre_norm:
      x = _layer_norm(self, "norm_pre")(x)

    # Stochastic-depth rate grows linearly over the blocks (timm's calculate_drop_path_rates).
    rates = np.linspace(0.0, self.drop_path_rate, self.depth).tolist()
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.qkv_bias, self.layer_norm_eps,
                self.proj_drop_rate, self.attn_drop_rate, rates[i], self.dtype, self.param_dtype,
                name=f"blocks_{i}")(x, train=train)

    tokens = x if self.use_fc_norm else _layer_norm(self, "norm")(x)
    if self.global_pool == "token":
      pooled = tokens[:, 0]
    else:
      pooled = jnp.mean(tokens[:, 1:].astype(jnp.float32), axis=1).astype(self.dtype)
    if self.use_fc_norm:
      pooled = _layer_norm(self, "fc_norm")(pooled)
    features = {"tokens": tokens, "pooled": pooled}
    if self.num_classes > 0:
      head_in = nn.Dropout(self.drop_rate)(pooled, deterministic=not train)
      features["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                                    kernel_init=_trunc_normal_002, name="head")(head_in)
    if return_features:
      return features
    return features["logits"] if self.num_classes > 0 else pooled

  def _in_remat_chunks(self, x: jax.Array, *, train: bool, return_features: bool):
    """`__call__` on `[B, H, W, C]` in a loop over zero-padded chunks `[remat_chunk, H, W, C]`, each
    under `jax.checkpoint`; the same outputs, `[B, ...]`."""
    plain, variables = self.clone(parent=None, remat_chunk=0), self.variables
    dropout = train and max(self.drop_rate, self.pos_drop_rate, self.proj_drop_rate,
                            self.attn_drop_rate, self.drop_path_rate) > 0
    rng = self.make_rng("dropout") if dropout else None
    batch, chunk = x.shape[0], self.remat_chunk
    chunks = jnp.pad(x, [(0, -batch % chunk)] + [(0, 0)] * 3).reshape(-1, chunk, *x.shape[1:])

    @jax.checkpoint
    def encode(args):
      images, index = args
      rngs = {"dropout": jax.random.fold_in(rng, index)} if dropout else {}
      return plain.apply(variables, images, train=train, return_features=return_features, rngs=rngs)

    out = jax.lax.map(encode, (chunks, jnp.arange(chunks.shape[0])))
    return jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:])[:batch], out)


def create_vit(name: str, **overrides) -> VisionTransformer:
  """Builds the timm variant `name` (a key of VIT_VARIANTS); keyword overrides replace any field."""
  if name not in VIT_VARIANTS:
    raise ValueError(f"unknown ViT variant {name!r}; known: {sorted(VIT_VARIANTS)}")
  return VisionTransformer(**{**VIT_VARIANTS[name], **overrides})
