"""The GEMS dataset schema: `DatasetSpec`, its TFDS features, and example validation.

A dataset holds one example per clip (the keys and rules below). Its fixed sizes
(T steps, K face slots, S-pixel crops, P text parts of D dims) and its class names live in a
`DatasetSpec`, saved as `gems_meta.json` in the dataset's version folder: class names are dataset
metadata, not code. Class counts are `len(names)`. `extract_config` records how the builder
extracted each clip (a JSON object whose keys `preprocessing.extract.extract_clip` defines), so that
a new clip can be extracted exactly as the training data was; it is empty when unknown (a dataset
imported from precomputed features, or a `gems_meta.json` written before the field existed).

Kinds (`kind`, which fields identify people):
  'faces'      the GEMS dataset: per step t < T, up to K faces (crops or embeddings, boxes, scores,
               track ids, individual labels). Datasets written before `kind` existed are this kind.
               Built with an automatic labeller (`individual_labels`, gems_jax/data/face_labels.py;
               'none' otherwise and before it existed) it also stores, per face slot,
               `individual_emotion_probs` float32 [T, K, V] (the labeller's probabilities over
               emotion_names, for every detected face; 0 in empty slots) and
               `individual_emotion_auto` bool [T, K] (True where `individual_emotion` is the
               labeller's argmax, i.e. no human emotion label exists; human labels always win).
               A reader gives a faces dataset without them the fill values (0, False):
               `read_array_specs`.
  'privacy'    nothing that identifies a person: no face, box, track id, per-face label or per-step
               face field at all (T and K are unused); whole frames and/or audio, text, clip labels.
Either kind may also carry
  whole frames `whole_frames` [T_v] JPEG bytes (RGB, H x W; b'' on a padded frame) with
               `whole_frame_index` [T_v] (-1 padded) and `whole_frame_mask` [T_v] (a True prefix), or
               `whole_frame_embedding` [T_v, E_v] float32 instead of JPEGs when whole_frame_embed_dim > 0;
  audio        `audio` int16 [S] mono at `audio_rate` Hz from the first video frame's time, zero past
               `audio_length` (int32, real samples); `has_audio` False (length 0, all zero) when the
               clip has no (readable) audio stream.
Face storage modes:
  'crops'      `faces`: [T, K] JPEG byte strings (RGB, S x S; b'' for an empty slot), decoded by the
               reader. Stored as a TFDS `Tensor` of bytes (reads and writes without TensorFlow).
  'embeddings' `face_embedding`: float32 [T, K, E] instead of `faces` (e.g. the authors' 1024-d
               per-step Swin-B features with K = 1).

Examples are checked against this schema by `gems_jax.data.validation.validate_example`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from gems_jax.data import face_labels

META_FILENAME = "gems_meta.json"
KINDS = ("faces", "privacy")
STORAGES = ("crops", "embeddings")
# Keys of the 'faces' kind only: what a 'privacy' dataset never holds.
FACE_KEYS = ("faces", "face_embedding", "frame_index", "step_mask", "face_boxes", "face_scores",
             "face_track", "face_mask", "individual_emotion", "individual_valence",
             "individual_arousal", "individual_emotion_probs", "individual_emotion_auto")
# Keys a 'faces' dataset stores only when built with an automatic labeller (`individual_labels`).
AUTO_LABEL_KEYS = ("individual_emotion_probs", "individual_emotion_auto")
DEFAULT_EMOTION_NAMES = ("fear", "anger", "joy", "sadness", "disgust", "surprise", "trust",
                         "anticipation", "none")
DEFAULT_GROUP_CATEGORY_NAMES = ("positive", "neutral", "negative")
DEFAULT_SITUATIONAL_EMOTION_NAMES = tuple(f"situational_emotion_{i}" for i in range(10))
DEFAULT_SITUATION_NAMES = tuple(f"situation_{i}" for i in range(10))
STRING_KEYS = ("clip_id", "source_video", "description")
# The value of an empty face slot or a padded step, per key (0 / False / b'' for the others).
FILL_VALUES = {"frame_index": -1, "face_track": -1, "individual_emotion": -1,
               "individual_valence": np.nan, "individual_arousal": np.nan, "whole_frame_index": -1}
# The value of a missing clip label (situational_emotion: every class 0).
MISSING_LABELS = {"valence": np.nan, "arousal": np.nan, "situational_emotion": 0.0, "situation": -1}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Fixed sizes and class names of one GEMS dataset (see the module docstring)."""
  name: str  # snake_case TFDS dataset name.
  num_frames: int  # T, sampled steps per clip.
  max_faces: int  # K, face slots per step.
  text_dim: int  # D, dims of one text-part embedding.
  storage: str = "crops"  # 'crops' or 'embeddings'.
  face_size: int = 224  # S, crop side in pixels (informational in 'embeddings' mode).
  embed_dim: int = 0  # E, face-embedding dims; > 0 exactly when storage='embeddings'.
  text_parts: int = 3  # P: scene, background, event.
  emotion_names: tuple[str, ...] = DEFAULT_EMOTION_NAMES
  group_category_names: tuple[str, ...] = DEFAULT_GROUP_CATEGORY_NAMES
  situational_emotion_names: tuple[str, ...] = DEFAULT_SITUATIONAL_EMOTION_NAMES
  situation_names: tuple[str, ...] = DEFAULT_SITUATION_NAMES
  valence_range: tuple[float, float] = (-1.0, 1.0)
  arousal_range: tuple[float, float] = (-1.0, 1.0)
  version: str = "1.0.0"  # TFDS version folder.
  kind: str = "faces"  # 'faces' or 'privacy' (see the module docstring).
  num_whole_frames: int = 0  # T_v whole frames per clip; 0 = none stored.
  whole_frame_size: tuple[int, int] = (224, 224)  # (H, W) of a stored whole frame.
  whole_frame_embed_dim: int = 0  # E_v > 0: frame embeddings are stored instead of JPEGs.
  audio_samples: int = 0  # S, int16 mono samples per clip; 0 = no audio stored.
  audio_rate: int = 16000  # Hz.
  # Automatic per-face emotion labels: 'none' or a face_labels.LABELLERS key, and its mapping
  # {FER class: emotion name} ({} with 'none'). Not hashed: a dict.
  individual_labels: str = face_labels.NONE
  individual_label_mapping: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
  # The build's extraction settings (see the module docstring); {} = unknown. Not hashed: a dict.
  extract_config: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

  def __post_init__(self):
    for field in ("emotion_names", "group_category_names", "situational_emotion_names",
                  "situation_names"):
      names = tuple(str(n) for n in getattr(self, field))
      object.__setattr__(self, field, names)
      if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"DatasetSpec.{field}: need >= 2 distinct non-empty names, got {names}")
    for field in ("valence_range", "arousal_range"):
      lo, hi = (float(v) for v in getattr(self, field))
      object.__setattr__(self, field, (lo, hi))
      if not lo < hi:
        raise ValueError(f"DatasetSpec.{field}: need lo < hi, got {(lo, hi)}")
    if not _NAME_RE.match(self.name):
      raise ValueError(f"DatasetSpec.name must be snake_case ([a-z][a-z0-9_]*), got {self.name!r}")
    if not _VERSION_RE.match(self.version):
      raise ValueError(f"DatasetSpec.version must look like '1.0.0', got {self.version!r}")
    if self.storage not in STORAGES:
      raise ValueError(f"DatasetSpec.storage must be one of {STORAGES}, got {self.storage!r}")
    for field in ("num_frames", "max_faces", "text_dim", "face_size", "text_parts"):
      if int(getattr(self, field)) < 1:
        raise ValueError(f"DatasetSpec.{field} must be >= 1, got {getattr(self, field)}")
    if (self.storage == "embeddings") != (self.embed_dim > 0):
      raise ValueError(f"DatasetSpec.embed_dim must be > 0 exactly when storage='embeddings'; "
                       f"got storage={self.storage!r}, embed_dim={self.embed_dim}")
    self._check_media()
    self._check_extract_config()
    self._check_individual_labels()

  def _check_media(self):
    object.__setattr__(self, "whole_frame_size", tuple(int(v) for v in self.whole_frame_size))
    if self.kind not in KINDS:
      raise ValueError(f"DatasetSpec.kind must be one of {KINDS}, got {self.kind!r}")
    for field in ("num_whole_frames", "whole_frame_embed_dim", "audio_samples"):
      if int(getattr(self, field)) < 0:
        raise ValueError(f"DatasetSpec.{field} must be >= 0, got {getattr(self, field)}")
    if len(self.whole_frame_size) != 2 or min(self.whole_frame_size) < 1 or self.audio_rate < 1:
      raise ValueError(f"DatasetSpec: whole_frame_size {self.whole_frame_size} must be two sizes "
                       f">= 1 and audio_rate {self.audio_rate} >= 1")
    if self.kind == "privacy" and (self.storage != "crops" or self.embed_dim):
      raise ValueError("DatasetSpec: a 'privacy' dataset has no face storage (storage='crops', "
                       f"embed_dim=0), got storage={self.storage!r}, embed_dim={self.embed_dim}")
    if self.kind == "privacy" and not (self.num_whole_frames or self.audio_samples):
      raise ValueError("DatasetSpec: a 'privacy' dataset needs whole frames or audio "
                       "(num_whole_frames or audio_samples > 0)")

  def _check_extract_config(self):
    """Keeps `extract_config` as its JSON round trip and checks the sizes it names against T, K, S.

    The round trip makes a new spec equal to the one read back from gems_meta.json (tuples become
    lists) and rejects what the file could not hold.
    """
    if not isinstance(self.extract_config, Mapping):
      raise ValueError(f"DatasetSpec.extract_config must be a dict, got "
                       f"{type(self.extract_config).__name__}")
    try:
      config = json.loads(json.dumps(dict(self.extract_config), allow_nan=False))
    except (TypeError, ValueError) as e:
      raise ValueError(f"DatasetSpec.extract_config must be JSON-serialisable: {e}") from e
    object.__setattr__(self, "extract_config", config)
    for field in ("num_frames", "max_faces", "face_size"):
      if field in config and config[field] != getattr(self, field):
        raise ValueError(f"DatasetSpec.extract_config[{field!r}] = {config[field]!r} disagrees "
                         f"with DatasetSpec.{field} = {getattr(self, field)!r}")

  def _check_individual_labels(self):
    """A labeller needs kind 'faces' and a mapping of every FER class into emotion_names; 'none'
    has no mapping; extract_config, when it names a labeller, names this one."""
    try:
      face_labels.check_labeller(self.individual_labels)
      object.__setattr__(self, "individual_label_mapping", dict(self.individual_label_mapping))
      if self.individual_labels == face_labels.NONE and self.individual_label_mapping:
        raise ValueError("individual_label_mapping must be {} without a labeller")
      if self.individual_labels != face_labels.NONE:
        if self.kind != "faces":
          raise ValueError(f"individual_labels {self.individual_labels!r} needs kind 'faces'")
        face_labels.mapping_matrix(self.individual_label_mapping, self.emotion_names)
    except ValueError as e:
      raise ValueError(f"DatasetSpec: {e}") from e
    recorded = self.extract_config.get("individual_labels", self.individual_labels)
    if recorded != self.individual_labels:
      raise ValueError(f"DatasetSpec.extract_config['individual_labels'] = {recorded!r} disagrees "
                       f"with DatasetSpec.individual_labels = {self.individual_labels!r}")

  @property
  def num_emotions(self) -> int:
    return len(self.emotion_names)

  @property
  def num_group_categories(self) -> int:
    return len(self.group_category_names)

  @property
  def num_situational_emotions(self) -> int:
    return len(self.situational_emotion_names)

  @property
  def num_situations(self) -> int:
    return len(self.situation_names)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text: str) -> DatasetSpec:
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ValueError(f"DatasetSpec JSON has unknown keys {unknown}; known: {sorted(known)}")
    return cls(**data)


