"""A simple IoU tracker: stable track ids for the faces of consecutive sampled steps.

    tracker = IouTracker()
    for frame_index, boxes in steps:             # boxes float32 [N, 4] (x1, y1, x2, y2)
      ids = tracker.update(boxes, frame_index)   # int32 [N], ids count up from 0 per clip

Sampled steps lie several frames apart (a 5 s clip at T = 16: ~8 frames), so a walking person's
face moves by a good part of its own width between steps and the plain IoU of the raw boxes is
often near zero. Two cheap fixes keep it a plain greedy IoU matcher:
  * each track predicts its box at the new frame from its last velocity (constant motion);
  * IoU is taken between boxes enlarged `expand` times about their centres, which tolerates
    motion of up to about one box size while still separating neighbours.
Pairs are matched greedily by decreasing IoU (>= `iou_threshold`); unmatched detections start new
tracks; a track unmatched for more than `max_gap` steps retires, so ids are not re-used for
strangers who later appear in the same place.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU float32 [N, M] between boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2)."""
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
  area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=-1)
  area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
  union = area_a[:, None] + area_b[None, :] - inter
  return (inter / np.maximum(union, 1e-9)).astype(np.float32)


def enlarge(boxes: np.ndarray, factor: float) -> np.ndarray:
  """Boxes [N, 4] scaled by `factor` about their centres."""
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  half = (boxes[:, 2:] - boxes[:, :2]) / 2 * factor
  return np.concatenate([centre - half, centre + half], axis=-1)


@dataclasses.dataclass
class _Track:
  track_id: int
  box: np.ndarray  # [4], last matched box.
  frame: int  # Frame index of that box.
  velocity: np.ndarray  # [4], box change per frame.
  missed: int = 0  # Steps since the last match.

  def predict(self, frame: int) -> np.ndarray:
    return self.box + self.velocity * (frame - self.frame)


class IouTracker:
  """Greedy IoU matching on motion-predicted, enlarged boxes (see the module docstring)."""

  def __init__(self, iou_threshold: float = 0.3, expand: float = 2.0, max_gap: int = 2):
    self.iou_threshold, self.expand, self.max_gap = iou_threshold, expand, max_gap
    self._tracks: list[_Track] = []
    self._next_id = 0

  def update(self, boxes: np.ndarray, frame_index: int) -> np.ndarray:
    """Track ids int32 [N] for this step's boxes [N, 4] at decoded frame `frame_index`."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    ids = np.full(len(boxes), -1, np.int32)
    matched_tracks: set[int] = set()
    if self._tracks and len(boxes):
      predicted = np.stack([track.predict(frame_index) for track in self._tracks])
      iou = pairwise_iou(enlarge(predicted, self.expand), enlarge(boxes, self.expand))
      for flat in np.argsort(-iou, axis=None, kind="stable"):
        t, d = np.unravel_index(flat, iou.shape)
        if iou[t, d] < self.iou_threshold:
          break
        if t in matched_tracks or ids[d] >= 0:
          continue
        track = self._tracks[t]
        gap = max(frame_index - track.frame, 1)
        track.velocity = (boxes[d] - track.box) / gap
        track.box, track.frame, track.missed = boxes[d], frame_index, 0
        ids[d] = track.track_id
        matched_tracks.add(int(t))
    for t, track in enumerate(self._tracks):
      if t not in matched_tracks:
        track.missed += 1
    self._tracks = [track for track in self._tracks if track.missed <= self.max_gap]
    for d in np.flatnonzero(ids < 0):
      self._tracks.append(_Track(self._next_id, boxes[d], frame_index, np.zeros(4, np.float32)))
      ids[d] = self._next_id
      self._next_id += 1
    return ids
