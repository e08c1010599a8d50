"""Clip labels: the label space (labels.json), annotation CSVs, and the split-leak check.

    space = LabelSpace.beside(annotation_csv)             # labels.json next to it, or defaults
    annotations = read_annotations([annotation_csv], space)
    annotations.labels["70_25"].example_fields(space)     # group_emotion, ..., situation
    annotations.errors                                     # clip_id -> reason (row not usable)
    check_split_leaks({c: l.split for c, l in annotations.labels.items()})

Two CSV layouts are read (the schema in `gems_jax/data/spec.py`):
  ours:      clip_id,split,group_emotion,group_category,valence,arousal,
             situational_emotion,situation
             (situational_emotion: ';'-separated class indices; empty = missing)
  authors':  video_file_name,group_emotion,group_emotion_category,class_emotion,class_valence,
             class_arousal,event_emotion,event  (the GEMS labels.csv; event_emotion is one
             situational label, event the situation; class_emotion duplicates group_emotion in
             every released file and is not used; the split comes from the folder name
             <root>/<split>/labels.csv or from `split=`).
Clip ids: a known video suffix is dropped ('70_25.mp4' is clip '70_25', in both layouts), so an id
matches its video file <clip_id>.<ext> with or without the extension in the row. An id names files
(the video, the per-clip caches), so one with '/', '\\' or a control character, or starting with
'.', is rejected (not encoded): no video file could carry it.

Partially labelled clips: an empty valence, arousal, situational_emotion (event_emotion) or
situation (event) cell is a missing label, stored as `spec.MISSING_LABELS` (NaN, an all-zero
multi-hot, -1); the clip is kept and the losses and metrics skip that target. group_emotion and
group_category are required.

A bad value (not a number, a class out of range, valence/arousal outside the declared range, an
unknown split, a bad clip id, a clip listed twice, also as '70_25' and '70_25.mp4') makes that
clip's row unusable: it lands in `errors` with the reason and the rows, and the build reports the
clip as skipped. A file without the expected header is a ValueError naming the file and the
columns it lacks. Files may start with a UTF-8 byte-order mark (Excel writes one).
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
from preprocessing import video

SPLITS = ("train", "val", "test")
LABELS_FILENAME = "labels.json"
TEXT_ENCODING = "utf-8-sig"  # Of the CSV and JSON files: UTF-8, with or without a byte-order mark.
OUR_COLUMNS = ("clip_id", "split", "group_emotion", "group_category", "valence", "arousal",
               "situational_emotion", "situation")
AUTHOR_COLUMNS = ("video_file_name", "group_emotion", "group_emotion_category", "class_emotion",
                  "class_valence", "class_arousal", "event_emotion", "event")


class SplitLeakError(ValueError):
  """Clips of one source video sit in more than one split."""


def source_video(clip_id: str) -> str:
  """The source video of a VGAF clip id `<source>_<clip>` (the id itself when it has no '_')."""
  return clip_id.rsplit("_", 1)[0] if "_" in clip_id else clip_id


def clip_id_of(name: str) -> str:
  """The clip id of an annotation row's id: without a video suffix ('70_25.mp4' -> '70_25')."""
  stem, dot, suffix = name.rpartition(".")
  return stem if dot and stem and f".{suffix.lower()}" in video.VIDEO_SUFFIXES else name


def check_clip_id(clip_id: str) -> None:
  """ValueError unless `clip_id` can be a file name stem (see the module docstring)."""
  bad = sorted({c for c in clip_id if c in "/\\" or ord(c) < 32 or ord(c) == 127})
  if bad or clip_id.startswith("."):
    what = f"contains {bad}" if bad else "starts with '.'"
    raise ValueError(f"{clip_id!r} {what}; a clip id names its video file "
                     f"<clip_id>.<ext> and its cache files, so it cannot hold '/', '\\' or "
                     f"control characters, nor start with '.'")


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
      data = json.loads(pathlib.Path(path).read_text(encoding=TEXT_ENCODING))
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
  valence: float  # NaN when missing, as arousal.
  arousal: float
  situational_emotion: tuple[int, ...]  # Positive class indices; () when missing.
  situation: int  # -1 when missing.

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