def is_valid_split_name(name: str) -> bool:
  return bool(_NAME_RE.match(name))


def write_spec(dataset_dir: str | pathlib.Path, spec: DatasetSpec) -> pathlib.Path:
  path = pathlib.Path(dataset_dir) / META_FILENAME
  path.write_text(spec.to_json())
  return path


def read_spec(dataset_dir: str | pathlib.Path) -> DatasetSpec:
  path = pathlib.Path(dataset_dir) / META_FILENAME
  try:
    return DatasetSpec.from_json(path.read_text())
  except (ValueError, TypeError) as e:
    raise ValueError(f"{path}: invalid dataset spec: {e}") from e


def array_specs(spec: DatasetSpec) -> dict[str, tuple[tuple[int, ...], type]]:
  """Numeric keys of one example: key -> (shape, canonical numpy dtype)."""
  t, k = spec.num_frames, spec.max_faces
  specs = {}
  if spec.kind == "faces":
    specs.update({
        "frame_index": ((t,), np.int32), "step_mask": ((t,), np.bool_),
        "face_boxes": ((t, k, 4), np.float32), "face_scores": ((t, k), np.float32),
        "face_track": ((t, k), np.int32), "face_mask": ((t, k), np.bool_),
        "individual_emotion": ((t, k), np.int32),
        "individual_valence": ((t, k), np.float32), "individual_arousal": ((t, k), np.float32)})
    if spec.individual_labels != face_labels.NONE:
      specs.update(_auto_label_specs(spec))
    if spec.storage == "embeddings":
      specs["face_embedding"] = ((t, k, spec.embed_dim), np.float32)
  specs.update({
      "text_embedding": ((spec.text_parts, spec.text_dim), np.float32),
      "text_mask": ((spec.text_parts,), np.bool_),
      "group_emotion": ((), np.int32), "group_category": ((), np.int32),
      "valence": ((), np.float32), "arousal": ((), np.float32),
      "situational_emotion": ((spec.num_situational_emotions,), np.float32),
      "situation": ((), np.int32),
  })
  if tv := spec.num_whole_frames:
    specs.update({"whole_frame_index": ((tv,), np.int32), "whole_frame_mask": ((tv,), np.bool_)})
    if spec.whole_frame_embed_dim:
      specs["whole_frame_embedding"] = ((tv, spec.whole_frame_embed_dim), np.float32)
  if spec.audio_samples:
    specs.update({"audio": ((spec.audio_samples,), np.int16), "audio_length": ((), np.int32),
                  "has_audio": ((), np.bool_)})
  return specs


