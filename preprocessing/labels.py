"""Clip labels: the label space (labels.json), annotation CSVs, and the split-leak check.

    space = LabelSpace.beside(annotation_csv)             # labels.json next to it, or defaults
    annotations = read_annotations([annotation_csv], space)
    annotations.labels["70_25"].example_fields(space)     # group_emotion, ..., situation
    annotations.errors                                     # clip_id -> reason (row not usable)
    check_split_leaks({c: l.split for c, l in annotations.labels.items()})

Two CSV layouts are read (the schema in `gems_jax/data/spec.py`):
  ours:      clip_id,split,group_emotion,group_category,valence,arousal,
             situational_emotion,situation
             (situational_emotion: ';'-separated class indices, one or more)
  authors':  video_file_name,group_emotion,group_emotion_category,class_emotion,class_valence,
             class_arousal,event_emotion,event  (the GEMS labels.csv; event_emotion is one
             situational label, event the situation; class_emotion duplicates group_emotion in
             every released file and is not used; the split comes from the folder name
             <root>/<split>/labels.csv or from `split=`).
A bad value (not a number, a class out of range, valence/arousal outside the declared range, an
unknown split, a clip listed twice) makes that clip's row unusable: it lands in `errors` with the
reason, and the build reports the clip as skipped. A file without the expected header is a
ValueError naming the file and the columns it lacks.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
from typing import Iterable, Mapping

import numpy as np

from gems_jax.data import spec as spec_lib

SPLITS = ("train", "val", "test")
LABELS_FILENAME = "labels.json"
OUR_COLUMNS = ("clip_id", "split", "group_emotion", "group_category", "valence", "arousal",
               "situational_emotion", "situation")
AUTHOR_COLUMNS = ("video_file_name", "group_emotion", "group_emotion_category", "class_emotion",
                  "class_valence", "class_arousal", "event_emotion", "event")
_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class SplitLeakError(ValueError):
  """Clips of one source video sit in more than one split."""


def source_video(clip_id: str) -> str:
  """The source video of a VGAF clip id `<source>_<clip>` (the id itself when it has no '_')."""
  return clip_id.rsplit("_", 1)[0] if "_" in clip_id else clip_id


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """Class names and the declared valence/arousal range; stored as dataset metadata."""
  emotion_names: tuple[str, ...] = spec_lib.DEFAULT_EMOTION_NAMES
  group_category_names: tuple[str, ...] = spec_lib.DEFAULT_GROUP_CATEGORY_NAMES
  situational_emotion_names: tuple[str, ...] = spec_lib.DEFAULT_SITUATIONAL_EMOTION_NAMES
  situation_names: tuple[str, ...] = spec_lib.DEFAULT_SITUATION_NAMES
  valence_range: tuple[float, float] = (-1.0, 1.0)
  arousal_range: tuple[float, float] = (-1.0, 1.0)

  def __post_init__(self):
    for name in ("valence_range", "arousal_range"):
      object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
    for name in ("emotion_names", "group_category_names", "situational_emotion_names",
                 "situation_names"):
      object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> LabelSpace:
    """Reads labels.json: {"emotion": [...], "group_category": [...], "situational_emotion": [...],
    "situation": [...], "valence_range": [lo, hi], "arousal_range": [lo, hi]}; keys optional."""
    keys = {"emotion": "emotion_names", "group_category": "group_category_names",
            "situational_emotion": "situational_emotion_names", "situation": "situation_names",
            "valence_range": "valence_range", "arousal_range": "arousal_range"}
    try:
      data = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: cannot read the label file: {e}") from e
    unknown = sorted(set(data) - set(keys))
    if unknown:
      raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(keys)}")
    try:
      space = cls(**{keys[k]: tuple(v) for k, v in data.items()})
      ranges = {name: getattr(space, name) for name in ("valence_range", "arousal_range")}
      if not all(len(r) == 2 and math.isfinite(r[0]) and math.isfinite(r[1]) and r[0] < r[1]
                 for r in ranges.values()):
        raise ValueError(f"ranges must be [lo, hi] with finite lo < hi, got {ranges}")
    except (TypeError, ValueError) as e:
      raise ValueError(f"{path}: bad value: {e}") from e
    return space

  @classmethod
  def beside(cls, annotation_path: str | os.PathLike) -> LabelSpace:
    """The labels.json in the annotation file's folder, else the defaults."""
    path = pathlib.Path(annotation_path).parent / LABELS_FILENAME
    return cls.from_file(path) if path.exists() else cls()

  def spec_fields(self) -> dict:
    """The DatasetSpec keyword arguments this label space fixes."""
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ClipLabels:
  clip_id: str
  split: str
  group_emotion: int
  group_category: int
  valence: float
  arousal: float
  situational_emotion: tuple[int, ...]  # Positive class indices (one or more).
  situation: int

  def example_fields(self, space: LabelSpace) -> dict[str, np.ndarray]:
    multi_hot = np.zeros(len(space.situational_emotion_names), np.float32)
    multi_hot[list(self.situational_emotion)] = 1.0
    return {"group_emotion": np.int32(self.group_emotion),
            "group_category": np.int32(self.group_category),
            "valence": np.float32(self.valence), "arousal": np.float32(self.arousal),
            "situational_emotion": multi_hot, "situation": np.int32(self.situation)}


@dataclasses.dataclass
class Annotations:
  labels: dict[str, ClipLabels] = dataclasses.field(default_factory=dict)
  errors: dict[str, str] = dataclasses.field(default_factory=dict)  # clip_id -> reason.


