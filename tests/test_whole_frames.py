"""preprocessing.frames: T uniformly sampled whole frames, squashed or letterboxed, as arrays and
JPEG bytes. Clips from tests/av_media.py: frame k is a flat grey of level frame_level(k)."""
import io

import numpy as np
import pytest
from av_media import frame_level, write_clip
from PIL import Image

from preprocessing import frames, video


@pytest.mark.parametrize("name, codec", [("clip.mp4", "libx264"), ("clip.mov", "libx265")])
def test_sampled_frames_are_the_uniform_ones(tmp_path, name, codec):
  path = tmp_path / name
  write_clip(path, video_codec=codec, num_frames=20)
  out = frames.read_whole_frames(path, num_frames=5)
  np.testing.assert_array_equal(out.plan.frame_index, [2, 6, 10, 14, 18])
  assert out.images.shape == (5, 224, 224, 3) and out.images.dtype == np.uint8
  assert out.mask.all()
  for step, index in enumerate(out.plan.frame_index):
    assert np.abs(out.images[step].astype(int) - frame_level(index)).max() <= 3
    decoded = np.asarray(Image.open(io.BytesIO(out.jpegs[step])))
    assert decoded.shape == (224, 224, 3)
    assert np.abs(decoded.astype(int) - out.images[step]).max() <= 3


def test_letterbox_keeps_the_aspect_and_squash_fills(tmp_path):
  path = tmp_path / "clip.mp4"
  write_clip(path, width=64, height=32)  # 2:1 -> 224 x 112 inside 224 x 224, 56-px bars.
  squashed = frames.read_whole_frames(path, num_frames=1, mode="squash")
  boxed = frames.read_whole_frames(path, num_frames=1, mode="letterbox")
  level = frame_level(int(squashed.plan.frame_index[0]))
  assert np.abs(squashed.images[0].astype(int) - level).max() <= 3
  image = boxed.images[0].astype(int)
  assert not image[:55].any() and not image[-55:].any()
  assert np.abs(image[58:-58] - level).max() <= 3


def test_resize_frame_sizes_and_modes():
  image = Image.fromarray(np.full((50, 100, 3), 200, np.uint8))
  assert frames.resize_frame(image, 160, 90).size == (160, 90)
  boxed = np.asarray(frames.resize_frame(image, 80, 80, "letterbox"))  # 80 x 40 at rows 20-59.
  rows = np.arange(80)
  np.testing.assert_array_equal(boxed[:, :, 0].max(axis=1) > 0, (rows >= 20) & (rows < 60))
  with pytest.raises(ValueError, match="mode"):
    frames.resize_frame(image, mode="crop")


def test_short_clip_pads_steps(tmp_path):
  path = tmp_path / "short.mp4"
  write_clip(path, num_frames=3)
  out = frames.read_whole_frames(path, num_frames=5, width=32, height=48)
  np.testing.assert_array_equal(out.mask, [True, True, True, False, False])
  assert out.images.shape == (5, 48, 32, 3) and not out.images[3:].any()
  assert out.jpegs[3:] == (b"", b"") and all(out.jpegs[:3])


def test_shares_the_plan_of_the_clip(tmp_path):
  path = tmp_path / "clip.mp4"
  write_clip(path, num_frames=20)
  plan = video.plan_sampling(path, num_frames=4, sample_fps=2.0)  # frames 0, 5, 10, 15
  out = frames.read_whole_frames(path, plan=plan)
  assert out.plan is plan
  for step, index in enumerate([0, 5, 10, 15]):
    assert np.abs(out.images[step].astype(int) - frame_level(index)).max() <= 3


def test_real_clip(real_clip):
  out = frames.read_whole_frames(real_clip)
  assert out.images.shape == (5, 224, 224, 3) and out.mask.all()
  assert out.images.std() > 20  # A real scene, not a flat frame.
  assert all(j[:2] == b"\xff\xd8" for j in out.jpegs)
