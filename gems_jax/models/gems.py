"""The GEMS model: faces + scene text -> individual, group, situational and situation outputs.

Shapes: b clips, T sampled steps, K face slots per step, S crop size, P text parts of width Dt.

  faces [b,T,K,S,S,3] uint8 ─ FaceEmotionClassifier.features (Swin) ─┐ (or face_embedding
                                                                      │  [b,T,K,E] when cached)
      individual heads per face: emotion [b,T,K,9], valence/arousal [b,T,K] ◄─┤
      masked mean over the K faces of a step ─► frame token [b,T,E]           ┘
  text_embedding [b,P,Dt] ─ masked, flattened, tiled over T ─► [b,T,P*Dt]
  concat ─► Dense(d_model) ─► dropout ─► + sinusoidal positions
        ─► [AutoformerEncoderLayer] ─► L x (h + S3Attention(h))   (or dense attention; all masked;
                                                                   or nothing: attention='none')
        ─► pool over valid steps (masked mean, or the authors' last step)
        ─► heads: group_emotion [b,9], group_category [b,3], valence/arousal [b],
                  situational_emotion [b,10], situation [b,10]  (+ the authors' forecast head)

With the authors' forecast head (`heads.forecast`) a batch carries N+1 steps: the first N are the
input and the token of the last one is the forecast target (the authors read 97 steps, feed 96 and
forecast the 97th: [code] run.py:788-839 and 651-715).
"""
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gems_jax.models.autocorrelation import AutoformerEncoderLayer
from gems_jax.models.dense_attention import DenseSelfAttention
from gems_jax.models.s3attention import S3Attention
from gems_jax.models.swin import create_swin

ATTENTIONS = ("s3", "dense", "none")  # 'none': no temporal block, the pooling-only ablation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Mean of `x` over `axis` where `mask` (x's shape without the last dim) is True; 0 if none."""
  weights = mask.astype(x.dtype)[..., None]
  total = jnp.sum(x * weights, axis=axis)
  count = jnp.sum(weights, axis=axis)
  return total / jnp.maximum(count, 1.0)


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
  """PE[t, 2i] = sin(t w_i), PE[t, 2i+1] = cos(t w_i), w_i = 10000^(-2i/dim) (interleaved)."""
  t = jnp.arange(length, dtype=jnp.float32)[:, None]
  w = jnp.exp(-jnp.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  pe = jnp.stack([jnp.sin(t * w), jnp.cos(t * w)], axis=-1).reshape(length, -1)
  return pe[:, :dim]


def face_feature_dim(face_encoder: Mapping) -> int:
  """E, the pooled feature width of the configured face encoder (shape inference only)."""
  model = FaceEmotionClassifier(face_encoder["name"], dict(face_encoder["overrides"]),
                                dtype=jnp.dtype(face_encoder["dtype"]))
  crops = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.uint8)  # Resized to the encoder's size inside.
  out = jax.eval_shape(lambda c: model.init_with_output(jax.random.key(0), c, method=model.features,
                                                        train=False)[0], crops)
  return int(out.shape[-1])


