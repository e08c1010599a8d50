r"""The privacy-compliant audio-visual group-emotion model (Augusma et al. 2023, arXiv 2312.05265).

Only global features: whole frames and the clip's sound, nothing that identifies a person. Shapes:
b clips, T_v video frames of width D_v, A audio frames (log-mel images M x W), D_a audio width.

  whole_frame_embedding [b,T_v,D_v] (CLIP ViT-L/14 class tokens; a wrapper may put the ViT here)
  audio [b,S] int16 ─ log_mel.audio_frames ─► [b,A,M,W] ─ AudioCNN per frame ─► [b,A,D_a]
      ─► TemporalBlock: + sinusoidal positions, x + MHA(LN(x)), x + FF(LN(x))  (masked)
  mode 'audio':  pool(audio)                                       ─► Linear ─► group_category [b,3]
  mode 'video':  pool(video)                                       ─► Linear ─► group_category [b,3]
  mode 'fusion': video mean-pooled in groups to A steps if T_v = k A (75 -> 5);
                 cross = MHA(query=audio, key=value=video), no residual, no LayerNorm;
                 pool([audio, cross, video] per step, 2 D_a + D_v)  ─► Linear ─► group_category [b,3]
  pool: 'mean' over the steps, or 'flatten': steps mean-pooled in groups to `flatten_steps` (5),
        then concatenated step-major as torch's reshape (Linear(5 x 3072, 3) in the paper).

Masks (ours; the authors' tensors had no padding): an audio step is real when its log-mel segment
holds any real STFT frame and the clip has audio (`has_audio`); a video step when
`whole_frame_mask` says so. Padded steps are keys nobody attends to, their outputs are zero, and
every mean runs over real steps only (each part of the fusion over its own mask), so padding never
changes a real output. Padded STFT columns inside a real segment stay what log_mel makes them (0,
the clip's mean level after normalisation), as zero-padded spectrograms would be for the authors.

A clip without audio (`has_audio` False, or no real segment) has no real audio step: the audio
and cross-attention parts of the fusion are then 0, so the fusion head reads only the video part,
W_video mean(video) + b: it falls back to the video path with the same head. The audio-only model
has nothing to say about such a clip and outputs its head's bias (a learnt constant prior).
Layers start from PyTorch's default initialisations, the distributions the authors trained from.
"""
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gems_jax.data import log_mel
from gems_jax.models import pytorch_init
from gems_jax.models.audio_cnn import AudioCNN
from gems_jax.models.dense_attention import attend
from gems_jax.models.gems import masked_mean, sinusoidal_positions

MODES = ("audio", "video", "fusion")
POOLINGS = ("mean", "flatten")
OUTPUT_KEY = "group_category"  # The losses' and metrics' key of the 3-way group category.


