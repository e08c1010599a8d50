"""The interface between the training loop and a model family.

`gems_jax.train` is the loop and nothing else: everything that depends on what is being trained
(which Flax module, what it reads from a batch, its losses, its metrics, which parameters stay
frozen, where pretrained face-encoder weights go, what a prediction row says) lives in one `Task`
object per family, chosen once from `config.task` (`gems_jax.tasks.get_task`). Adding a family
means adding one module with a `Task` subclass and one line in the registry.
"""
import abc
from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gems_jax.data import spec as spec_lib
from gems_jax.evaluation import metrics as metrics_lib
from gems_jax.training import checkpointing
from gems_jax.training import losses as losses_lib


@dataclasses.dataclass(frozen=True)
class FrozenImageEncoder:
  """A task's frozen image encoder, whose embeddings `training/embedding_cache` computes once per
  dataset (the images of `image_key`, where `mask_key` is True, become `embedding_key`)."""
  cache_name: str  # Folder in the workdir, e.g. 'face_cache'.
  image_key: str  # 'faces' uint8 [b, T, K, S, S, 3] or 'whole_frames' [b, T_v, H, W, 3].
  mask_key: str  # 'face_mask' [b, T, K] / 'whole_frame_mask' [b, T_v].
  embedding_key: str  # 'face_embedding' / 'whole_frame_embedding'.
  image_size: tuple[int, int]  # (H, W).
  features: Callable  # (params, uint8 [n, H, W, 3]) -> float32 [n, E]; jit-able.
  params: Any  # The frozen parameters `features` takes.
  description: dict  # JSON: what, besides the parameters, the embeddings depend on.
  cached_spec: Callable  # (DatasetSpec, E) -> the spec of the dataset holding the embeddings.
  chunk: int  # Images per encoder call over all devices.


class Task(abc.ABC):
  """One model family, bound to a config and a dataset spec.

  Subclasses set `name` and implement the abstract methods (`create_model`, `model_inputs`,
  `prepare_batch`, `required_keys`, `prediction_rows`); the rest has defaults that fit the GEMS
  losses and metrics.
  """
  name: str = ""
  encoder_scope: tuple[str, ...] = ()  # Where pretrained face-encoder weights go in the params.

  def __init__(self, config: ml_collections.ConfigDict, spec: spec_lib.DatasetSpec):
    self.config, self.spec = config, spec
    self.validate()
    self.model: nn.Module = self.create_model()

  # --- What each family defines --------------------------------------------------------------
  @abc.abstractmethod
  def create_model(self) -> nn.Module:
    """The Flax module, sized from the config and the dataset spec."""

  @abc.abstractmethod
  def model_inputs(self, batch: Mapping[str, jax.Array]):
    """What `model.apply` takes from a device batch."""

  @abc.abstractmethod
  def prepare_batch(self, batch: Mapping[str, np.ndarray], rng: np.random.Generator | None = None
                    ) -> tuple[dict, dict]:
    """Host batch from the input pipeline -> (numeric arrays for the devices, host-only values).
    `rng` is given for training batches (random choices), None for evaluation."""

  @abc.abstractmethod
  def required_keys(self) -> tuple[str, ...]:
    """The example keys the model needs from a dataset."""

  @abc.abstractmethod
  def prediction_rows(self, outputs: dict, labels: dict, host: dict) -> list[dict]:
    """Rows of predictions.jsonl for one evaluated batch (host NumPy arrays)."""

  # --- Shared defaults -------------------------------------------------------------------------
  def validate(self) -> None:
    """Fails before any work if the dataset lacks a key the model needs (or, in subclasses, if the
    config does not fit the dataset), naming the keys."""
    have = set(spec_lib.example_keys(self.spec))
    missing = [k for k in self.required_keys() if k not in have]
    if missing:
      raise ValueError(f"config.task={self.name!r} needs dataset keys {missing}, which the dataset "
                       f"{self.spec.name!r} (storage={self.spec.storage!r}) lacks; it has {sorted(have)}")

  def loss_config(self) -> dict:
    return dict(self.config.loss.to_dict(), situational=self.config.model.heads.situational)

  def loss(self, outputs, batch) -> tuple[jax.Array, dict]:
    """(total, {term: unweighted mean}) of one global batch (see training/losses.py)."""
    return losses_lib.gems_losses(outputs, batch, self.loss_config())

  def eval_batches(self, batch: Mapping[str, np.ndarray]):
    """The (numeric, host) device batches that evaluate one host batch (default: one). Every
    process must yield as many as the others: the eval step is one global computation."""
    yield self.prepare_batch(batch)

  def eval_outputs(self, outputs: dict) -> dict:
    """The outputs worth returning from an eval step (training-only targets dropped)."""
    return outputs

  def metrics(self) -> metrics_lib.MetricsAccumulator:
    return metrics_lib.MetricsAccumulator(situational=self.config.model.heads.situational)

  def frozen_image_encoder(self) -> FrozenImageEncoder | None:
    """The frozen encoder whose embeddings are computed once per dataset, if any (default: none)."""
    return None

  def frozen_prefixes(self, params) -> tuple[str, ...]:
    """Parameter path prefixes that get no updates (see training/state.create_optimizer)."""
    del params
    return ()

  def load_pretrained(self, state):
    """Copies `config.model.face_encoder.checkpoint`'s weights into the state (same shapes)."""
    fe = self.config.model.face_encoder
    if not fe.checkpoint:
      return state
    loaded = checkpointing.read_face_encoder_params(fe.checkpoint)
    params = dict(state.params)
    target = params
    for key in self.encoder_scope:
      target[key] = dict(target[key])
      target = target[key]
    for name, value in loaded.items():
      if name not in target:
        continue  # e.g. no 'encoder' in GEMS params when embeddings are cached.
      expected = jax.tree.map(lambda x: (x.shape, x.dtype), target[name])
      got = jax.tree.map(lambda x: (tuple(x.shape), x.dtype), value)
      if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
        raise ValueError(f"config.model.face_encoder.checkpoint={fe.checkpoint}: '{name}' does not "
                         f"match the configured encoder {fe.name} {dict(fe.overrides)}")
      target[name] = jax.tree.map(
          lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding),
          value, target[name])
    logging.info("loaded face encoder weights %s from %s", sorted(loaded), fe.checkpoint)
    return state.replace(params=params)