def parse_class(value: str, column: str, names: tuple[str, ...], missing: int | None = None
                ) -> int:
  """An integer class index in [0, len(names)); ValueError naming column and value otherwise.

  An empty value gives `missing` when it is given (an optional label), else an error."""
  if value == "" and missing is not None:
    return missing
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"{column} {value!r} is not a number") from None
  if not number.is_integer():
    raise ValueError(f"{column} {value!r} is not an integer")
  if not 0 <= number < len(names):
    raise ValueError(f"{column} {int(number)} out of range [0, {len(names)})")
  return int(number)


def parse_scalar(value: str, column: str, value_range: tuple[float, float],
                 missing: float | None = None) -> float:
  """A finite float in the declared range; ValueError naming column and value otherwise.

  An empty value gives `missing` when it is given (an optional label), else an error."""
  if value == "" and missing is not None:
    return missing
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


def _row_labels(clip_id: str, row: Mapping[str, str], space: LabelSpace, authors: bool,
                file_split: str | None) -> ClipLabels:
  if authors:
    split, category = file_split, row["group_emotion_category"]
    valence, arousal = row["class_valence"], row["class_arousal"]
    situational = [row["event_emotion"]] if row["event_emotion"] else []
    situation = row["event"]
  else:
    split, category = row["split"], row["group_category"]
    valence, arousal = row["valence"], row["arousal"]
    situational = [v for v in row["situational_emotion"].split(";") if v.strip()]
    situation = row["situation"]
    if split not in SPLITS:
      raise ValueError(f"split {split!r} is not one of {SPLITS}")
  missing = spec_lib.MISSING_LABELS
  return ClipLabels(
      clip_id=clip_id, split=split,
      group_emotion=parse_class(row["group_emotion"], "group_emotion", space.emotion_names),
      group_category=parse_class(category, "group_category", space.group_category_names),
      valence=parse_scalar(valence, "valence", space.valence_range, missing["valence"]),
      arousal=parse_scalar(arousal, "arousal", space.arousal_range, missing["arousal"]),
      situational_emotion=tuple(sorted({parse_class(v, "situational_emotion",
                                                    space.situational_emotion_names)
                                        for v in situational})),
      situation=parse_class(situation, "situation", space.situation_names, missing["situation"]))


def read_csv_rows(path: pathlib.Path, required: Iterable[str]) -> list[dict[str, str]]:
  """Rows of a CSV as dicts (keys and values stripped); ValueError if `required` columns lack."""
  with path.open(newline="", encoding=TEXT_ENCODING) as f:
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
    with path.open(newline="", encoding=TEXT_ENCODING) as f:
      header = [h.strip() for h in next(csv.reader(f), [])]
    authors = "video_file_name" in header
    rows = read_csv_rows(path, AUTHOR_COLUMNS if authors else OUR_COLUMNS)
    file_split = _split_of(path, split) if authors else None
    for line, row in enumerate(rows, 2):
      name = row["video_file_name" if authors else "clip_id"]
      clip_id, where = clip_id_of(name), f"{path.name}:{line} {name!r}"
      if not name:
        raise ValueError(f"{path}:{line}: empty clip id")
      if clip_id in seen:
        out.errors[clip_id] = (f"bad label: clip {clip_id!r} listed twice in the annotations "
                               f"({seen[clip_id]} and {where}); keep one row")
        out.labels.pop(clip_id, None)
        continue
      seen[clip_id] = where
      try:
        check_clip_id(clip_id)
      except ValueError as e:
        out.errors[clip_id] = f"bad clip id: {e} ({where})"
        continue
      try:
        labels = _row_labels(clip_id, row, space, authors, file_split)
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