def group_steps(x: jax.Array, mask: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
  """Masked mean of [b,T,D] over `groups` equal runs of T/groups steps -> ([b,G,D], mask [b,G]).

  The authors pool 75 video frames into 5 groups of 15; a group with no real step is 0 and padded.
  """
  b, t, d = x.shape
  if t % groups:
    raise ValueError(f"cannot pool {t} steps into {groups} equal groups")
  runs = mask.reshape(b, groups, t // groups)
  return masked_mean(x.reshape(b, groups, t // groups, d), runs, axis=2), jnp.any(runs, axis=-1)


def pool_steps(parts: Sequence[tuple[jax.Array, jax.Array]], pooling: str,
               flatten_steps: int) -> jax.Array:
  """Pools (x [b,T,D_i], mask [b,T]) parts that share T, then concatenates their features.

  'mean': the masked mean of each part over its real steps -> [b, sum D_i] (the mean over time of
  the per-step concatenation when every step is real). 'flatten': each part grouped to
  `flatten_steps` steps, padded steps zeroed, concatenated per step and flattened step-major
  -> [b, flatten_steps * sum D_i] (torch's `cat(dim=2).reshape(b, -1)`).
  """
  if pooling == "mean":
    return jnp.concatenate([masked_mean(x, mask, axis=1) for x, mask in parts], axis=-1)
  if pooling != "flatten":
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  grouped = [group_steps(x, mask, flatten_steps) for x, mask in parts]
  tokens = jnp.concatenate([x * mask[..., None] for x, mask in grouped], axis=-1)
  return tokens.reshape(tokens.shape[0], -1)


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention(E, num_heads, dropout, kdim=vdim=D_kv, batch_first=True).

  query [b,T,E], key_value [b,S,D_kv], key_mask [b,S] (True = real) -> [b,T,E]. Q, K, V
  projections to E with biases, softmax(Q K^T / sqrt(E / H)) with dropout on the probabilities,
  output projection with bias. Queries of an example without any real key get 0 (torch gives NaN).
  Initialised as torch: Xavier-uniform projections (one [3E, E] matrix when D_kv = E), zero
  biases, a default-Linear output kernel.
  """
  num_heads: int = 1
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, query: jax.Array, key_value: jax.Array, key_mask: jax.Array, *,
               train: bool = False) -> jax.Array:
    (b, t, e), s = query.shape, key_value.shape[1]
    h = self.num_heads
    if e % h:
      raise ValueError(f"MultiheadAttention: width {e} is not divisible by num_heads={h}")
    # Xavier on [3E, E] is U(+-sqrt(6 / 4E)): scale 1/2 of fan_avg = E for each [E, E] part.
    scale = 0.5 if key_value.shape[-1] == e else 1.0
    init = jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform")
    q = nn.Dense(e, kernel_init=init, name="query")(query).reshape(b, t, h, e // h)
    k = nn.Dense(e, kernel_init=init, name="key")(key_value).reshape(b, s, h, e // h)
    v = nn.Dense(e, kernel_init=init, name="value")(key_value).reshape(b, s, h, e // h)
    key_mask = key_mask.astype(bool)
    dropout_key = self.make_rng("dropout") if train and self.dropout_rate > 0 else None
    out = attend(q, k, v, key_mask, self.dropout_rate, dropout_key).reshape(b, t, e)
    out = nn.Dense(e, kernel_init=pytorch_init.torch_kernel_init(), name="out")(out)
    return out * jnp.any(key_mask, axis=1)[:, None, None]


class TemporalBlock(nn.Module):
  """The audio branch's transformer block: x [b,T,D], mask [b,T] -> [b,T,D] (0 at padded steps).

  x + PE (sinusoidal, sin/cos interleaved); x + MHA(LN(x)) with attention dropout; x + Linear(ReLU
  Linear(LN(x))) with dropout after the ReLU; pre-LayerNorm (eps 1e-6), no final LayerNorm.
  """
  d_ff: int = 2048
  num_heads: int = 1
  attention_dropout: float = 0.2
  ff_dropout: float = 0.5
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
    t, d = x.shape[1:]
    norm = lambda name: nn.LayerNorm(self.epsilon, use_fast_variance=False, name=name)
    x = x + sinusoidal_positions(t, d)[None]
    y = norm("norm1")(x)
    x = x + MultiheadAttention(self.num_heads, self.attention_dropout, name="attention")(
        y, y, mask, train=train)
    y = pytorch_init.torch_dense(self.d_ff, d, name="ff1")(norm("norm2")(x))
    y = nn.Dropout(self.ff_dropout, deterministic=not train)(nn.relu(y))
    x = x + pytorch_init.torch_dense(d, self.d_ff, name="ff2")(y)
    return x * mask[..., None]


class CrossAttentionFusion(nn.Module):
  """Audio queries attend to video: features for the head, [b, 2 D_a + D_v] or flattened.

  audio [b,A,D_a] with audio_mask [b,A]; video [b,T_v,D_v] with video_mask [b,T_v], T_v a multiple
  of A (mean-pooled in A groups first when larger). The cross-attention output has no residual and
  shares the audio mask. The per-step [audio, cross, video] go through `pool_steps`.
  """
  pooling: str = "mean"
  flatten_steps: int = 5
  num_heads: int = 1
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, audio: jax.Array, audio_mask: jax.Array, video: jax.Array,
               video_mask: jax.Array, *, train: bool = False) -> jax.Array:
    if video.shape[1] != audio.shape[1]:
      video, video_mask = group_steps(video, video_mask, audio.shape[1])
    cross = MultiheadAttention(self.num_heads, self.dropout_rate, name="cross_attention")(
        audio, video, video_mask, train=train)
    return pool_steps([(audio, audio_mask), (cross, audio_mask), (video, video_mask)],
                      self.pooling, self.flatten_steps)


class PrivacyAV(nn.Module):
  """The model of the module docstring, in one of the modes 'audio', 'video', 'fusion'.

  `config` is the `model` section of configs/privacy_av.py. `__call__(batch)` reads the dataset's
  keys (`audio` int16 [b,S], `audio_length` int [b], `has_audio` bool [b] for the audio modes;
  `whole_frame_embedding` float [b,T_v,D_v], `whole_frame_mask` bool [b,T_v] for the video modes)
  and returns {'group_category': logits [b, num_classes]}. `classify` takes the branch inputs
  directly (the torch reference tests use it).
  """
  config: ml_collections.FrozenConfigDict

  def audio_inputs(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(log-mel audio frames [b,A,M,W], real-step mask [b,A]) of the clip's waveform."""
    frames = log_mel.audio_frames(batch["audio"], batch["audio_length"], self.config.audio.log_mel)
    return frames["segments"], frames["segment_mask"] & batch["has_audio"].astype(bool)[:, None]

  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    mode = self.config.mode
    audio = audio_mask = video = video_mask = None
    if mode in ("audio", "fusion"):
      audio, audio_mask = self.audio_inputs(batch)
    if mode in ("video", "fusion"):
      video, video_mask = batch["whole_frame_embedding"], batch["whole_frame_mask"]
    return {OUTPUT_KEY: self.classify(video, video_mask, audio, audio_mask, train=train)}

  @nn.compact
  def classify(self, video: jax.Array | None, video_mask: jax.Array | None,
               audio_frames: jax.Array | None, audio_mask: jax.Array | None, *,
               train: bool = False) -> jax.Array:
    """Logits [b, num_classes] from video embeddings [b,T_v,D_v] and/or audio frames [b,A,M,W]
    (None for the branch the mode does not use), with their bool step masks."""
    cfg, au = self.config, self.config.audio
    if cfg.mode not in MODES:
      raise ValueError(f"config.model.mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.mode != "video":
      audio = AudioCNN(au.channels, tuple(au.pool_size), name="audio_cnn")(audio_frames)
      audio = TemporalBlock(au.d_ff, au.num_heads, au.attention_dropout, au.ff_dropout,
                            au.layer_norm_eps, name="temporal")(audio, audio_mask, train=train)
    if cfg.mode != "audio":
      video = video.astype(jnp.float32)
    fu = cfg.fusion
    if cfg.mode == "fusion":
      features = CrossAttentionFusion(fu.pooling, fu.flatten_steps, fu.num_heads, fu.dropout_rate,
                                      name="fusion")(audio, audio_mask, video, video_mask,
                                                     train=train)
    else:
      part = (audio, audio_mask) if cfg.mode == "audio" else (video, video_mask)
      features = pool_steps([part], fu.pooling, fu.flatten_steps)
    return pytorch_init.torch_dense(cfg.num_classes, features.shape[-1], name="head")(features)


def normalize_frames(frames: jax.Array, mean, std) -> jax.Array:
  """uint8 [..., H, W, 3] -> float32, (x / 255 - mean) / std per channel (CLIP: 0.5, 0.5)."""
  x = frames.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class AudioVisualModel(nn.Module):
  """`PrivacyAV` (scope 'av') behind the video encoder (scope 'video_encoder', a ViT) when the
  batch carries decoded whole frames (`whole_frames` uint8 [b,T_v,H,W,3]): each frame's pooled
  feature becomes `whole_frame_embedding`. A batch that already holds the embeddings (a frozen
  encoder's cache) or an audio-only model skips the encoder.
  """
  config: ml_collections.FrozenConfigDict

  def encode_frames(self, frames: jax.Array, *, train: bool = False) -> jax.Array:
    """uint8 [n, H, W, 3] -> float32 [n, D_v]: the video encoder's pooled features."""
    from gems_jax.models.vit import create_vit
    ve = self.config.video_encoder
    vit = create_vit(ve.name, num_classes=0, dtype=jnp.dtype(ve.dtype),
                     remat_chunk=ve.get("remat_chunk", 0),  # Configs saved before it have none.
                     **dict(ve.overrides)).clone(parent=self, name="video_encoder")
    return vit(normalize_frames(frames, ve.mean, ve.std), train=train).astype(jnp.float32)

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    if self.config.mode != "audio" and "whole_frame_embedding" not in batch:
      frames = batch["whole_frames"]
      b, t = frames.shape[:2]
      embedding = self.encode_frames(frames.reshape((b * t,) + frames.shape[2:]), train=train)
      batch = {**batch, "whole_frame_embedding": embedding.reshape(b, t, -1)}
    return PrivacyAV(self.config, name="av")(batch, train=train)
