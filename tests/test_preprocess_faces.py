"""Decoding, sampling, MTCNN faces, crops and tracks on the real clip and on damaged copies."""
import dataclasses
import io
import json

import av
import numpy as np
import pytest
from PIL import Image

from gems_jax.data import npz_records
from preprocessing import extract, faces, text, tracking, video

T = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def extracted(real_clip):
  extractor = extract.ClipExtractor(extract.ExtractConfig(num_frames=T, detect_max_side=960))
  return extractor, extractor.extract(real_clip, thumb_size=320)


def _remux_faststart(src, dst):
  """A copy with the index (moov) first, so that a truncated copy still opens."""
  with av.open(str(src)) as source, av.open(str(dst), "w",
                                            options={"movflags": "faststart"}) as out:
    stream = out.add_stream_from_template(source.streams.video[0])
    for packet in source.demux(source.streams.video[0]):
      if packet.dts is not None:
        packet.stream = stream
        out.mux(packet)


@pytest.fixture(scope="module")
def damaged(real_clip, tmp_path_factory):
  folder = tmp_path_factory.mktemp("damaged")
  data = real_clip.read_bytes()
  files = {"half": data[:len(data) // 2], "empty": b"",
           "random": np.random.default_rng(0).bytes(200_000), "text": b"not a video\n" * 50}
  for name, content in files.items():
    (folder / f"{name}.mp4").write_bytes(content)
  _remux_faststart(real_clip, folder / "fast.mp4")
  fast = (folder / "fast.mp4").read_bytes()
  (folder / "fast_half.mp4").write_bytes(fast[:len(fast) // 2])
  return folder


def test_plan_sampling_real_clip(real_clip):
  plan = video.plan_sampling(real_clip, T)
  assert (plan.num_decodable, plan.fps, plan.width, plan.height) == (105, 25.0, 1920, 1080)
  assert plan.frame_index.dtype == np.int32 and plan.step_mask.all()
  assert np.all(np.diff(plan.frame_index) > 0) and plan.frame_index.max() < 105
  one_per_second = video.plan_sampling(real_clip, T, sample_fps=1.0)
  np.testing.assert_array_equal(one_per_second.frame_index, [0, 25, 50, 75, 100, -1, -1, -1])


def test_skipping_unsampled_frames_leaves_sampled_frames_bit_identical(real_clip):
  plan = video.plan_sampling(real_clip, T)
  skipping = list(video.iter_sampled_frames(real_clip, plan, skip_unsampled=True))
  counting = list(video.iter_sampled_frames(real_clip, plan, skip_unsampled=False))
  assert [s for s, _, _ in skipping] == list(range(T))
  for (step, index, image), (step2, index2, image2) in zip(skipping, counting, strict=True):
    assert (step, index) == (step2, index2)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(image2))


@pytest.mark.parametrize("skip_unsampled", [True, False])
def test_a_sampled_frame_that_never_comes_is_an_error(real_clip, skip_unsampled):
  plan = video.plan_sampling(real_clip, 2)
  beyond = dataclasses.replace(plan, frame_index=np.array([plan.frame_index[0], 500], np.int32),
                               frame_pts=np.array([plan.frame_pts[0], 10**9]))
  with pytest.raises(video.VideoError, match="delivered 1 of 2 sampled frames"):
    list(video.iter_sampled_frames(real_clip, beyond, skip_unsampled=skip_unsampled))


def test_sample_frame_indices_pads_short_clips():
  np.testing.assert_array_equal(video.sample_frame_indices(5, 8), [0, 1, 2, 3, 4, -1, -1, -1])
  np.testing.assert_array_equal(video.sample_frame_indices(40, 4), [5, 15, 25, 35])
  np.testing.assert_array_equal(video.sample_frame_indices(100, 3, fps=10, sample_fps=2),
                                [0, 5, 10])


def test_real_clip_faces_found_and_sane(extracted, real_clip):
  _, out = extracted
  mask = out["face_mask"]
  assert mask.shape == (T, 8) and out["faces"].shape == (T, 8)
  assert mask.any(axis=1).mean() >= 0.75, mask.sum(axis=1)
  assert out["num_faces"] == mask.sum() >= 2 * T
  assert np.all(out["face_scores"][mask] >= 0.9) and np.all(out["face_scores"][~mask] == 0)
  boxes = out["face_boxes"][mask]
  assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
  assert np.all(boxes >= 0)
  assert np.all(boxes[:, [0, 2]] <= 1920) and np.all(boxes[:, [1, 3]] <= 1080)
  # Slots fill from the front; empty slots hold the fill values.
  assert np.all(np.sort(mask, axis=1)[:, ::-1] == mask)
  assert all(out["faces"][t, k] == b"" for t, k in zip(*np.nonzero(~mask)))
  for t, k in zip(*np.nonzero(mask)):
    with Image.open(io.BytesIO(out["faces"][t, k])) as crop:
      assert (crop.format, crop.mode, crop.size) == ("JPEG", "RGB", (224, 224))
  assert len(out["frame_jpegs"]) == T and out["frame_size"].tolist() == [1920, 1080]


def test_crops_show_faces(extracted):
  """An independent look at the crops: MTCNN finds a face again in nearly every one."""
  extractor, out = extracted
  found = []
  for t, k in zip(*np.nonzero(out["face_mask"])):
    crop = Image.open(io.BytesIO(out["faces"][t, k])).convert("RGB")
    _, scores = extractor.detector.detect(crop)
    found.append(len(scores) > 0 and scores.max() >= 0.9)
  assert np.mean(found) >= 0.8, found


def test_track_ids_persist_across_neighbouring_steps(extracted):
  _, out = extracted
  track, mask = out["face_track"], out["face_mask"]
  assert np.all(track[mask] >= 0) and np.all(track[~mask] == -1)
  for t in range(T):
    ids = track[t][mask[t]]
    assert len(set(ids.tolist())) == len(ids)  # One id per face within a step.
  kept = [np.isin(track[t][mask[t]], track[t - 1][mask[t - 1]]).mean()
          for t in range(1, T) if mask[t].any()]
  assert np.mean(kept) >= 0.6, kept
  assert len(np.unique(track[mask])) < mask.sum() / 2  # Far fewer tracks than faces.


@pytest.mark.parametrize("codec,suffix", [("libx265", ".mkv"), ("mpeg4", ".avi")])
def test_other_codecs_and_containers(real_clip, tmp_path, codec, suffix):
  """HEVC in Matroska (no frame count in the header) and MPEG-4 Part 2 in AVI, at 960x540."""
  path = tmp_path / f"clip{suffix}"
  with av.open(str(real_clip)) as source, av.open(str(path), "w") as out:
    stream = out.add_stream(codec, rate=25)
    stream.width, stream.height, stream.pix_fmt = 960, 540, "yuv420p"
    if codec == "libx265":
      stream.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
    for index, frame in enumerate(source.decode(video=0)):
      if index == 30:
        break
      out.mux(stream.encode(frame.reformat(960, 540)))
    out.mux(stream.encode())
  assert video.plan_sampling(path, 4).num_decodable == 30
  got = extract.ClipExtractor(extract.ExtractConfig(num_frames=4)).extract(path)
  assert got["face_mask"].any(axis=1).all()
  assert got["face_boxes"][..., 2].max() <= 960


@pytest.mark.parametrize("name", ["half", "empty", "random", "text", "fast_half"])
def test_damaged_files_raise_video_error_naming_the_file(damaged, name):
  extractor = extract.ClipExtractor(extract.ExtractConfig(num_frames=4, detect_max_side=320))
  path = damaged / f"{name}.mp4"
  with pytest.raises(video.VideoError, match=str(path)):
    extractor.extract(path)


def test_prefetching_and_batched_detection_give_the_plain_result(real_clip):
  config = extract.ExtractConfig(num_frames=3, detect_max_side=480)
  plain = extract.ClipExtractor(config, prefetch=False).extract(real_clip)
  threaded = extract.ClipExtractor(config, prefetch=True).extract(real_clip)
  batched = extract.ClipExtractor(config, prefetch=False, detect_batch=2).extract(real_clip)
  for key in ("frame_index", "face_track", "face_mask"):
    np.testing.assert_array_equal(threaded[key], plain[key], err_msg=key)
    np.testing.assert_array_equal(batched[key], plain[key], err_msg=key)
  for key in ("face_boxes", "face_scores"):
    np.testing.assert_array_equal(threaded[key], plain[key], err_msg=key)
    np.testing.assert_allclose(batched[key], plain[key], atol=1e-3, err_msg=key)
  assert threaded["faces"].tolist() == plain["faces"].tolist()


def test_upright_applies_the_display_rotation():
  image = Image.new("RGB", (4, 2))
  image.putpixel((3, 0), (255, 0, 0))  # Top right.
  assert video.upright(image, 0) is image
  turned = video.upright(image, 90)  # Counter-clockwise: top right -> top left.
  assert turned.size == (2, 4) and turned.getpixel((0, 0)) == (255, 0, 0)
  assert video.upright(image, -90).getpixel((1, 3)) == (255, 0, 0)
  assert video.upright(image, 180).getpixel((0, 1)) == (255, 0, 0)


def test_select_faces_ranks_by_score_times_area_and_filters():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 30, 30], [0, 0, 80, 80], [5, 5, 5, 9]],
                   np.float32)
  scores = np.array([0.99, 0.95, 0.99, 0.5, 0.99], np.float32)
  np.testing.assert_array_equal(faces.select_faces(boxes, scores, 2, 0.9), [1, 2])
  np.testing.assert_array_equal(faces.select_faces(boxes, scores, 8, 0.9), [1, 2, 0])