class FaceEmotionClassifier(nn.Module):
  """Swin face encoder + individual-emotion heads (the stage-1 model, reused inside GEMS)."""
  encoder_name: str
  encoder_overrides: Mapping
  num_emotions: int = 9
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.encoder = create_swin(self.encoder_name, num_classes=0, dtype=self.dtype,
                               **dict(self.encoder_overrides))
    self.emotion = nn.Dense(self.num_emotions, name="emotion")
    self.valence_arousal = nn.Dense(2, name="valence_arousal")

  def features(self, crops: jax.Array, *, train: bool) -> jax.Array:
    """uint8 crops [..., S, S, 3] -> pooled features [..., E] (ImageNet normalisation, resize)."""
    lead, (s1, s2) = crops.shape[:-3], crops.shape[-3:-1]
    x = crops.reshape((-1, s1, s2, 3)).astype(jnp.float32) / 255.0
    size = self.encoder.img_size
    if (s1, s2) != (size, size):
      x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=True)
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    feats = self.encoder(x, train=train)
    return feats.reshape(lead + feats.shape[-1:]).astype(jnp.float32)

  def heads(self, feats: jax.Array) -> dict[str, jax.Array]:
    va = self.valence_arousal(feats)
    return {"individual_emotion": self.emotion(feats),
            "individual_valence": va[..., 0], "individual_arousal": va[..., 1]}

  def __call__(self, crops: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    return self.heads(self.features(crops, train=train))


class FourierForecast(nn.Module):
  """The authors' auxiliary head ([code] run.py:651-715): project each step to the token width,
  keep the DC and the `num_harmonics` lowest frequencies of the sequence and extrapolate it one
  step: [b,N,C] -> [b,N+1,F]. (jnp.pi here; the authors' code uses 3.1415.)"""
  features: int
  num_harmonics: int = 1

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    p = nn.Dense(self.features, name="projection")(h)
    n = p.shape[1]
    spectrum = jnp.fft.fft(p.astype(jnp.float32), axis=1)
    bins = [0] + [k for j in range(1, self.num_harmonics + 1) for k in (j, n - j)]
    freqs = jnp.fft.fftfreq(n)[jnp.asarray(bins)]
    amplitude = jnp.abs(spectrum[:, bins]) / n  # [b, nbins, F]
    phase = jnp.angle(spectrum[:, bins])
    t = jnp.arange(n + 1, dtype=jnp.float32)
    angles = 2 * jnp.pi * freqs[None, :, None] * t[None, None, :]  # [1, nbins, N+1]
    return jnp.einsum("bkf,bktf->btf", amplitude,
                      jnp.cos(angles[..., None] + phase[:, :, None, :]))


class GEMS(nn.Module):
  """The multi-task GEMS model.

  `config` is the `model` section of configs/gems.py plus two fields that come from the data:
  `num_steps` (the sequence length N fed to the attention blocks) and `token_dim` (E + P*Dt, the
  forecast head's width). `gems_jax.tasks.gems.GemsTask.create_model` adds them.
  """
  config: ml_collections.FrozenConfigDict

  def setup(self):
    cfg = self.config
    fe, fu = cfg.face_encoder, cfg.fusion
    self.face_branch = FaceEmotionClassifier(fe.name, fe.overrides, cfg.heads.num_emotions,
                                             dtype=jnp.dtype(fe.dtype))
    self.embed = nn.Dense(fu.d_model, name="embed")
    self.embed_dropout = nn.Dropout(fu.dropout_rate)
    if fu.attention not in ATTENTIONS:
      raise ValueError(f"config.model.fusion.attention must be one of {ATTENTIONS}, got {fu.attention!r}")
    if fu.attention == "none" and fu.autocorrelation:
      raise ValueError("config.model.fusion.attention='none' is the model without any temporal block; "
                       "it cannot have fusion.autocorrelation=True")
    if fu.autocorrelation:
      self.autoformer = AutoformerEncoderLayer(
          fu.d_model, fu.num_heads, d_ff=fu.d_ff, factor=fu.autocorrelation_factor,
          moving_avg=fu.moving_avg, dropout_rate=fu.dropout_rate)
    # attention='none': the tokens go straight to the pooling, so no statistic of order reaches a head.
    self.blocks = [] if fu.attention == "none" else [self._attention_block(i) for i in range(fu.num_layers)]
    hd = cfg.heads
    self.head_layers = {
        "group_emotion": nn.Dense(hd.num_emotions), "group_category": nn.Dense(hd.num_group_categories),
        "valence": nn.Dense(1), "arousal": nn.Dense(1),
        "situational_emotion": nn.Dense(hd.num_situational_emotions),
        "situation": nn.Dense(hd.num_situations)}
    if hd.forecast:
      self.forecast_head = FourierForecast(cfg.token_dim)

  def _attention_block(self, i: int) -> nn.Module:
    fu = self.config.fusion
    if fu.attention == "s3":
      return S3Attention(
          d_model=fu.d_model, num_heads=fu.num_heads, num_segments=fu.num_segments,
          num_landmark_tokens=fu.num_landmark_tokens, num_landmark_features=fu.num_landmark_features,
          max_len=self.config.num_steps, dropout_rate=fu.dropout_rate, segment_map=fu.segment_map,
          combine=fu.combine, norm=fu.norm, use_output_proj=fu.use_output_proj,
          landmark_seed=fu.landmark_seed + i, name=f"s3_{i}")
    return DenseSelfAttention(d_model=fu.d_model, num_heads=fu.num_heads,
                              dropout_rate=fu.dropout_rate, name=f"dense_{i}")

  def face_features(self, batch: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
    """[b,T,K,E] features: cached embeddings, or the Swin on crops (no gradient when frozen)."""
    if "face_embedding" in batch:
      return batch["face_embedding"].astype(jnp.float32)
    feats = self.face_branch.features(batch["faces"], train=train and not self.config.face_encoder.frozen)
    return jax.lax.stop_gradient(feats) if self.config.face_encoder.frozen else feats

  def encode_faces(self, crops: jax.Array) -> jax.Array:
    """uint8 crops [n,S,S,3] -> face features [n,E] (the frozen or fine-tuned Swin, eval mode)."""
    return self.face_branch.features(crops, train=False)

  def individual(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    """Per-face outputs of every step of `batch` (faces or face_embedding): individual_emotion
    [b,T,K,C], individual_valence / individual_arousal [b,T,K]."""
    return self.face_branch.heads(self.face_features(batch, train=train))

  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    fu = self.config.fusion
    face_mask = batch["face_mask"]
    feats = self.face_features(batch, train=train)
    outputs = self.face_branch.heads(feats)

    frame_tokens = masked_mean(feats, face_mask, axis=2)  # [b,T,E]
    text = batch["text_embedding"] * batch["text_mask"][..., None]
    text = text.reshape(text.shape[0], 1, -1)
    tokens = jnp.concatenate(
        [frame_tokens, jnp.broadcast_to(text, frame_tokens.shape[:2] + text.shape[-1:])], axis=-1)
    step_mask = batch["step_mask"]
    if self.config.heads.forecast:  # The last step is the target, not an input.
      outputs["forecast_target"] = jax.lax.stop_gradient(tokens[:, -1:])  # [b,1,F]
      tokens, step_mask = tokens[:, :-1], step_mask[:, :-1]
    b, n = tokens.shape[:2]
    if not fu.use_mask:
      step_mask = jnp.ones((b, n), bool)

    h = self.embed_dropout(self.embed(tokens), deterministic=not train)
    h = h + sinusoidal_positions(n, fu.d_model)[None]
    mask = step_mask if fu.use_mask else None
    if fu.autocorrelation:
      # Autoformer's layer keeps only the seasonal part of its output: the trend it drops holds
      # whatever is constant over the clip (the description's part of every token). Without this
      # residual the heads lose the description (situation accuracy fell to chance, BENCHMARKS.md).
      h = h + self.autoformer(h, mask, train=train)
    for block in self.blocks:
      h = h + block(h, mask, train=train)

    if fu.pooling == "masked_mean":
      pooled = masked_mean(h, step_mask, axis=1)
    elif fu.pooling == "last":
      pooled = h[:, -1]
    else:
      raise ValueError(f"config.model.fusion.pooling must be 'masked_mean' or 'last', got {fu.pooling!r}")
    for name, layer in self.head_layers.items():
      out = layer(pooled)
      outputs[name] = out[:, 0] if out.shape[-1] == 1 and name in ("valence", "arousal") else out
    if self.config.heads.forecast:
      outputs["forecast"] = self.forecast_head(h)  # [b,N+1,F], compared with the target broadcast.
    return outputs
