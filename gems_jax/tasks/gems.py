"""The GEMS family: the clip-level multi-task model (gems_jax.models.gems.GEMS).

Reads face crops (or their cached embeddings), the text parts and the step mask of a clip, padded
or truncated to `config.input.num_steps` steps (one more with the authors' forecast head, whose
target is that extra step); trains all heads with `config.loss`; predictions are one row per clip.
"""
import dataclasses

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from gems_jax.evaluation import predictions as predictions_lib
from gems_jax.models.gems import GEMS, FaceEmotionClassifier, face_feature_dim
from gems_jax.tasks.base import FrozenImageEncoder, Task
from gems_jax.training import batches as batches_lib
from gems_jax.training.checkpointing import read_face_encoder_params

_HEADS = (("num_emotions", "emotion_names"), ("num_group_categories", "group_category_names"),
          ("num_situational_emotions", "situational_emotion_names"),
          ("num_situations", "situation_names"))


class GemsTask(Task):
  name = "gems"
  encoder_scope = ("face_branch",)

  @property
  def sequence_length(self) -> int:
    """Steps a batch carries: N, plus the forecast target step (the authors' 97th) if any."""
    return self.config.input.num_steps + int(self.config.model.heads.forecast)

  def required_keys(self) -> tuple[str, ...]:
    face = "face_embedding" if self.spec.storage == "embeddings" else "faces"
    return (face, "face_mask", "step_mask", "text_embedding", "text_mask", "group_emotion",
            "group_category", "valence", "arousal", "situational_emotion", "situation")

  def validate(self) -> None:
    super().validate()
    hd = self.config.model.heads
    for field, names_field in _HEADS:
      names = getattr(self.spec, names_field)
      if hd[field] != len(names):
        raise ValueError(f"config.model.heads.{field}={hd[field]} but the dataset has "
                         f"{len(names)} classes {list(names)}")
    fu = self.config.model.fusion
    if fu.attention == "s3" and fu.num_landmark_tokens > self.config.input.num_steps:
      raise ValueError(f"config.model.fusion.num_landmark_tokens={fu.num_landmark_tokens} exceeds "
                       f"config.input.num_steps={self.config.input.num_steps}: S3Attention samples "
                       "its landmark tokens among the steps")
    if self.spec.storage == "embeddings" and not self.config.model.face_encoder.frozen:
      raise ValueError("config.model.face_encoder.frozen=False needs face crops, but the dataset "
                       f"{self.spec.name!r} stores embeddings")

  def create_model(self) -> GEMS:
    model_cfg = ml_collections.ConfigDict(self.config.model.to_dict())
    model_cfg.num_steps = self.config.input.num_steps
    face_dim = (self.spec.embed_dim if self.spec.storage == "embeddings"
                else face_feature_dim(model_cfg.face_encoder))
    model_cfg.token_dim = face_dim + self.spec.text_parts * self.spec.text_dim
    return GEMS(ml_collections.FrozenConfigDict(model_cfg))

  def model_inputs(self, batch):
    return batch

  def prepare_batch(self, batch, rng=None):
    del rng
    return batches_lib.split_host_keys(batches_lib.fit_steps(batch, self.sequence_length))

  def eval_outputs(self, outputs):
    return {k: v for k, v in outputs.items() if not k.startswith("forecast")}

  def frozen_image_encoder(self) -> FrozenImageEncoder | None:
    """The frozen face encoder (config.model.face_encoder, its checkpoint's weights) on the crops
    of a 'crops' dataset, cached in `face_cache/` (config.input.face_embedding_cache)."""
    fe = self.config.model.face_encoder
    if not (fe.frozen and self.config.input.face_embedding_cache and self.spec.storage == "crops"):
      return None
    model = FaceEmotionClassifier(fe.name, dict(fe.overrides), len(self.spec.emotion_names),
                                  dtype=jnp.dtype(fe.dtype))
    size = self.spec.face_size
    return FrozenImageEncoder(
        cache_name="face_cache", image_key="faces", mask_key="face_mask",
        embedding_key="face_embedding", image_size=(size, size),
        features=lambda params, crops: model.apply({"params": params}, crops,
                                                   method=model.features, train=False),
        params=_face_encoder_params(self.config, model, size),
        description={"name": fe.name, "overrides": dict(fe.overrides), "dtype": fe.dtype,
                     "checkpoint": fe.checkpoint},
        cached_spec=lambda spec, dim: dataclasses.replace(spec, storage="embeddings", embed_dim=dim),
        chunk=self.config.input.face_cache_chunk)

  def frozen_prefixes(self, params):
    if self.config.model.face_encoder.frozen and "encoder" in params.get("face_branch", {}):
      return ("face_branch/encoder",)
    return ()

  def prediction_rows(self, outputs, labels, host):
    return predictions_lib.clip_rows(outputs, labels, host, self.spec,
                                     multilabel=self.config.model.heads.situational == "multilabel")


def _face_encoder_params(config, model: FaceEmotionClassifier, face_size: int) -> dict:
  """Host (numpy) params {'encoder': ...}: the checkpoint's, or initialised from config.seed."""
  fe = config.model.face_encoder
  crops = jnp.zeros((1, face_size, face_size, 3), jnp.uint8)
  init = lambda c: model.init(jax.random.key(config.seed), c, method=model.features, train=False)
  if not fe.checkpoint:
    logging.warning("caching embeddings of a randomly initialised frozen face encoder; set "
                    "config.model.face_encoder.checkpoint to a stage-1 workdir")
    return jax.device_get(jax.jit(init)(crops)["params"])  # One compile, not one per op.
  params = {"encoder": read_face_encoder_params(fe.checkpoint)["encoder"]}
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(x.shape)
                         for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  if shapes(params) != shapes(jax.eval_shape(init, crops)["params"]):
    raise ValueError(f"face encoder checkpoint {fe.checkpoint}: its encoder does not match the "
                     f"configured encoder {fe.name} {dict(fe.overrides)}")
  return jax.device_get(params)
