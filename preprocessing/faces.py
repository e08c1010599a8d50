"""Face detection (facenet-pytorch MTCNN), top-K selection and square JPEG crops.

    detector = FaceDetector(min_face_size=20, device="cpu")
    boxes, scores = detector.detect(small_image)             # [N, 4] in small-image pixels, [N]
    keep = select_faces(boxes, scores, max_faces=8, min_score=0.9)
    jpegs = crop_faces(full_image, boxes[keep] / scale, size=224, margin=0.2, quality=90)

MTCNN's weights ship inside the facenet-pytorch wheel, so nothing downloads. Detection runs one
frame per call: on CPU that is faster than MTCNN's batched mode (measured in BENCHMARKS.md), and on a
GPU the per-frame cost is small anyway. Crops come from the full-resolution frame, so a face
detected on a 960-px view keeps all its pixels.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image


class FaceDetector:
  """MTCNN with the bundled weights; `detect` returns float32 boxes (x1, y1, x2, y2) and scores.

  min_face_size is in pixels of the image passed to `detect` (MTCNN's smallest pyramid scale);
  thresholds are MTCNN's three stage thresholds (P-, R-, O-net).
  """

  def __init__(self, min_face_size: int = 20,
               thresholds: Sequence[float] = (0.6, 0.7, 0.7), device: str = "cpu"):
    self.device = torch.device(device)
    self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds),
                        select_largest=False, device=self.device).eval()

  def detect(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faces in one RGB image: boxes float32 [N, 4] and scores float32 [N] (N may be 0)."""
    return _as_arrays(*self._mtcnn.detect(image))

  def detect_many(self, images: Sequence[Image.Image]) -> list[tuple[np.ndarray, np.ndarray]]:
    """`detect` for several same-size images in one batched MTCNN call (pays off on a GPU)."""
    if len(images) == 1:
      return [self.detect(images[0])]
    boxes, scores = self._mtcnn.detect(list(images))
    return [_as_arrays(b, s) for b, s in zip(boxes, scores)]


def _as_arrays(boxes, scores) -> tuple[np.ndarray, np.ndarray]:
  if boxes is None:  # facenet-pytorch gives None (not an empty array) for no face.
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
  return (np.asarray(boxes, np.float32).reshape(-1, 4),
          np.asarray(scores, np.float32).reshape(-1))


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
  """Boxes [N, 4] clipped to the frame [0, width] x [0, height] (MTCNN can overshoot edges)."""
  limits = np.array([width, height, width, height], np.float32)
  return np.clip(boxes, 0.0, limits).astype(np.float32)


def select_faces(boxes: np.ndarray, scores: np.ndarray, max_faces: int,
                 min_score: float) -> np.ndarray:
  """Indices of the kept faces: score >= min_score and non-empty box, best `max_faces` first.

  Faces rank by score x box area (the "expected face area"): among confident detections the big,
  near faces win, which are the people a group-emotion model can read.
  """
  widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  ok = np.flatnonzero((scores >= min_score) & (widths >= 1) & (heights >= 1))
  rank = scores[ok] * widths[ok] * heights[ok]
  return ok[np.argsort(-rank, kind="stable")[:max_faces]]


def square_crop_box(box: np.ndarray, margin: float) -> tuple[int, int, int, int]:
  """The square (x1, y1, x2, y2) around `box`: side = longer box side x (1 + margin), centred.

  It may extend beyond the frame; `crop_faces` fills that part with black.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  side = max(x2 - x1, y2 - y1) * (1.0 + margin)
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  left, top = round(cx - side / 2), round(cy - side / 2)
  side = max(1, round(side))
  return left, top, left + side, top + side


def crop_images(image: Image.Image, boxes: np.ndarray, size: int, margin: float
                ) -> list[Image.Image]:
  """One square RGB crop of `size` x `size` per box [N, 4] (boxes in `image` pixels)."""
  out = []
  for box in boxes:
    crop = image.crop(square_crop_box(box, margin))
    out.append(crop.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
  return out


def encode_jpegs(images: Sequence[Image.Image], quality: int) -> list[bytes]:
  """JPEG bytes of each image."""
  out = []
  for image in images:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    out.append(buffer.getvalue())
  return out


def crop_faces(image: Image.Image, boxes: np.ndarray, size: int, margin: float,
               quality: int) -> list[bytes]:
  """JPEG bytes of one square RGB crop of `size` x `size` per box (boxes in `image` pixels)."""
  return encode_jpegs(crop_images(image, boxes, size, margin), quality)