def test_crop_near_the_edge_is_square_and_padded():
  image = Image.new("RGB", (100, 80), (200, 50, 50))
  box = np.array([[0, 0, 20, 40]], np.float32)
  assert faces.square_crop_box(box[0], 0.2) == (-14, -4, 34, 44)
  (jpeg,) = faces.crop_faces(image, box, size=32, margin=0.2, quality=90)
  pixels = np.asarray(Image.open(io.BytesIO(jpeg)))
  assert pixels.shape == (32, 32, 3)
  assert pixels[:, :5].mean() < 30 and pixels[16, 20, 0] > 150  # Black outside, red inside.


def test_tracker_follows_moving_faces_and_retires_lost_tracks():
  tracker = tracking.IouTracker(iou_threshold=0.3, expand=2.0, max_gap=1)
  a, b = np.array([100, 100, 140, 140], np.float32), np.array([400, 100, 440, 140], np.float32)
  shift = np.array([30, 0, 30, 0], np.float32)  # Faster than plain IoU can follow.
  first = tracker.update(np.stack([a, b]), frame_index=0)
  second = tracker.update(np.stack([b + shift, a + shift]), frame_index=8)
  np.testing.assert_array_equal(second, first[::-1])
  third = tracker.update(np.stack([a + 2 * shift]), frame_index=16)  # b is gone.
  assert third[0] == first[0]
  tracker.update(np.zeros((0, 4)), frame_index=24)
  tracker.update(np.zeros((0, 4)), frame_index=32)
  late = tracker.update(np.stack([a + 4 * shift]), frame_index=40)  # Gap > max_gap: new id.
  assert late[0] not in first


