"""One clip -> the media part of an example: faces, whole frames, audio, from one sampling plan.

    extractor = ClipExtractor(ExtractConfig(num_frames=16), device="cpu")
    media = extractor.extract("clip.mp4")   # frame_index, step_mask, faces, face_boxes, ... (+ stats)
    record = extract_clip("clip.mp4", description, spec.extract_config)  # as the build did it

Per clip: plan the sampled frames from the packet count (`video.plan_sampling`), then
  * faces (kind 'faces'): decode the T sampled frames, run MTCNN once on a detection view of each
    (longer side <= `detect_max_side`), keep the top K faces (score >= `min_face_prob`, ranked by
    score x area), crop them from the full-resolution frame (square, `face_margin` around the box,
    `face_size` px, JPEG `jpeg_quality`) and give them track ids (`tracking.IouTracker`). Decoding
    runs in a background thread one frame ahead of detection (PyAV and PIL release the GIL);
  * whole frames (`num_whole_frames` = T_v > 0): `frames.read_whole_frames`, `whole_frame_size`,
    `whole_frame_resize`, JPEG `jpeg_quality`;
  * audio (`audio_samples` = S > 0): `audio.read_audio`, int16 mono at `audio_rate`; a clip without
    usable audio gets has_audio False and `audio_reason`;
  * automatic per-face emotions (`individual_labels` a labeller of gems_jax/data/face_labels.py,
    kind 'faces'): the pretrained FER network (preprocessing/fer.py, loaded once per
    ClipExtractor, i.e. once per build worker) on every kept crop, before JPEG: all the clip's
    faces in one pass at the end (`FerClassifier.batch_size` per network call), giving
    `face_fer_probs` float32 [T, K, 7] (FER classes; 0 in empty slots). The build maps them into
    the dataset's vocabulary at write time, where human labels win (preprocessing/individual.py).
Kind 'privacy' has no face part: no detector is made or run. The parts share the clip's plan (its
demuxed frames, fps and start time), so frame_index, whole_frame_index and audio sample
k * audio_rate / fps name the same moments; whole frames use the face plan itself when T_v = T.

A dataset's `extract_config` (in gems_meta.json, written by preprocessing.build with
`make_extract_config`) holds everything that changes the extracted data, flat and JSON-serialisable:
the `ExtractConfig` fields and the text settings (text_encoder, text_pooling, text_max_length), i.e.
the settings that name the build's two cache folders. One written before the privacy kind, whole
frames and audio existed lacks `MEDIA_KEYS` and means their defaults (faces, neither); one written
before automatic labels lacks `LABEL_KEYS` (no labeller). Run-time
knobs (device, detect batch, torch threads) never change the data and are not part of it.

CLI (used by the predict tool in a subprocess; prints nothing but errors):
    python -m preprocessing.extract --video F [--description TEXT] --extract_config CONFIG.json \
        --out F.npz [--thumb_size 480] [--device cpu --detect_batch 1 --torch_threads 1]
CONFIG.json holds a dataset's `extract_config`. Writes `extract_clip`'s record with
`gems_jax.data.npz_records.save` (read it with `npz_records.load`, numpy only): the contract example
without labels (the keys of the dataset's kind, whole frames and audio), plus `audio_reason` with
audio, and for kind 'faces' `frame_jpegs` [T] (each sampled frame, longer side <= --thumb_size, b''
when padded) and `frame_size` int32 [2] (original width, height, upright) for a contact sheet: scale
the boxes by thumb_width / width; with a labeller (the config's `individual_labels`, which the
predict tool sets for --face_emotions pretrained) also `face_fer_probs` [T, K, 7]. An unreadable
video or a bad CONFIG.json exits with status 2 and the reason as the last line of stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pathlib
import queue
import sys
import threading
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image

from gems_jax.data import face_labels, npz_records
from gems_jax.data import spec as spec_lib
from preprocessing import audio as audio_lib, faces as faces_lib, fer, frames as frames_lib, labels
from preprocessing import text as text_lib, video
from preprocessing.tracking import IouTracker


# ExtractConfig fields added with the privacy kind, whole frames and audio: an extract_config
# without them means their defaults, a faces extraction with neither (datasets built before).
MEDIA_KEYS = ("kind", "num_whole_frames", "whole_frame_size", "whole_frame_resize",
              "audio_samples", "audio_rate")
# Added with automatic per-face labels: absent means 'none' (datasets built before).
LABEL_KEYS = ("individual_labels",)


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
  """Everything that changes the extracted clip (its hash names the build's per-clip cache)."""
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
  kind: str = "faces"  # 'faces', or 'privacy': no detector, no face field (spec.KINDS).
  num_whole_frames: int = 0  # T_v whole frames; 0: none.
  whole_frame_size: tuple[int, int] = (224, 224)  # (H, W) of a whole frame.
  whole_frame_resize: str = "squash"  # 'squash' (the authors') or 'letterbox' (frames.py).
  audio_samples: int = 0  # S int16 mono samples from the first frame; 0: no audio.
  audio_rate: int = audio_lib.SAMPLE_RATE  # Hz.
  # 'none', or the face_labels.LABELLERS key whose network labels every kept face (face_fer_probs).
  individual_labels: str = face_labels.NONE

  def __post_init__(self):
    object.__setattr__(self, "mtcnn_thresholds", tuple(float(t) for t in self.mtcnn_thresholds))
    object.__setattr__(self, "whole_frame_size", tuple(int(v) for v in self.whole_frame_size))
    checks = {"num_frames": self.num_frames >= 1, "max_faces": self.max_faces >= 1,
              "face_size": self.face_size >= 8, "face_margin": self.face_margin >= 0,
              "jpeg_quality": 1 <= self.jpeg_quality <= 100,
              "detect_max_side": self.detect_max_side >= 32,
              "min_face_prob": 0 <= self.min_face_prob <= 1,
              "sample_fps": self.sample_fps is None or self.sample_fps > 0,
              "kind": self.kind in spec_lib.KINDS,
              "num_whole_frames": self.num_whole_frames >= 0,
              "whole_frame_size": len(self.whole_frame_size) == 2 and min(
                  self.whole_frame_size) >= 1,
              "whole_frame_resize": self.whole_frame_resize in frames_lib.RESIZE_MODES,
              "audio_samples": self.audio_samples >= 0, "audio_rate": self.audio_rate >= 1,
              "individual_labels": self.individual_labels in face_labels.CHOICES}
    bad = ", ".join(f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok)
    if bad:
      raise ValueError(f"ExtractConfig: invalid {bad}")
    if self.kind == "privacy" and not (self.num_whole_frames or self.audio_samples):
      raise ValueError("ExtractConfig: kind 'privacy' keeps no face, so it needs whole frames or "
                       "audio (num_whole_frames or audio_samples > 0)")
    if self.kind == "privacy" and self.individual_labels != face_labels.NONE:
      raise ValueError("ExtractConfig: kind 'privacy' keeps no face, so it takes no automatic "
                       f"per-face labeller (individual_labels={self.individual_labels!r})")

  def cache_key(self) -> dict[str, Any]:
    """The settings that name a build's media cache: every field, `individual_labels` only when
    a labeller runs (so caches made before it existed, without face_fer_probs, stay valid)."""
    settings = dataclasses.asdict(self)
    if self.individual_labels == face_labels.NONE:
      del settings["individual_labels"]
    return settings


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
  """Holds the detector (kind 'faces' only); `extract` turns one clip into the media part of an
  example.

  With a labeller (`config.individual_labels`) it also holds that FER network. Run-time knobs
  that never change the data: device (torch device of MTCNN and FER), decode_threads
  (FFmpeg decoder threads, 0 = FFmpeg's choice), prefetch (decode in a background thread),
  detect_batch (frames per MTCNN call).
  """

  def __init__(self, config: ExtractConfig, device: str = "cpu", *, decode_threads: int = 0,
               prefetch: bool = True, detect_batch: int = 1):
    self.config, self.decode_threads, self.prefetch = config, decode_threads, prefetch
    self.detect_batch = detect_batch
    self.detector = (faces_lib.FaceDetector(config.min_face_size, config.mtcnn_thresholds, device)
                     if config.kind == "faces" else None)
    labeller = face_labels.LABELLERS.get(config.individual_labels)
    self.labeller = fer.FerClassifier(labeller.model, device=device) if labeller else None

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
    """The media arrays of the clip at `path` (raises video.VideoError for a bad video).

    Kind 'faces': frame_index, step_mask, faces, face_boxes, face_scores, face_track, face_mask
    (shapes as in the contract), num_faces, steps_with_faces, with a labeller face_fer_probs
    float32 [T, K, 7], and with thumb_size > 0 also
    frame_jpegs and frame_size (see the module docstring). With whole frames: whole_frames,
    whole_frame_index, whole_frame_mask; with audio: audio, audio_length, has_audio, audio_reason.
    """
    c = self.config
    faces = c.kind == "faces"
    # The clip's plan; with audio only, one step: its timeline, and a check that the video reads.
    plan = video.plan_sampling(path, c.num_frames if faces else c.num_whole_frames or 1,
                               c.sample_fps)
    out = self._faces(path, plan, thumb_size) if faces else {}
    if c.num_whole_frames:
      out.update(whole_frame_fields(path, plan, c))
    if c.audio_samples:
      out.update(audio_fields(path, plan, c))
    return out

  def _faces(self, path: str | pathlib.Path, plan: video.SamplingPlan,
             thumb_size: int) -> dict[str, Any]:
    """The face arrays of `extract` (kind 'faces')."""
    c = self.config
    t, k = c.num_frames, c.max_faces
    out: dict[str, Any] = {
        "frame_index": plan.frame_index.astype(np.int32), "step_mask": plan.step_mask,
        "faces": np.full((t, k), b"", dtype=object),
        "face_boxes": np.zeros((t, k, 4), np.float32), "face_scores": np.zeros((t, k), np.float32),
        "face_track": np.full((t, k), -1, np.int32), "face_mask": np.zeros((t, k), bool)}
    if thumb_size:
      out["frame_jpegs"] = np.full(t, b"", dtype=object)
    fer_inputs, fer_slots = [], []  # [n, 1, 64, 64] per step with faces; their (step, slot).
    tracker = IouTracker(c.track_iou, c.track_expand, c.track_max_gap)
    frames = (_prefetched(lambda: self._frames(path, plan), depth=2) if self.prefetch
              else self._frames(path, plan))
    for (step, index, image, small, scale), (boxes, scores) in self._detect(frames):
      boxes = faces_lib.clip_boxes(boxes / scale, *image.size)
      keep = faces_lib.select_faces(boxes, scores, k, c.min_face_prob)
      n = len(keep)
      crops = faces_lib.crop_images(image, boxes[keep], c.face_size, c.face_margin)
      out["faces"][step, :n] = faces_lib.encode_jpegs(crops, c.jpeg_quality)
      if self.labeller is not None and n:  # Grey 64 x 64 now; the network runs once at the end.
        fer_inputs.append(fer.to_model_input(np.stack([np.asarray(crop) for crop in crops])))
        fer_slots += [(step, slot) for slot in range(n)]
      out["face_boxes"][step, :n] = boxes[keep]
      out["face_scores"][step, :n] = scores[keep]
      out["face_track"][step, :n] = tracker.update(boxes[keep], index)
      out["face_mask"][step, :n] = True
      if thumb_size:
        out["frame_jpegs"][step] = _thumbnail(small, thumb_size)
        out["frame_size"] = np.array(image.size, np.int32)  # Upright, as the boxes.
    if self.labeller is not None:
      out["face_fer_probs"] = np.zeros((t, k, len(face_labels.FER_CLASSES)), np.float32)
      if fer_slots:
        out["face_fer_probs"][tuple(np.array(fer_slots).T)] = self.labeller.forward(
            torch.cat(fer_inputs))
    out["num_faces"] = int(out["face_mask"].sum())
    out["steps_with_faces"] = int(out["face_mask"].any(axis=1).sum())
    return out


def whole_frame_fields(path: str | pathlib.Path, plan: video.SamplingPlan,
                       config: ExtractConfig) -> dict[str, Any]:
  """whole_frames [T_v] JPEG bytes, whole_frame_index, whole_frame_mask of the clip at `path`.

  `plan` is the clip's plan; when it has another number of steps than T_v, the whole frames get
  a plan of T_v steps by the same rule over the same frames.
  """
  if len(plan.frame_index) != config.num_whole_frames:
    plan = video.plan_sampling(path, config.num_whole_frames, config.sample_fps)
  height, width = config.whole_frame_size
  frames = frames_lib.read_whole_frames(path, width=width, height=height,
                                        mode=config.whole_frame_resize,
                                        jpeg_quality=config.jpeg_quality, plan=plan)
  jpegs = np.empty(len(frames.jpegs), dtype=object)
  jpegs[:] = frames.jpegs
  return {"whole_frames": jpegs, "whole_frame_index": plan.frame_index.astype(np.int32),
          "whole_frame_mask": plan.step_mask}


def audio_fields(path: str | pathlib.Path, plan: video.SamplingPlan,
                 config: ExtractConfig) -> dict[str, Any]:
  """audio int16 [S], audio_length, has_audio and audio_reason ('' or why there is no audio)."""
  clip = audio_lib.read_audio(path, plan, sample_rate=config.audio_rate,
                              num_samples=config.audio_samples)
  return {"audio": clip.waveform, "audio_length": np.int32(clip.length),
          "has_audio": np.bool_(clip.has_audio), "audio_reason": clip.reason}


def _thumbnail(image: Image.Image, max_side: int) -> bytes:
  thumb = image.copy()
  thumb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
  buffer = io.BytesIO()
  thumb.save(buffer, format="JPEG", quality=85)
  return buffer.getvalue()


def make_extract_config(config: ExtractConfig, text: text_lib.TextSettings) -> dict[str, Any]:
  """The JSON-serialisable `extract_config` of a build (see the module docstring)."""
  return {**dataclasses.asdict(config),
          **{f"text_{key}": value for key, value in text.cache_key().items()}}


def parse_extract_config(extract_config: Mapping[str, Any]
                         ) -> tuple[ExtractConfig, text_lib.TextSettings]:
  """The extraction and text settings of an `extract_config`.

  Raises ValueError naming every key it lacks or does not know, so that a clip is never extracted
  with settings other than the build's. The only defaults are those of `MEDIA_KEYS`, which an
  extract_config written before they existed lacks (a faces extraction without whole frames or
  audio).
  """
  if not extract_config:
    raise ValueError("extract_config is empty: the dataset does not record how its clips were "
                     "extracted (imported with --from_features, or built before gems_meta.json "
                     "held extract_config); rebuild it with preprocessing.build")
  config_keys = {f.name for f in dataclasses.fields(ExtractConfig)}
  text_keys = {f"text_{key}" for key in text_lib.TextSettings().cache_key()}
  unknown = sorted(set(extract_config) - config_keys - text_keys)
  missing = sorted((config_keys - set(MEDIA_KEYS) - set(LABEL_KEYS) | text_keys)
                   - set(extract_config))
  if unknown or missing:
    raise ValueError(f"extract_config: unknown keys {unknown}, missing keys {missing}")
  try:
    config = ExtractConfig(**{key: extract_config[key] for key in config_keys
                              if key in extract_config})
    text = text_lib.TextSettings(**{key[len("text_"):]: extract_config[key] for key in text_keys})
  except TypeError as e:  # A value of the wrong type, e.g. a string for num_frames.
    raise ValueError(f"extract_config: {e}") from e
  return config, text


def extract_clip(video_path: str | os.PathLike, description: str,
                 extract_config: Mapping[str, Any], thumb_size: int = 480, *,
                 device: str = "cpu", detect_batch: int = 1) -> dict[str, Any]:
  """The record of one clip, extracted as the build that wrote `extract_config` extracted its own.

  Returns the contract example without labels plus `audio_reason`, `frame_jpegs` and `frame_size`
  as the module docstring says. Raises video.VideoError for an unreadable video and ValueError for a bad
  `extract_config` or a text encoder that does not load.
  """
  config, text = parse_extract_config(extract_config)
  path = pathlib.Path(video_path)
  record = ClipExtractor(config, device, detect_batch=detect_batch).extract(path, thumb_size)
  for statistic in ("num_faces", "steps_with_faces"):  # Build-report statistics (kind 'faces').
    record.pop(statistic, None)
  parts = text_lib.split_description(description)
  if description.strip():
    encoder = text_lib.TextEncoder(text.encoder, text.pooling, text.max_length, text.batch_size,
                                   device)
    embedding, mask = (a[0] for a in encoder.encode_parts([parts]))
  else:
    dim = text_lib.encoder_dim(text.encoder)
    embedding, mask = np.zeros((len(parts), dim), np.float32), np.zeros(len(parts), bool)
  record.update(clip_id=path.stem, source_video=labels.source_video(path.stem),
                description=description, text_embedding=embedding, text_mask=mask)
  return record


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
  """Flags that never change the extracted data, shared by this CLI and preprocessing.build."""
  g = parser.add_argument_group("run time (never changes the data)")
  g.add_argument("--device", default="cpu", help="torch device for MTCNN and the text encoder")
  g.add_argument("--detect_batch", type=int, default=1,
                 help="frames per MTCNN call: 1 is fastest on a CPU (BENCHMARKS.md); on a GPU "
                      "use T")
  g.add_argument("--torch_threads", type=int, default=1,
                 help="torch threads per extracting process: MTCNN gains little from more, and a "
                      "free core lets video decoding overlap detection")


def _read_json_object(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"--extract_config {path}: {e}") from e
  if not isinstance(value, dict):
    raise ValueError(f"--extract_config {path}: expected a JSON object, got {type(value).__name__}")
  return value


def main(argv: list[str] | None = None) -> int:
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--video", required=True)
  parser.add_argument("--description", default="", help="the clip's scene description")
  parser.add_argument("--extract_config", required=True,
                      help="JSON file holding a dataset's extract_config (gems_meta.json)")
  parser.add_argument("--out", required=True, help="output .npz")
  parser.add_argument("--thumb_size", type=int, default=480,
                      help="longer side of the sampled-frame JPEGs in the output")
  add_runtime_flags(parser)
  args = parser.parse_args(argv)
  torch.set_num_threads(args.torch_threads)
  try:
    record = extract_clip(args.video, args.description, _read_json_object(args.extract_config),
                          args.thumb_size, device=args.device, detect_batch=args.detect_batch)
  except (ValueError, video.VideoError) as e:  # One line: the caller shows the last one.
    print(f"error: {e}", file=sys.stderr)
    return 2
  npz_records.save(args.out, record)
  return 0


if __name__ == "__main__":
  sys.exit(main())
