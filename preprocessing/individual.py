"""Per-face labels: reading the per-frame individual annotations, attaching them to detected faces,
and filling the rest from a pretrained labeller.

    rows, problems = read_individual_annotations(csv_path, space)   # clip_id -> [PersonLabel]
    emotion, valence, arousal, note = assign_individual_labels(rows["70_25"], frame_index,
                                                               face_boxes, face_mask)
    emotion, probs, auto = add_automatic_labels(emotion, fer_probs, face_mask, matrix)

CSV header: clip_id,frame,x1,y1,x2,y2,emotion,valence,arousal (the schema in `gems_jax/data/spec.py`); frame
is the 0-based decoded-frame index, the box is in original frame pixels; an empty emotion,
valence or arousal cell means unlabelled (-1 / NaN).

Attaching: each sampled step takes the rows of the annotated frame nearest to it, if that frame
lies within half a sampling interval (so annotations of every decoded frame and sparse ones both
work; rows of other frames are not used). Each such row goes to the face with the highest IoU >=
`min_iou`; when two rows want one face, the higher IoU wins. Rows of a step's annotated frame
that get no face (the detector missed the person, or the box is off) are counted in the note.
Malformed or out-of-range rows are dropped with a message naming file, line and value (the build
reports them as warnings of their clip; they never stop it).

Automatic labels (build --individual_labels): every detected face without a human emotion label
gets the pretrained labeller's argmax, flagged as automatic; human labels always win.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib

import numpy as np

from preprocessing import labels as labels_lib
from preprocessing.tracking import pairwise_iou

COLUMNS = ("clip_id", "frame", "x1", "y1", "x2", "y2", "emotion", "valence", "arousal")


@dataclasses.dataclass(frozen=True)
class PersonLabel:
  frame: int
  box: tuple[float, float, float, float]
  emotion: int  # -1 = unlabelled.
  valence: float  # NaN = unlabelled.
  arousal: float


def _optional(value: str, parse, missing):
  return parse(value) if value != "" else missing


def read_individual_annotations(path: str | os.PathLike, space: labels_lib.LabelSpace
                                ) -> tuple[dict[str, list[PersonLabel]], dict[str, list[str]]]:
  """(clip_id -> labels, clip_id -> problems of dropped rows) from the per-frame CSV."""
  path = pathlib.Path(path)
  rows = labels_lib.read_csv_rows(path, COLUMNS)
  out: dict[str, list[PersonLabel]] = {}
  problems: dict[str, list[str]] = {}
  for line, row in enumerate(rows, 2):
    clip_id = row["clip_id"]
    try:
      frame = float(row["frame"])
      if not (frame.is_integer() and frame >= 0):
        raise ValueError(f"frame {row['frame']!r} is not a frame index >= 0")
      box = tuple(float(row[c]) for c in ("x1", "y1", "x2", "y2"))
      if not all(map(math.isfinite, box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box {box} needs finite x1 < x2, y1 < y2")
      label = PersonLabel(
          frame=int(frame), box=box,
          emotion=_optional(row["emotion"], lambda v: labels_lib.parse_class(
              v, "emotion", space.emotion_names), -1),
          valence=_optional(row["valence"], lambda v: labels_lib.parse_scalar(
              v, "valence", space.valence_range), math.nan),
          arousal=_optional(row["arousal"], lambda v: labels_lib.parse_scalar(
              v, "arousal", space.arousal_range), math.nan))
    except ValueError as e:
      problems.setdefault(clip_id, []).append(f"{path.name}:{line}: dropped: {e}")
      continue
    out.setdefault(clip_id, []).append(label)
  return out, problems


def assign_individual_labels(people: list[PersonLabel], frame_index: np.ndarray,
                             face_boxes: np.ndarray, face_mask: np.ndarray, min_iou: float = 0.3
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
  """individual_emotion int32 [T, K], valence/arousal float32 [T, K] and a note ('' if all fit).

  frame_index int32 [T] (-1 padded), face_boxes float32 [T, K, 4], face_mask bool [T, K].
  """
  steps, slots = face_mask.shape
  emotion = np.full((steps, slots), -1, np.int32)
  valence = np.full((steps, slots), np.nan, np.float32)
  arousal = np.full((steps, slots), np.nan, np.float32)
  real = np.flatnonzero(frame_index >= 0)
  if not people or not len(real):
    return emotion, valence, arousal, ""
  interval = float(np.median(np.diff(frame_index[real]))) if len(real) > 1 else 1.0
  frames = np.array(sorted({p.frame for p in people}))
  candidates = []  # (-iou, row, step, slot)
  considered = 0
  for step in real:
    distance = np.abs(frames - frame_index[step])
    if distance.min() > interval / 2:
      continue
    frame = frames[np.argmin(distance)]  # The nearest annotated frame (the earlier on a tie).
    rows = [row for row, person in enumerate(people) if person.frame == frame]
    considered += len(rows)
    if not face_mask[step].any():
      continue
    iou = pairwise_iou(np.array([people[row].box for row in rows], np.float32), face_boxes[step])
    iou[:, ~face_mask[step]] = -1.0
    for i, row in enumerate(rows):
      slot = int(np.argmax(iou[i]))
      if iou[i, slot] >= min_iou:
        candidates.append((-float(iou[i, slot]), row, int(step), slot))
  taken: set[tuple[int, int]] = set()
  for _, row, step, slot in sorted(candidates):
    if (step, slot) in taken:
      continue
    taken.add((step, slot))
    person = people[row]
    emotion[step, slot] = person.emotion
    valence[step, slot], arousal[step, slot] = person.valence, person.arousal
  unmatched = considered - len(taken)
  note = (f"{unmatched} of {considered} individual annotations at the sampled steps matched no "
          f"detected face (IoU >= {min_iou})" if unmatched else "")
  return emotion, valence, arousal, note


def add_automatic_labels(emotion: np.ndarray, fer_probs: np.ndarray, face_mask: np.ndarray,
                         matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A pretrained labeller's emotion for every detected face without a human emotion label.

  emotion int32 [T, K] (human labels; -1 = none), fer_probs float32 [T, K, 7] (the labeller's FER
  probabilities, extract.py's face_fer_probs), face_mask bool [T, K], matrix float32 [7, V]
  (gems_jax.data.face_labels.mapping_matrix). Returns individual_emotion int32 [T, K] (human labels
  kept), individual_emotion_probs float32 [T, K, V] (over the vocabulary, for every detected face;
  0 in empty slots) and individual_emotion_auto bool [T, K] (True where the emotion is the
  probabilities' argmax). A face with human valence/arousal but no human emotion gets an
  automatic emotion; its valence/arousal stay the human ones (FER has none).
  """
  probs = np.where(face_mask[..., None], np.asarray(fer_probs, np.float32) @ matrix, 0.0)
  auto = face_mask & (emotion < 0)
  return (np.where(auto, probs.argmax(-1), emotion).astype(np.int32), probs.astype(np.float32),
          auto)


def label_counts(emotion: np.ndarray, auto: np.ndarray | None, face_mask: np.ndarray
                 ) -> dict[str, int]:
  """Detected faces [T, K] by the source of their emotion label: human, automatic, unlabelled."""
  auto = np.zeros_like(face_mask) if auto is None else auto
  return {"human": int((face_mask & (emotion >= 0) & ~auto).sum()),
          "automatic": int((face_mask & auto).sum()),
          "unlabelled": int((face_mask & (emotion < 0)).sum())}
