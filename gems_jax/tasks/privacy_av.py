"""The privacy-compliant audio-visual family (gems_jax.models.privacy_av): whole frames and sound.

Reads `audio`/`audio_length`/`has_audio` (log-mel is computed on device inside the model) and
whole frames, as decoded JPEGs (`whole_frames`, through the ViT) or as a frozen ViT's cached
embeddings (`whole_frame_embedding`); never a face field, so it trains on a 'privacy' dataset.
One head, the group category (3 classes), with cross-entropy or the authors' focal loss; one
prediction row per clip with the category distribution.
"""
import dataclasses

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gems_jax.models.privacy_av import OUTPUT_KEY, AudioVisualModel, normalize_frames
from gems_jax.tasks.base import FrozenImageEncoder, Task
from gems_jax.training import batches as batches_lib
from gems_jax.training import checkpointing
from gems_jax.training import focal
from gems_jax.training import losses as losses_lib

ENCODER = "video_encoder"


class PrivacyAVTask(Task):
  name = "privacy_av"

  @property
  def _uses_audio(self) -> bool:
    return self.config.model.mode in ("audio", "fusion")

  @property
  def _uses_video(self) -> bool:
    return self.config.model.mode in ("video", "fusion")

  def required_keys(self) -> tuple[str, ...]:
    keys = ("group_category",)
    if self._uses_audio:
      keys += ("audio", "audio_length", "has_audio")
    if self._uses_video:
      frames = "whole_frame_embedding" if self.spec.whole_frame_embed_dim else "whole_frames"
      keys += (frames, "whole_frame_mask")
    return keys

  def validate(self) -> None:
    super().validate()
    classes = len(self.spec.group_category_names)
    if self.config.model.num_classes != classes:
      raise ValueError(f"config.model.num_classes={self.config.model.num_classes} but the dataset "
                       f"has {classes} group categories {list(self.spec.group_category_names)}")
    if self._uses_audio and self.spec.audio_rate != self.config.model.audio.log_mel.sample_rate:
      raise ValueError(f"config.model.audio.log_mel.sample_rate="
                       f"{self.config.model.audio.log_mel.sample_rate} but the dataset's audio is "
                       f"at {self.spec.audio_rate} Hz")

  def create_model(self) -> AudioVisualModel:
    return AudioVisualModel(ml_collections.FrozenConfigDict(self.config.model.to_dict()))

  def model_inputs(self, batch):
    return batch

  def prepare_batch(self, batch, rng=None):
    del rng
    return batches_lib.split_host_keys(batch)

  def loss(self, outputs, batch):
    logits, labels = outputs[OUTPUT_KEY], batch[OUTPUT_KEY]
    mask = batch["valid"].astype(bool) & (labels >= 0)
    if self.config.loss.name == "focal":
      total, count = focal.masked_focal_loss(logits, labels, mask, alpha=self.config.loss.focal_alpha,
                                             gamma=self.config.loss.focal_gamma)
    elif self.config.loss.name == "cross_entropy":
      total, count = losses_lib.masked_cross_entropy(logits, labels, mask)
    else:
      raise ValueError(f"config.loss.name must be 'cross_entropy' or 'focal', got "
                       f"{self.config.loss.name!r}")
    value = losses_lib.safe_mean(total, count)
    return value, {OUTPUT_KEY: value}

  def metrics(self):
    from gems_jax.evaluation import metrics as metrics_lib
    return metrics_lib.MetricsAccumulator()

  def frozen_prefixes(self, params):
    """'all': the whole video encoder; 'blocks': its transformer blocks (what the authors' code
    means to freeze); 'none': nothing (the paper fine-tunes)."""
    frozen = self.config.model.video_encoder.frozen
    if ENCODER not in params or frozen == "none":
      return ()
    if frozen == "all":
      return (ENCODER,)
    return tuple(f"{ENCODER}/{name}" for name in params[ENCODER] if name.startswith("blocks_"))

  def video_encoder(self):
    """The ViT of config.model.video_encoder, pooled features only (no head)."""
    from gems_jax.models.vit import create_vit
    ve = self.config.model.video_encoder
    return create_vit(ve.name, num_classes=0, dtype=jnp.dtype(ve.dtype), **dict(ve.overrides))

  def frozen_image_encoder(self) -> FrozenImageEncoder | None:
    """The fully frozen ViT (video_encoder.frozen='all') on the JPEG whole frames, cached in
    `frame_cache/` (config.input.frame_embedding_cache)."""
    ve = self.config.model.video_encoder
    if not (self._uses_video and ve.frozen == "all" and self.config.input.frame_embedding_cache
            and self.spec.num_whole_frames and not self.spec.whole_frame_embed_dim):
      return None
    vit = self.video_encoder()
    return FrozenImageEncoder(
        cache_name="frame_cache", image_key="whole_frames", mask_key="whole_frame_mask",
        embedding_key="whole_frame_embedding", image_size=tuple(self.spec.whole_frame_size),
        features=lambda params, frames: vit.apply(
            {"params": params}, normalize_frames(frames, ve.mean, ve.std)).astype(jnp.float32),
        params=self.video_encoder_params(),
        description={"name": ve.name, "overrides": dict(ve.overrides), "dtype": ve.dtype,
                     "mean": list(ve.mean), "std": list(ve.std), "checkpoint": ve.checkpoint},
        cached_spec=lambda spec, dim: dataclasses.replace(spec, whole_frame_embed_dim=dim),
        chunk=self.config.input.frame_cache_chunk)

  def video_encoder_params(self) -> dict:
    """Host params of the video encoder: the converted timm checkpoint's, or random (warned)."""
    ve, vit = self.config.model.video_encoder, self.video_encoder()
    if ve.checkpoint:
      _, variables = checkpointing.restore_converted(ve.checkpoint)
      return jax.device_get({k: v for k, v in variables["params"].items() if k != "head"})
    logging.warning("config.model.video_encoder.checkpoint is not set: the video encoder is "
                    "randomly initialised")
    height, width = self.spec.whole_frame_size
    init = jax.jit(lambda x: vit.init(jax.random.key(self.config.seed), x)["params"])
    return jax.device_get(init(jnp.zeros((1, height, width, 3), jnp.float32)))

  def load_pretrained(self, state):
    """Copies the converted timm ViT (`config.model.video_encoder.checkpoint`) into the encoder."""
    ve = self.config.model.video_encoder
    if not ve.checkpoint or ENCODER not in state.params:
      return state
    loaded = self.video_encoder_params()
    target = state.params[ENCODER]
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)  # noqa: E731
    if shapes(loaded) != shapes(target):
      raise ValueError(f"config.model.video_encoder.checkpoint={ve.checkpoint} does not match the "
                       f"configured encoder {ve.name} {dict(ve.overrides)}")
    params = dict(state.params)
    params[ENCODER] = jax.tree.map(
        lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding), loaded, target)
    logging.info("loaded video encoder weights from %s", ve.checkpoint)
    return state.replace(params=params)

  def prediction_rows(self, outputs, labels, host):
    names = self.spec.group_category_names
    rows = []
    for i in np.flatnonzero(labels["valid"]):
      logits = np.asarray(outputs[OUTPUT_KEY][i], np.float64)
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      label = int(labels[OUTPUT_KEY][i])
      rows.append({"clip_id": str(host["clip_id"][i]) if "clip_id" in host else str(i),
                   OUTPUT_KEY: {"predicted": names[int(np.argmax(probs))],
                                "probabilities": dict(zip(names, np.round(probs, 4).tolist())),
                                "true": names[label] if label >= 0 else None}})
    return rows
