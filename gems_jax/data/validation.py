"""Checks one example against the GEMS schema (`gems_jax.data.spec`) before it is written.

The rules beyond dtypes and shapes (decided here, recorded in the contract):
  * Padded steps come last: `step_mask` is True for a prefix of at least one step;
    `frame_index` is >= 0 on real steps and -1 on padded ones; padded steps hold no faces.
  * An empty slot (face_mask False) holds the fill values: faces b'', face_embedding 0,
    face_boxes 0, face_scores 0, face_track -1, individual_emotion -1, individual V/A NaN.
  * A real slot: a JPEG of S x S RGB (header checked), finite box with x1 <= x2, y1 <= y2, score in
    [0, 1], track >= 0, individual_emotion in [-1, num_emotions), individual V/A NaN or in range.
  * Automatic labels (a dataset with an `individual_labels` labeller): an empty slot holds
    individual_emotion_probs 0 and individual_emotion_auto False; a real slot's probabilities are
    in [0, 1] and sum to 1 (the labeller saw every detected face); where the flag is True,
    individual_emotion is their argmax.
  * A text part that is absent (text_mask False) has an all-zero embedding row.
  * group_emotion and group_category are always present (class ids in range). valence, arousal,
    situational_emotion and situation may be missing (a partially labelled clip), marked by
    `MISSING_LABELS` (NaN, all-zero multi-hot, -1; the losses and metrics skip such a target);
    present ones are in range, situational_emotion a multi-hot in {0, 1}.
  * Whole frames: `whole_frame_mask` is a True prefix (>= 1 frame), `whole_frame_index` >= 0 on
    real frames and -1 on padded ones; a real frame is a JPEG of H x W RGB, a padded one b'' (or an
    all-zero embedding row).
  * Audio: 0 <= audio_length <= S, every sample past it 0; has_audio False means length 0.
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping

import numpy as np
from PIL import Image

from gems_jax.data.spec import (MISSING_LABELS, STRING_KEYS, DatasetSpec, array_specs,
                                example_keys)


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
  if kind == "i" and arr.size and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
    _fail(clip, key, f"values do not fit {np.dtype(dtype).name}: min {arr.min()}, max {arr.max()}")
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


def _check_jpeg(clip: str, key: str, index: tuple[int, ...], data: Any, height: int, width: int):
  if not isinstance(data, bytes) or not data:
    _fail(clip, key, f"slot {index} is real (its mask is True) but holds {type(data)} "
          f"of length {len(data) if isinstance(data, bytes) else '?'}, expected JPEG bytes")
  try:
    with Image.open(io.BytesIO(data)) as img:
      fmt, got_size, mode = img.format, img.size, img.mode
  except Exception as e:  # PIL raises several types for garbage.
    _fail(clip, key, f"slot {index} is not a readable image: {e}")
  if fmt != "JPEG" or got_size != (width, height) or mode != "RGB":
    _fail(clip, key, f"slot {index}: expected JPEG RGB {width}x{height}, got {fmt} {mode} "
          f"{got_size[0]}x{got_size[1]}")


def _check_images(clip: str, key: str, images: Any, real: np.ndarray, height: int, width: int):
  """An object array of JPEG bytes shaped like `real`: JPEGs where real, b'' elsewhere."""
  if not isinstance(images, np.ndarray) or images.shape != real.shape:
    _fail(clip, key, f"expected numpy object array of bytes with shape {real.shape}, got "
          f"{type(images).__name__} {getattr(images, 'shape', '')}")
  for index in zip(*np.nonzero(~real)):
    if images[index] != b"":
      _fail(clip, key, f"empty slot {tuple(map(int, index))} must hold b''")
  for index in zip(*np.nonzero(real)):
    _check_jpeg(clip, key, tuple(map(int, index)), images[index], height, width)


def _check_prefix(clip: str, mask_key: str, index_key: str, out: dict[str, Any]) -> None:
  """A mask that is True for a prefix of >= 1 entries, with indices >= 0 there and -1 after."""
  mask, index = out[mask_key], out[index_key]
  n_real = int(mask.sum())
  if n_real == 0 or not mask[:n_real].all():
    _fail(clip, mask_key, f"must be True for a prefix of >= 1 entries, got {mask.tolist()}")
  if np.any(index[mask] < 0) or np.any(index[~mask] != -1):
    _fail(clip, index_key, f"must be >= 0 where {mask_key} is True and -1 elsewhere, got "
          f"{index.tolist()} with {mask_key} {mask.tolist()}")


def _validate_faces(clip: str, out: dict[str, Any], example: Mapping[str, Any], spec: DatasetSpec):
  _check_prefix(clip, "step_mask", "frame_index", out)
  step, face = out["step_mask"], out["face_mask"]
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
  if "individual_emotion_auto" in out:
    _validate_auto_labels(clip, out)
  if spec.storage == "crops":
    _check_images(clip, "faces", example["faces"], face, spec.face_size, spec.face_size)
    out["faces"] = np.array(example["faces"], dtype=object)
  else:
    _check_embedding(clip, "face_embedding", out["face_embedding"], face)


def _validate_auto_labels(clip: str, out: dict[str, Any]):
  face, probs = out["face_mask"], out["individual_emotion_probs"]
  auto = out["individual_emotion_auto"]
  _check_fill(clip, "individual_emotion_probs", probs, ~face, 0.0, "empty slots (face_mask False)")
  _check_fill(clip, "individual_emotion_auto", auto, ~face, False, "empty slots (face_mask False)")
  _check_range(clip, "individual_emotion_probs", probs, 0.0, 1.0, face)
  sums = probs[face].sum(-1)
  if np.any(np.abs(sums - 1) > 1e-3):
    _fail(clip, "individual_emotion_probs", f"a real slot's probabilities must sum to 1, got "
          f"{sums[np.abs(sums - 1) > 1e-3][0]}")
  if np.any(out["individual_emotion"][auto] != probs[auto].argmax(-1)):
    _fail(clip, "individual_emotion", "where individual_emotion_auto is True it must be the argmax "
          "of individual_emotion_probs")


def _check_embedding(clip: str, key: str, embedding: np.ndarray, real: np.ndarray):
  if not np.all(np.isfinite(embedding)):
    _fail(clip, key, "must be finite")
  if np.any(embedding[~real] != 0):
    _fail(clip, key, "empty slots (mask False) must be all zeros")


def _validate_whole_frames(clip: str, out: dict[str, Any], example: Mapping[str, Any],
                           spec: DatasetSpec):
  _check_prefix(clip, "whole_frame_mask", "whole_frame_index", out)
  real = out["whole_frame_mask"]
  if spec.whole_frame_embed_dim:
    _check_embedding(clip, "whole_frame_embedding", out["whole_frame_embedding"], real)
  else:
    _check_images(clip, "whole_frames", example["whole_frames"], real, *spec.whole_frame_size)
    out["whole_frames"] = np.array(example["whole_frames"], dtype=object)


def _validate_audio(clip: str, out: dict[str, Any], spec: DatasetSpec):
  length = int(out["audio_length"])
  if not 0 <= length <= spec.audio_samples:
    _fail(clip, "audio_length", f"{length} outside [0, {spec.audio_samples}]")
  if not out["has_audio"] and length:
    _fail(clip, "audio_length", f"must be 0 when has_audio is False, got {length}")
  if np.any(out["audio"][length:]):
    _fail(clip, "audio", f"samples past audio_length={length} must be 0")


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
          f"(kind={spec.kind!r}, storage={spec.storage!r})")
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
  if spec.kind == "faces":
    _validate_faces(clip, out, example, spec)
  if spec.num_whole_frames:
    _validate_whole_frames(clip, out, example, spec)
  if spec.audio_samples:
    _validate_audio(clip, out, spec)

  text = out["text_embedding"]
  if not np.all(np.isfinite(text)):
    _fail(clip, "text_embedding", "must be finite")
  if np.any(text[~out["text_mask"]] != 0):
    _fail(clip, "text_embedding", "rows of absent parts (text_mask False) must be all zeros")

  _check_range(clip, "group_emotion", out["group_emotion"], 0, spec.num_emotions - 1)
  _check_range(clip, "group_category", out["group_category"], 0, spec.num_group_categories - 1)
  _check_range(clip, "situation", out["situation"], MISSING_LABELS["situation"],
               spec.num_situations - 1)
  for key, value_range in (("valence", spec.valence_range), ("arousal", spec.arousal_range)):
    if not np.isnan(out[key]):  # NaN: missing.
      _check_range(clip, key, out[key], *value_range)
  multi_hot = out["situational_emotion"]
  if not np.all((multi_hot == 0) | (multi_hot == 1)):
    _fail(clip, "situational_emotion", f"expected multi-hot in {{0, 1}} (all 0: missing), got "
          f"{multi_hot.tolist()}")
  return out
