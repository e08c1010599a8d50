"""The GEMS dataset schema: `DatasetSpec`, its TFDS features, and example validation.

A dataset holds one example per clip (the keys and rules below). Its fixed sizes
(T steps, K face slots, S-pixel crops, P text parts of D dims) and its class names live in a
`DatasetSpec`, saved as `gems_meta.json` in the dataset's version folder: class names are dataset
metadata, not code. Class counts are `len(names)`. `extract_config` records how the builder
extracted each clip (a JSON object whose keys `preprocessing.extract.extract_clip` defines), so that
a new clip can be extracted exactly as the training data was; it is empty when unknown (a dataset
imported from precomputed features, or a `gems_meta.json` written before the field existed).

Storage modes:
  'crops'      `faces`: [T, K] JPEG byte strings (RGB, S x S; b'' for an empty slot), decoded by the
               reader. Stored as a TFDS `Tensor` of bytes (reads and writes without TensorFlow).
  'embeddings' `face_embedding`: float32 [T, K, E] instead of `faces` (e.g. the authors' 1024-d
               per-step Swin-B features with K = 1).

Rules `validate_example` enforces beyond dtypes and shapes (decided here, recorded in the contract):
  * Padded steps come last: `step_mask` is True for a prefix of at least one step;
    `frame_index` is >= 0 on real steps and -1 on padded ones; padded steps hold no faces.
  * An empty slot (face_mask False) holds the fill values: faces b'', face_embedding 0,
    face_boxes 0, face_scores 0, face_track -1, individual_emotion -1, individual V/A NaN.
  * A real slot: a JPEG of S x S RGB (header checked), finite box with x1 <= x2, y1 <= y2, score in
    [0, 1], track >= 0, individual_emotion in [-1, num_emotions), individual V/A NaN or in range.
  * A text part that is absent (text_mask False) has an all-zero embedding row.
  * Clip labels are always present: class ids in range, valence/arousal finite and in range,
    situational_emotion multi-hot in {0, 1} with at least one positive.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import pathlib
import re
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

META_FILENAME = "gems_meta.json"
STORAGES = ("crops", "embeddings")
DEFAULT_EMOTION_NAMES = ("fear", "anger", "joy", "sadness", "disgust", "surprise", "trust",
                         "anticipation", "none")
DEFAULT_GROUP_CATEGORY_NAMES = ("positive", "neutral", "negative")
DEFAULT_SITUATIONAL_EMOTION_NAMES = tuple(f"situational_emotion_{i}" for i in range(10))
DEFAULT_SITUATION_NAMES = tuple(f"situation_{i}" for i in range(10))
STRING_KEYS = ("clip_id", "source_video", "description")
# The value of an empty face slot or a padded step, per key (0 / False / b'' for the others).
FILL_VALUES = {"frame_index": -1, "face_track": -1, "individual_emotion": -1,
               "individual_valence": np.nan, "individual_arousal": np.nan}
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
    self._check_extract_config()

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
  specs = {
      "frame_index": ((t,), np.int32), "step_mask": ((t,), np.bool_),
      "face_boxes": ((t, k, 4), np.float32), "face_scores": ((t, k), np.float32),
      "face_track": ((t, k), np.int32), "face_mask": ((t, k), np.bool_),
      "individual_emotion": ((t, k), np.int32),
      "individual_valence": ((t, k), np.float32), "individual_arousal": ((t, k), np.float32),
      "text_embedding": ((spec.text_parts, spec.text_dim), np.float32),
      "text_mask": ((spec.text_parts,), np.bool_),
      "group_emotion": ((), np.int32), "group_category": ((), np.int32),
      "valence": ((), np.float32), "arousal": ((), np.float32),
      "situational_emotion": ((spec.num_situational_emotions,), np.float32),
      "situation": ((), np.int32),
  }
  if spec.storage == "embeddings":
    specs["face_embedding"] = ((t, k, spec.embed_dim), np.float32)
  return specs


def example_keys(spec: DatasetSpec) -> tuple[str, ...]:
  """Every key of a stored example, in a stable order."""
  face_key = ("faces",) if spec.storage == "crops" else ()
  return STRING_KEYS + face_key + tuple(array_specs(spec))


def features(spec: DatasetSpec) -> tfds.features.FeaturesDict:
  """TFDS features for `spec`; all `Tensor`/`Text`, so TensorFlow is never needed."""
  feats: dict[str, Any] = {key: tfds.features.Text() for key in STRING_KEYS}
  if spec.storage == "crops":
    feats["faces"] = tfds.features.Tensor(shape=(spec.num_frames, spec.max_faces),
                                          dtype=np.object_)
  big = ("face_embedding", "text_embedding")  # Raw bytes: 4x faster to write than float lists.
  for key, (shape, dtype) in array_specs(spec).items():
    encoding = tfds.features.Encoding.BYTES if key in big else tfds.features.Encoding.NONE
    feats[key] = tfds.features.Tensor(shape=shape, dtype=dtype, encoding=encoding)
  return tfds.features.FeaturesDict(feats)


def padding_example(spec: DatasetSpec) -> dict[str, Any]:
  """The example that fills a partial batch (its `valid` is False in the batch).

  Masks are all False, ids -1, individual V/A NaN (= unlabelled, as in any empty slot); clip-level
  labels are 0 (not -1/NaN) so that a loss multiplied by `valid` stays finite.
  """
  out: dict[str, Any] = {key: "" for key in STRING_KEYS}
  if spec.storage == "crops":
    out["faces"] = np.full((spec.num_frames, spec.max_faces), b"", dtype=object)
  for key, (shape, dtype) in array_specs(spec).items():
    out[key] = np.full(shape, FILL_VALUES.get(key, 0), dtype=dtype)
  return out


def _fail(clip: str, key: str, message: str):
  raise ValueError(f"example {clip!r}: key {key!r}: {message}")


def _canonical_array(clip: str, key: str, value: Any, shape: tuple[int, ...], dtype) -> np.ndarray:
  """Checks kind and shape of a numeric value and returns it with the canonical dtype."""
  arr = np.asarray(value)
  kind = np.dtype(dtype).kind
  ok_kinds = {"b": "b", "i": "iu", "f": "f"}[kind]
  if arr.dtype.kind not in ok_kinds:
    _fail(clip, key, f"expected dtype {np.dtype(dtype).name} {shape}, got {arr.dtype.name} "
          f"{arr.shape}")
  if arr.shape != shape:
    _fail(clip, key, f"expected shape {shape} ({np.dtype(dtype).name}), got {arr.shape}")
  if kind == "i" and arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
    _fail(clip, key, f"values do not fit int32: min {arr.min()}, max {arr.max()}")
  return arr.astype(dtype)


def _check_range(clip: str, key: str, arr: np.ndarray, lo: float, hi: float, where=None):
  """Values (where `where`) must lie in [lo, hi]; NaN fails."""
  sel = arr if where is None else arr[where]
  bad = ~((sel >= lo) & (sel <= hi))
  if np.any(bad):
    _fail(clip, key, f"value {sel[bad].flat[0]} outside [{lo}, {hi}]")


def _check_fill(clip: str, key: str, arr: np.ndarray, empty: np.ndarray, fill, what: str):
  sel = arr[empty]
  ok = np.isnan(sel) if isinstance(fill, float) and math.isnan(fill) else sel == fill
  if not np.all(ok):
    _fail(clip, key, f"{what} must hold {fill}, got {sel[~ok].flat[0]}")


def _check_jpeg(clip: str, index: tuple[int, int], data: Any, size: int):
  if not isinstance(data, bytes) or not data:
    _fail(clip, "faces", f"slot {index} is a real face (face_mask True) but holds {type(data)} "
          f"of length {len(data) if isinstance(data, bytes) else '?'}, expected JPEG bytes")
  try:
    with Image.open(io.BytesIO(data)) as img:
      fmt, got_size, mode = img.format, img.size, img.mode
  except Exception as e:  # PIL raises several types for garbage.
    _fail(clip, "faces", f"slot {index} is not a readable image: {e}")
  if fmt != "JPEG" or got_size != (size, size) or mode != "RGB":
    _fail(clip, "faces", f"slot {index}: expected JPEG RGB {size}x{size}, got {fmt} {mode} "
          f"{got_size[0]}x{got_size[1]}")


def validate_example(example: Mapping[str, Any], spec: DatasetSpec) -> dict[str, Any]:
  """Checks one example against the contract and returns it with canonical dtypes.

  Accepts any integer / float / bool numpy or Python values of the right shape (e.g. Python ints
  for scalar labels) and casts them to int32 / float32 / bool. Raises ValueError naming the clip,
  the key, and the expected and actual dtype, shape or value.
  """
  clip = str(example.get("clip_id", "?"))
  expected = set(example_keys(spec))
  missing, extra = sorted(expected - set(example)), sorted(set(example) - expected)
  if missing or extra:
    _fail(clip, (missing or extra)[0], f"missing keys {missing}, unexpected keys {extra} "
          f"(storage={spec.storage!r})")
  out: dict[str, Any] = {}
  for key in STRING_KEYS:
    if not isinstance(example[key], str):
      _fail(clip, key, f"expected str, got {type(example[key]).__name__}")
    out[key] = example[key]
  for key in ("clip_id", "source_video"):
    if not out[key]:
      _fail(clip, key, "must be a non-empty string")
  for key, (shape, dtype) in array_specs(spec).items():
    out[key] = _canonical_array(clip, key, example[key], shape, dtype)

  step, face = out["step_mask"], out["face_mask"]
  n_real = int(step.sum())
  if n_real == 0 or not step[:n_real].all():
    _fail(clip, "step_mask", f"must be True for a prefix of >= 1 steps, got {step.tolist()}")
  if np.any(out["frame_index"][step] < 0) or np.any(out["frame_index"][~step] != -1):
    _fail(clip, "frame_index", f"must be >= 0 on real steps and -1 on padded steps, got "
          f"{out['frame_index'].tolist()} with step_mask {step.tolist()}")
  if np.any(face[~step]):
    _fail(clip, "face_mask", "padded steps (step_mask False) must hold no faces")
  empty = ~face
  for key, fill in (("face_boxes", 0.0), ("face_scores", 0.0), ("face_track", -1),
                    ("individual_emotion", -1), ("individual_valence", np.nan),
                    ("individual_arousal", np.nan)):
    _check_fill(clip, key, out[key], empty, fill, "empty slots (face_mask False)")
  boxes = out["face_boxes"][face]
  if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 2] < boxes[:, 0]) or np.any(
      boxes[:, 3] < boxes[:, 1]):
    _fail(clip, "face_boxes", "real faces need finite boxes with x1 <= x2 and y1 <= y2")
  _check_range(clip, "face_scores", out["face_scores"], 0.0, 1.0, face)
  if np.any(out["face_track"][face] < 0):
    _fail(clip, "face_track", "real faces need a track id >= 0")
  _check_range(clip, "individual_emotion", out["individual_emotion"], -1, spec.num_emotions - 1)
  for key, (lo, hi) in (("individual_valence", spec.valence_range),
                        ("individual_arousal", spec.arousal_range)):
    _check_range(clip, key, out[key], lo, hi, face & ~np.isnan(out[key]))

  if spec.storage == "crops":
    faces = example["faces"]
    if not isinstance(faces, np.ndarray) or faces.shape != face.shape:
      _fail(clip, "faces", f"expected numpy object array of bytes with shape {face.shape}, got "
            f"{type(faces).__name__} {getattr(faces, 'shape', '')}")
    for index in zip(*np.nonzero(empty)):
      if faces[index] != b"":
        _fail(clip, "faces", f"empty slot {tuple(map(int, index))} must hold b''")
    for index in zip(*np.nonzero(face)):
      _check_jpeg(clip, tuple(map(int, index)), faces[index], spec.face_size)
    out["faces"] = np.array(faces, dtype=object)
  else:
    emb = out["face_embedding"]
    if not np.all(np.isfinite(emb)):
      _fail(clip, "face_embedding", "must be finite")
    if np.any(emb[empty] != 0):
      _fail(clip, "face_embedding", "empty slots (face_mask False) must be all zeros")

  text = out["text_embedding"]
  if not np.all(np.isfinite(text)):
    _fail(clip, "text_embedding", "must be finite")
  if np.any(text[~out["text_mask"]] != 0):
    _fail(clip, "text_embedding", "rows of absent parts (text_mask False) must be all zeros")

  _check_range(clip, "group_emotion", out["group_emotion"], 0, spec.num_emotions - 1)
  _check_range(clip, "group_category", out["group_category"], 0, spec.num_group_categories - 1)
  _check_range(clip, "situation", out["situation"], 0, spec.num_situations - 1)
  _check_range(clip, "valence", out["valence"], *spec.valence_range)
  _check_range(clip, "arousal", out["arousal"], *spec.arousal_range)
  multi_hot = out["situational_emotion"]
  if not np.all((multi_hot == 0) | (multi_hot == 1)) or multi_hot.sum() < 1:
    _fail(clip, "situational_emotion", f"expected multi-hot in {{0, 1}} with >= 1 positive, got "
          f"{multi_hot.tolist()}")
  return out