def parse_class(value: str, column: str, names: tuple[str, ...]) -> int:
  """An integer class index in [0, len(names)); ValueError naming column and value otherwise."""
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"{column} {value!r} is not a number") from None
  if not number.is_integer():
    raise ValueError(f"{column} {value!r} is not an integer")
  if not 0 <= number < len(names):
    raise ValueError(f"{column} {int(number)} out of range [0, {len(names)})")
  return int(number)


def parse_scalar(value: str, column: str, value_range: tuple[float, float]) -> float:
  """A finite float in the declared range; ValueError naming column and value otherwise."""
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"{column} {value!r} is not a number") from None
  lo, hi = value_range
  if not (math.isfinite(number) and lo <= number <= hi):
    raise ValueError(f"{column} {value} outside the declared range [{lo}, {hi}] (labels.json)")
  return number


def _split_of(path: pathlib.Path, split: str | None) -> str:
  split = split or path.parent.name
  if split not in SPLITS:
    raise ValueError(f"{path}: the authors' labels.csv has no split column; put it in a "
                     f"<root>/<split>/ folder ({'/'.join(SPLITS)}) or pass --split")
  return split


def _row_labels(row: Mapping[str, str], space: LabelSpace, authors: bool,
                file_split: str | None) -> ClipLabels:
  if authors:
    clip_id = row["video_file_name"]
    if clip_id.lower().endswith(_VIDEO_SUFFIXES):
      clip_id = clip_id.rsplit(".", 1)[0]
    split, category = file_split, row["group_emotion_category"]
    valence, arousal = row["class_valence"], row["class_arousal"]
    situational, situation = [row["event_emotion"]], row["event"]
  else:
    clip_id, split, category = row["clip_id"], row["split"], row["group_category"]
    valence, arousal = row["valence"], row["arousal"]
    situational = [v for v in row["situational_emotion"].split(";") if v.strip()]
    situation = row["situation"]
    if split not in SPLITS:
      raise ValueError(f"split {split!r} is not one of {SPLITS}")
  if not situational:
    raise ValueError("situational_emotion is empty (need one or more class indices)")
  return ClipLabels(
      clip_id=clip_id, split=split,
      group_emotion=parse_class(row["group_emotion"], "group_emotion", space.emotion_names),
      group_category=parse_class(category, "group_category", space.group_category_names),
      valence=parse_scalar(valence, "valence", space.valence_range),
      arousal=parse_scalar(arousal, "arousal", space.arousal_range),
      situational_emotion=tuple(sorted({parse_class(v, "situational_emotion",
                                                    space.situational_emotion_names)
                                        for v in situational})),
      situation=parse_class(situation, "situation", space.situation_names))


def read_csv_rows(path: pathlib.Path, required: Iterable[str]) -> list[dict[str, str]]:
  """Rows of a CSV as dicts (keys and values stripped); ValueError if `required` columns lack."""
  with path.open(newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f, skipinitialspace=True)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
      raise ValueError(f"{path}: missing columns {missing} (header: {header})")
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            for row in reader]


def read_annotations(paths: Iterable[str | os.PathLike], space: LabelSpace,
                     split: str | None = None) -> Annotations:
  """Labels of every clip in the annotation files (ours or the authors' layout, per file)."""
  out = Annotations()
  seen: dict[str, str] = {}
  for path in map(pathlib.Path, paths):
    with path.open(newline="", encoding="utf-8") as f:
      header = [h.strip() for h in next(csv.reader(f), [])]
    authors = "video_file_name" in header
    rows = read_csv_rows(path, AUTHOR_COLUMNS if authors else OUR_COLUMNS)
    file_split = _split_of(path, split) if authors else None
    for line, row in enumerate(rows, 2):
      clip_id = row["video_file_name" if authors else "clip_id"]
      where = f"{path.name}:{line}"
      if not clip_id:
        raise ValueError(f"{path}:{line}: empty clip id")
      if clip_id in seen:
        out.errors[clip_id] = (f"bad label: clip listed twice in the annotations ({seen[clip_id]} "
                               f"and {where})")
        out.labels.pop(clip_id, None)
        continue
      seen[clip_id] = where
      try:
        labels = _row_labels(row, space, authors, file_split)
      except ValueError as e:
        out.errors[clip_id] = f"bad label: {e} ({where})"
        continue
      out.labels[labels.clip_id] = labels
  return out


def find_split_leaks(clip_splits: Mapping[str, str]) -> dict[str, list[str]]:
  """source video -> its splits, for every source video found in more than one split."""
  splits: dict[str, set[str]] = {}
  for clip_id, split in clip_splits.items():
    splits.setdefault(source_video(clip_id), set()).add(split)
  return {source: sorted(s) for source, s in sorted(splits.items()) if len(s) > 1}


def check_split_leaks(clip_splits: Mapping[str, str]) -> None:
  """Raises SplitLeakError listing the source videos whose clips sit in several splits."""
  leaks = find_split_leaks(clip_splits)
  if leaks:
    shown = ", ".join(f"{source!r} in {'/'.join(s)}" for source, s in list(leaks.items())[:10])
    raise SplitLeakError(
        f"{len(leaks)} source video(s) have clips in more than one split (source video = clip id "
        f"up to its last '_'): {shown}{' ...' if len(leaks) > 10 else ''}. Move all clips of a "
        f"source video into one split")