def _auto_label_specs(spec: DatasetSpec) -> dict[str, tuple[tuple[int, ...], type]]:
  t, k = spec.num_frames, spec.max_faces
  return {"individual_emotion_probs": ((t, k, spec.num_emotions), np.float32),
          "individual_emotion_auto": ((t, k), np.bool_)}


def read_array_specs(spec: DatasetSpec) -> dict[str, tuple[tuple[int, ...], type]]:
  """Numeric keys of an example as the reader gives it: `array_specs`, plus for a 'faces' dataset
  built without an automatic labeller (or before labellers existed) `AUTO_LABEL_KEYS`, which the
  reader fills with their fill values (probabilities 0, flag False)."""
  specs = array_specs(spec)
  if spec.kind == "faces":
    specs.update({key: value for key, value in _auto_label_specs(spec).items()
                  if key not in specs})
  return specs


def byte_keys(spec: DatasetSpec) -> tuple[str, ...]:
  """Keys stored as object arrays of JPEG bytes: `faces` [T, K] and/or `whole_frames` [T_v]."""
  faces = ("faces",) if spec.kind == "faces" and spec.storage == "crops" else ()
  frames = ("whole_frames",) if spec.num_whole_frames and not spec.whole_frame_embed_dim else ()
  return faces + frames


