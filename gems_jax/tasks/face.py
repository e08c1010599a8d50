"""The stage-1 family: the Swin face encoder + individual-emotion heads on labelled face crops.

A training batch gathers up to `config.input.faces_per_batch` labelled faces of a batch of clips
into one-face "clips" ([n,1,1] in the [b,T,K] convention), so the encoder never runs on empty slots
and the GEMS losses and metrics apply unchanged with only the individual terms weighted.
"""
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from gems_jax.evaluation import predictions as predictions_lib
from gems_jax.models.gems import FaceEmotionClassifier
from gems_jax.tasks.base import Task
from gems_jax.training import batches as batches_lib

INDIVIDUAL_TERMS = ("individual_emotion", "individual_va")


class FaceTask(Task):
  name = "face"

  def required_keys(self):
    return ("faces", "face_mask", "individual_emotion", "individual_valence", "individual_arousal")

  def create_model(self) -> FaceEmotionClassifier:
    fe = self.config.model.face_encoder
    return FaceEmotionClassifier(fe.name, dict(fe.overrides), len(self.spec.emotion_names),
                                 dtype=jnp.dtype(fe.dtype))

  def model_inputs(self, batch):
    return batch["faces"]

  def prepare_batch(self, batch, rng=None):
    return batches_lib.face_batch(batch, self.config.input.faces_per_batch, rng), {}

  def eval_batches(self, batch):
    """Every labelled face of a clip batch, `faces_per_batch` at a time (empty slots are never
    encoded); every process runs as many face batches as the process with the most faces."""
    size = self.config.input.faces_per_batch
    chunks = max(1, -(-len(batches_lib.labelled_faces(batch)) // size))
    if jax.process_count() > 1:
      chunks = int(multihost_utils.process_allgather(np.int32(chunks)).max())
    for i in range(chunks):
      yield batches_lib.face_batch(batch, size, start=i * size), {}

  def loss_config(self):
    config = super().loss_config()
    config["weights"] = {t: (w if t in INDIVIDUAL_TERMS else 0.0)
                         for t, w in config["weights"].items()}
    return config

  def prediction_rows(self, outputs, labels, host):
    del host
    return predictions_lib.face_rows(outputs, labels, self.spec)
