"""Whole frames of a clip, for models that see the scene rather than faces (the privacy-compliant
audio-visual model: CLIP ViT-L/14 on 5 frames squashed to 224x224, Augusma et al. 2023).

    frames = read_whole_frames(path, num_frames=5)      # uniform sampling of preprocessing.video
    frames.images   # uint8 [5, 224, 224, 3], zeros on padded steps
    frames.jpegs    # 5 JPEG bytes, b'' on padded steps

Frames are sampled by `preprocessing.video` (`plan_sampling`, `iter_sampled_frames`): the centre
frames of T equal segments, or `sample_fps`, the same steps as the face pipeline and the audio of
`preprocessing.audio`. Resizing:
  * 'squash' (the authors'): the whole frame stretched to width x height, aspect not kept;
  * 'letterbox': scaled to fit inside width x height, aspect kept, centred on black bars.
Both use bicubic resampling (CLIP's preprocessing). A clip that cannot be decoded raises
`video.VideoError`, as for the face pipeline.
"""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from preprocessing import video

RESIZE_MODES = ("squash", "letterbox")


@dataclasses.dataclass(frozen=True)
class WholeFrames:
  """T sampled frames of one clip.

  images: uint8 [T, height, width, 3] RGB, zeros on padded steps.
  jpegs: T JPEG bytes of `images`, b'' on padded steps.
  plan: the sampling plan (frame indices, fps, source size); `plan.step_mask` marks real steps.
  """
  images: np.ndarray
  jpegs: tuple[bytes, ...]
  plan: video.SamplingPlan

  @property
  def mask(self) -> np.ndarray:
    """bool [T]: True on real steps."""
    return self.plan.step_mask


def resize_frame(image: Image.Image, width: int = 224, height: int = 224,
                 mode: str = "squash") -> Image.Image:
  """`image` resized to width x height by 'squash' or 'letterbox' (module docstring)."""
  if mode == "squash":
    return image.resize((width, height), Image.Resampling.BICUBIC)
  if mode != "letterbox":
    raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
  scale = min(width / image.width, height / image.height)
  size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
  canvas = Image.new("RGB", (width, height))
  canvas.paste(image.resize(size, Image.Resampling.BICUBIC),
               ((width - size[0]) // 2, (height - size[1]) // 2))
  return canvas


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def read_whole_frames(path: str | os.PathLike, num_frames: int = 5, width: int = 224,
                      height: int = 224, mode: str = "squash", jpeg_quality: int = 90,
                      sample_fps: float | None = None,
                      plan: video.SamplingPlan | None = None) -> WholeFrames:
  """The T = `num_frames` sampled frames of `path`, resized (see the module docstring).

  plan: an existing plan of the clip (then `num_frames` and `sample_fps` are not used), so that
  faces, whole frames and audio of one clip share one sampling.
  """
  if plan is None:
    plan = video.plan_sampling(path, num_frames, sample_fps)
  steps = len(plan.frame_index)
  images = np.zeros((steps, height, width, 3), np.uint8)
  jpegs = [b""] * steps
  for step, _, image in video.iter_sampled_frames(path, plan):
    resized = resize_frame(image, width, height, mode)
    images[step] = np.asarray(resized)
    jpegs[step] = encode_jpeg(resized, jpeg_quality)
  return WholeFrames(images, tuple(jpegs), plan)