def test_extract_cli_writes_example_without_labels(real_clip, tmp_path, capsys):
  out, config_file = tmp_path / "clip.npz", tmp_path / "extract_config.json"
  config = extract.make_extract_config(extract.ExtractConfig(num_frames=3, detect_max_side=480),
                                       text.TextSettings(str(_tiny_encoder(tmp_path))))
  config_file.write_text(json.dumps(config))
  common = ["--out", str(out), "--extract_config", str(config_file)]
  assert extract.main(["--video", str(real_clip), "--thumb_size", "160", *common]) == 0
  record = npz_records.load(out)
  assert record["clip_id"] == "crowd_4s" and record["source_video"] == "crowd"
  assert record["text_embedding"].shape == (3, 16) and not record["text_mask"].any()
  assert "group_emotion" not in record and record["face_mask"].any()
  assert record["faces"].shape == (3, 8) and record["frame_size"].tolist() == [1920, 1080]
  with Image.open(io.BytesIO(record["frame_jpegs"][0])) as thumb:
    assert max(thumb.size) == 160
  capsys.readouterr()
  assert extract.main(["--video", str(tmp_path / "missing.mp4"), *common]) == 2
  assert "missing.mp4" in capsys.readouterr().err.strip().splitlines()[-1]
  config_file.write_text(json.dumps({**config, "num_frame": 3}))
  assert extract.main(["--video", str(real_clip), *common]) == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("error:") and "unknown keys ['num_frame']" in last


def _tiny_encoder(folder):
  from preprocessing.random_text_encoder import write_random_roberta
  return write_random_roberta(folder / "encoder", ["people walk in a crowd"] * 4, hidden_size=16,
                              num_layers=1, num_heads=2, vocab_size=300)
