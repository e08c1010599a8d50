"""One clip -> sampled steps, K face crops per step, boxes, scores and track ids.

    extractor = ClipExtractor(ExtractConfig(num_frames=16), device="cpu")
    faces = extractor.extract("clip.mp4")       # dict: frame_index, step_mask, faces, face_boxes,
                                                # face_scores, face_track, face_mask (+ stats)

Per clip: plan the T sampled frames from the packet count, decode with PyAV, and for each sampled
frame make a detection view (longer side <= `detect_max_side`), run MTCNN once on it, keep the top
K faces (score >= `min_face_prob`, ranked by score x area), crop them from the full-resolution
frame (square, `face_margin` around the box, `face_size` px, JPEG `jpeg_quality`), and give them
track ids (`tracking.IouTracker`). Decoding and resizing run in a background thread one frame
ahead of detection (PyAV and PIL release the GIL), which hides most of the decoding cost.

CLI (used by the predict tool in a subprocess; prints nothing but errors):
    python -m preprocessing.extract --video F [--description TEXT] --out F.npz
           [--num_frames 16 ...same extraction and text flags as preprocessing.build]
writes, with `preprocessing.cache.save` (read it back with `preprocessing.cache.load`, numpy only):
the contract example without any label (clip_id, source_video, description, frame_index,
step_mask, faces, face_boxes, face_scores, face_track, face_mask, text_embedding, text_mask), plus
`frame_jpegs` [T] (JPEG of each sampled frame, longer side <= --thumb_size, b'' for padded steps)
and `frame_size` int32 [2] (original width, height, upright) for drawing a contact sheet: scale
the boxes by thumb_width / width.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pathlib
import queue
import sys
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from preprocessing import cache, faces as faces_lib, labels, video
from preprocessing.tracking import IouTracker


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
  """Everything that changes the extracted data (its hash names the cache folder)."""
  num_frames: int = 16  # T.
  sample_fps: float | None = None  # None: uniform over the clip; e.g. 1.0: the authors' 1 frame/s.
  max_faces: int = 8  # K.
  face_size: int = 224  # S.
  face_margin: float = 0.2  # Crop side = (1 + margin) x the longer box side.
  jpeg_quality: int = 90
  detect_max_side: int = 960  # Detection runs on a view whose longer side is at most this.
  min_face_size: int = 20  # MTCNN's smallest face, in detection-view pixels.
  mtcnn_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
  min_face_prob: float = 0.9
  track_iou: float = 0.3
  track_expand: float = 2.0
  track_max_gap: int = 2

  def __post_init__(self):
    object.__setattr__(self, "mtcnn_thresholds", tuple(float(t) for t in self.mtcnn_thresholds))
    checks = {"num_frames": self.num_frames >= 1, "max_faces": self.max_faces >= 1,
              "face_size": self.face_size >= 8, "face_margin": self.face_margin >= 0,
              "jpeg_quality": 1 <= self.jpeg_quality <= 100,
              "detect_max_side": self.detect_max_side >= 32,
              "min_face_prob": 0 <= self.min_face_prob <= 1,
              "sample_fps": self.sample_fps is None or self.sample_fps > 0}
    bad = ", ".join(f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok)
    if bad:
      raise ValueError(f"ExtractConfig: invalid {bad}")


def _prefetched(make_iterator: Callable[[], Iterator[Any]], depth: int) -> Iterator[Any]:
  """Runs `make_iterator()` in a thread, `depth` items ahead; re-raises its errors here."""
  items: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in make_iterator():
        if not put(item):
          return
      put(done)
    except BaseException as e:  # Handed to the consumer, which re-raises it.
      put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while (item := items.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join()


class ClipExtractor:
  """Holds the detector; `extract` turns one clip into the face part of an example.

  Run-time knobs that never change the data: device (torch device of MTCNN), decode_threads
  (FFmpeg decoder threads, 0 = FFmpeg's choice), prefetch (decode in a background thread),
  detect_batch (frames per MTCNN call).
  """

  def __init__(self, config: ExtractConfig, device: str = "cpu", *, decode_threads: int = 0,
               prefetch: bool = True, detect_batch: int = 1):
    self.config, self.decode_threads, self.prefetch = config, decode_threads, prefetch
    self.detect_batch = detect_batch
    self.detector = faces_lib.FaceDetector(config.min_face_size, config.mtcnn_thresholds, device)

  def _frames(self, path, plan) -> Iterator[tuple[int, int, Image.Image, Image.Image, float]]:
    for step, index, image in video.iter_sampled_frames(path, plan, self.decode_threads):
      small, scale = video.detection_view(image, self.config.detect_max_side)
      yield step, index, image, small, scale

  def _detect(self, frames: Iterator[tuple]) -> Iterator[tuple[tuple, tuple]]:
    """(frame, detections) pairs; `detect_batch` detection views per MTCNN call."""
    chunk = []
    for frame in frames:
      chunk.append(frame)
      if len(chunk) == self.detect_batch:
        yield from zip(chunk, self.detector.detect_many([f[3] for f in chunk]))
        chunk = []
    if chunk:
      yield from zip(chunk, self.detector.detect_many([f[3] for f in chunk]))

  def extract(self, path: str | pathlib.Path, thumb_size: int = 0) -> dict[str, Any]:
    """The face arrays of the clip at `path` (raises video.VideoError for a bad file).

    Returns frame_index, step_mask, faces, face_boxes, face_scores, face_track, face_mask (shapes
    as in the contract), num_faces, steps_with_faces, and with thumb_size > 0 also frame_jpegs
    and frame_size (see the module docstring).
    """
    c = self.config
    t, k = c.num_frames, c.max_faces
    plan = video.plan_sampling(path, t, c.sample_fps)
    out: dict[str, Any] = {
        "frame_index": plan.frame_index.astype(np.int32), "step_mask": plan.step_mask,
        "faces": np.full((t, k), b"", dtype=object),
        "face_boxes": np.zeros((t, k, 4), np.float32), "face_scores": np.zeros((t, k), np.float32),
        "face_track": np.full((t, k), -1, np.int32), "face_mask": np.zeros((t, k), bool)}
    if thumb_size:
      out["frame_jpegs"] = np.full(t, b"", dtype=object)
    tracker = IouTracker(c.track_iou, c.track_expand, c.track_max_gap)
    frames = (_prefetched(lambda: self._frames(path, plan), depth=2) if self.prefetch
              else self._frames(path, plan))
    for (step, index, image, small, scale), (boxes, scores) in self._detect(frames):
      boxes = faces_lib.clip_boxes(boxes / scale, *image.size)
      keep = faces_lib.select_faces(boxes, scores, k, c.min_face_prob)
      n = len(keep)
      out["faces"][step, :n] = faces_lib.crop_faces(image, boxes[keep], c.face_size,
                                                    c.face_margin, c.jpeg_quality)
      out["face_boxes"][step, :n] = boxes[keep]
      out["face_scores"][step, :n] = scores[keep]
      out["face_track"][step, :n] = tracker.update(boxes[keep], index)
      out["face_mask"][step, :n] = True
      if thumb_size:
        out["frame_jpegs"][step] = _thumbnail(small, thumb_size)
        out["frame_size"] = np.array(image.size, np.int32)  # Upright, as the boxes.
    out["num_faces"] = int(out["face_mask"].sum())
    out["steps_with_faces"] = int(out["face_mask"].any(axis=1).sum())
    return out


def _thumbnail(image: Image.Image, max_side: int) -> bytes:
  thumb = image.copy()
  thumb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
  buffer = io.BytesIO()
  thumb.save(buffer, format="JPEG", quality=85)
  return buffer.getvalue()


def add_extract_flags(parser: argparse.ArgumentParser) -> None:
  """The extraction flags shared by this CLI and preprocessing.build."""
  d = ExtractConfig()
  g = parser.add_argument_group("faces")
  g.add_argument("--num_frames", type=int, default=None,
                 help=f"T sampled steps per clip (default {d.num_frames}; with --from_features: "
                      f"the most steps of any clip)")
  g.add_argument("--fps", type=float, default=None,
                 help="sample at this rate (the authors: 1) and pad/truncate to T, instead of "
                      "T uniform steps")
  g.add_argument("--max_faces", type=int, default=d.max_faces, help="K face slots per step")
  g.add_argument("--face_size", type=int, default=d.face_size, help="S, crop side in pixels")
  g.add_argument("--face_margin", type=float, default=d.face_margin)
  g.add_argument("--jpeg_quality", type=int, default=d.jpeg_quality)
  g.add_argument("--detect_max_side", type=int, default=d.detect_max_side,
                 help="detect on a view with this longer side (crops stay full resolution)")
  g.add_argument("--min_face_size", type=int, default=d.min_face_size)
  g.add_argument("--min_face_prob", type=float, default=d.min_face_prob)
  g.add_argument("--device", default="cpu", help="torch device for MTCNN and the text encoder")
  g.add_argument("--detect_batch", type=int, default=1,
                 help="frames per MTCNN call: 1 is fastest on a CPU (BENCHMARKS.md); on a GPU "
                      "use T")
  g.add_argument("--torch_threads", type=int, default=1,
                 help="torch threads per extracting process: MTCNN gains little from more, and a "
                      "free core lets video decoding overlap detection")
  t = parser.add_argument_group("text")
  t.add_argument("--text_encoder", default="roberta-base",
                 help="local Hugging Face folder, 'pkg:<module>' or a hub id")
  t.add_argument("--text_pooling", choices=("mean", "cls"), default="mean")
  t.add_argument("--text_max_length", type=int, default=128)
  t.add_argument("--text_batch_size", type=int, default=32)


def config_from_flags(args: argparse.Namespace) -> ExtractConfig:
  return ExtractConfig(num_frames=args.num_frames or ExtractConfig.num_frames,
                       sample_fps=args.fps, max_faces=args.max_faces, face_size=args.face_size,
                       face_margin=args.face_margin, jpeg_quality=args.jpeg_quality,
                       detect_max_side=args.detect_max_side, min_face_size=args.min_face_size,
                       min_face_prob=args.min_face_prob)


def main(argv: list[str] | None = None) -> int:
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  from preprocessing import text as text_lib  # transformers: only where text is encoded.
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--video", required=True)
  parser.add_argument("--description", default="", help="the clip's scene description")
  parser.add_argument("--out", required=True, help="output .npz")
  parser.add_argument("--thumb_size", type=int, default=480,
                      help="longer side of the sampled-frame JPEGs in the output")
  add_extract_flags(parser)
  args = parser.parse_args(argv)
  path = pathlib.Path(args.video)
  torch.set_num_threads(args.torch_threads)
  try:
    extractor = ClipExtractor(config_from_flags(args), args.device, detect_batch=args.detect_batch)
    record = extractor.extract(path, args.thumb_size)
  except video.VideoError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  parts = text_lib.split_description(args.description)
  if args.description.strip():
    encoder = text_lib.TextEncoder(args.text_encoder, args.text_pooling, args.text_max_length,
                                   args.text_batch_size, args.device)
    embedding, mask = (a[0] for a in encoder.encode_parts([parts]))
  else:
    dim = text_lib.encoder_dim(args.text_encoder)
    embedding, mask = np.zeros((len(parts), dim), np.float32), np.zeros(len(parts), bool)
  record.update(clip_id=path.stem, source_video=labels.source_video(path.stem),
                description=args.description, text_embedding=embedding, text_mask=mask)
  cache.save(args.out, record)
  return 0


if __name__ == "__main__":
  sys.exit(main())