def _byte_shape(spec: DatasetSpec, key: str) -> tuple[int, ...]:
  return (spec.num_frames, spec.max_faces) if key == "faces" else (spec.num_whole_frames,)


def example_keys(spec: DatasetSpec) -> tuple[str, ...]:
  """Every key of a stored example, in a stable order."""
  return STRING_KEYS + byte_keys(spec) + tuple(array_specs(spec))


def features(spec: DatasetSpec) -> tfds.features.FeaturesDict:
  """TFDS features for `spec`; all `Tensor`/`Text`, so TensorFlow is never needed."""
  feats: dict[str, Any] = {key: tfds.features.Text() for key in STRING_KEYS}
  for key in byte_keys(spec):
    feats[key] = tfds.features.Tensor(shape=_byte_shape(spec, key), dtype=np.object_)
  # Raw bytes: 4x faster to write than number lists.
  big = ("face_embedding", "text_embedding", "whole_frame_embedding", "audio")
  for key, (shape, dtype) in array_specs(spec).items():
    encoding = tfds.features.Encoding.BYTES if key in big else tfds.features.Encoding.NONE
    feats[key] = tfds.features.Tensor(shape=shape, dtype=dtype, encoding=encoding)
  return tfds.features.FeaturesDict(feats)


def padding_example(spec: DatasetSpec) -> dict[str, Any]:
  """The example that fills a partial batch (its `valid` is False in the batch).

  Masks are all False, ids -1, individual V/A NaN (= unlabelled, as in any empty slot); clip-level
  labels are 0 (not -1/NaN) so that a loss multiplied by `valid` stays finite. Its keys are those
  a reader gives (`read_array_specs`).
  """
  out: dict[str, Any] = {key: "" for key in STRING_KEYS}
  for key in byte_keys(spec):
    out[key] = np.full(_byte_shape(spec, key), b"", dtype=object)
  for key, (shape, dtype) in read_array_specs(spec).items():
    out[key] = np.full(shape, FILL_VALUES.get(key, 0), dtype=dtype)
  return out
