"""The dataset build from raw clips: report, round trip, resume, split leaks, shards, workers.
(Audio, whole frames and privacy builds: test_build_av.py.)"""
import io
import json
import shutil

import av
import numpy as np
import pytest
from PIL import Image

from gems_jax.data import input_pipeline, npz_records
from gems_jax.data import spec as spec_lib
from preprocessing import audio, build, extract, video
from preprocessing import text as text_lib
from preprocessing.random_text_encoder import write_random_roberta

HEADER = "clip_id,split,group_emotion,group_category,valence,arousal,situational_emotion,situation"
FLAGS = ["--num_frames", "8", "--detect_max_side", "960"]
LABEL_KEYS = {"individual_emotion", "individual_valence", "individual_arousal", "group_emotion",
              "group_category", "valence", "arousal", "situational_emotion", "situation"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_faceless_clip(path, frames=12, size=64, seed=0):
  """A small H.264 clip of smooth noise: decodes fine, holds no face."""
  rng = np.random.default_rng(seed)
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for _ in range(frames):
      cells = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
      pixels = np.kron(cells, np.ones((size // 8, size // 8, 1), np.uint8))
      container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
    container.mux(stream.encode())


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  corpus = ["A crowd walks under an arcade.", "Background: an opera house.", "Event: a show."] * 5
  return write_random_roberta(tmp_path_factory.mktemp("roberta"), corpus, hidden_size=24,
                              num_layers=1, num_heads=2, vocab_size=300)


@pytest.fixture(scope="module")
def raw(tmp_path_factory, real_clip):
  """Clips, annotations (with one bad label and ids without video or annotation), descriptions."""
  root = tmp_path_factory.mktemp("raw")
  videos = root / "videos"
  videos.mkdir()
  shutil.copy(real_clip, videos / "70_1.mp4")
  data = real_clip.read_bytes()
  (videos / "71_1.mp4").write_bytes(data[:len(data) // 2])
  (videos / "72_1.mp4").write_bytes(b"")
  (videos / "73_1.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
  (videos / "74_1.mp4").write_text("this is a text file\n")
  shutil.copy(real_clip, videos / "75_1.mp4")  # Its label is out of range.
  write_faceless_clip(videos / "76_1.mkv")
  shutil.copy(videos / "76_1.mkv", videos / "77_1.mkv")  # Not in the annotations.
  rows = ["70_1,train,2,0,0.5,-0.25,0;4,7", "71_1,train,1,1,0,0,1,2", "72_1,val,1,1,0,0,1,2",
          "73_1,test,1,1,0,0,1,2", "74_1,test,1,1,0,0,1,2", "75_1,train,12,1,0,0,1,2",
          "76_1,val,3,2,0.75,0.5,5,9", "78_1,test,1,1,0,0,1,2"]
  (root / "ann.csv").write_text("\n".join([HEADER] + rows) + "\n")
  (root / "desc.jsonl").write_text(json.dumps({
      "clip_id": "70_1",
      "description": "A crowd walks. Background: an opera house. Event: a show ends."}) + "\n")
  return root


def run_build(raw, data_dir, encoder, *extra):
  return build.main(["--videos", str(raw / "videos"), "--annotations", str(raw / "ann.csv"),
                     "--descriptions", str(raw / "desc.jsonl"), "--data_dir", str(data_dir),
                     "--text_encoder", encoder, *FLAGS, *extra])


@pytest.fixture(scope="module")
def built(raw, encoder, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("built")
  assert run_build(raw, data_dir, encoder) == 0
  return data_dir, json.loads((data_dir / "build_report.json").read_text())


def test_report_lists_every_clip_with_its_outcome(built):
  _, report = built
  clips = report["clips"]
  assert sorted(clips) == [f"{i}_1" for i in range(70, 79)]
  ok = {c for c, e in clips.items() if e["status"] == "ok"}
  assert ok == {"70_1", "76_1"}
  kinds = {c: e["reason"].split(":")[0] for c, e in clips.items() if c not in ok}
  assert kinds == {"71_1": "bad video", "72_1": "bad video", "73_1": "bad video",
                   "74_1": "bad video", "75_1": "bad label", "77_1": "unknown clip id",
                   "78_1": "no video file"}
  assert "empty file" in clips["72_1"]["reason"] and "group_emotion 12" in clips["75_1"]["reason"]
  assert clips["70_1"]["faces"] > 0 and clips["70_1"]["steps_with_faces"] >= 6
  assert clips["76_1"]["faces"] == 0
  assert "no audio stream: kept without audio" in clips["76_1"]["warnings"]
  assert (clips["70_1"]["has_audio"], clips["76_1"]["has_audio"]) == (True, False)
  assert report["clip_warnings"] == {"no faces": 1, "no description": 1, "no audio stream": 1}
  assert report["counts"]["extracted"] == 2 and report["splits"] == {"train": 1, "val": 1}


def test_round_trip_through_the_input_pipeline(built, raw):
  data_dir, report = built
  work = sorted((data_dir / "_work").glob("media-*"))[0]
  text_work = sorted((data_dir / "_work").glob("text-*"))[0]
  spec = input_pipeline.load_spec(data_dir)
  assert (spec.num_frames, spec.max_faces, spec.face_size, spec.text_dim) == (8, 8, 224, 24)
  for split, clip_id in (("train", "70_1"), ("val", "76_1")):
    batch = next(input_pipeline.iterate_split_once(data_dir, split, batch_size=1))
    faces = npz_records.load(work / f"{clip_id}.npz")
    text = npz_records.load(text_work / f"{clip_id}.npz")
    assert batch["clip_id"][0] == clip_id and batch["valid"].tolist() == [True]
    for key in ("frame_index", "step_mask", "face_boxes", "face_scores", "face_track",
                "face_mask"):
      np.testing.assert_array_equal(batch[key][0], faces[key], err_msg=key)
    for t, k in zip(*np.nonzero(faces["face_mask"])):
      pixels = np.asarray(Image.open(io.BytesIO(faces["faces"][t, k])).convert("RGB"))
      np.testing.assert_array_equal(batch["faces"][0, t, k], pixels)
    np.testing.assert_array_equal(batch["text_embedding"][0], text["text_embedding"])
    assert batch["description"][0] == text["description"]
    assert spec.audio_samples == 160_000 and not spec.num_whole_frames  # The defaults.
    path = raw / "videos" / ("70_1.mp4" if clip_id == "70_1" else "76_1.mkv")
    sound = audio.read_audio(path, video.plan_sampling(path, 8), num_samples=160_000)
    np.testing.assert_array_equal(batch["audio"][0], sound.waveform)
    assert (batch["audio_length"][0], batch["has_audio"][0]) == (sound.length, sound.has_audio)
  train = next(input_pipeline.iterate_split_once(data_dir, "train", batch_size=1))
  assert train["text_mask"][0].tolist() == [True, True, True]
  assert (train["group_emotion"][0], train["situation"][0], train["arousal"][0]) == (2, 7, -0.25)
  assert train["situational_emotion"][0].nonzero()[0].tolist() == [0, 4]
  assert np.all(train["individual_emotion"] == -1)


def test_stored_extract_config_repeats_the_build_on_a_clip(built, raw, encoder):
  """gems_meta.json's extract_config holds the build's settings, and extract_clip with it gives the
  example the dataset holds (the predict tool relies on this)."""
  data_dir, _ = built
  dataset_dir = input_pipeline.resolve_dataset_dir(data_dir)
  spec = input_pipeline.load_spec(data_dir)
  meta = json.loads((dataset_dir / spec_lib.META_FILENAME).read_text())
  expected = extract.make_extract_config(
      extract.ExtractConfig(num_frames=8, detect_max_side=960, audio_samples=160_000),
      text_lib.TextSettings(encoder))
  assert meta["extract_config"] == spec.extract_config == json.loads(json.dumps(expected))
  batch = next(input_pipeline.iterate_split_once(data_dir, "train", batch_size=1))
  record = extract.extract_clip(raw / "videos" / "70_1.mp4", batch["description"][0],
                                spec.extract_config, thumb_size=64)
  assert sorted(record) == sorted(
      set(spec_lib.example_keys(spec)) - LABEL_KEYS | {"frame_jpegs", "frame_size", "audio_reason"})
  for key in ("frame_index", "step_mask", "face_boxes", "face_scores", "face_track", "face_mask",
              "text_mask", "audio", "audio_length", "has_audio"):
    np.testing.assert_array_equal(record[key], batch[key][0], err_msg=key)
  np.testing.assert_allclose(record["text_embedding"], batch["text_embedding"][0], atol=1e-5)
  for t, k in zip(*np.nonzero(record["face_mask"])):
    pixels = np.asarray(Image.open(io.BytesIO(record["faces"][t, k])).convert("RGB"))
    np.testing.assert_array_equal(batch["faces"][0, t, k], pixels)


def test_rerun_reuses_the_cache_and_joins_new_labels(built, raw, encoder):
  data_dir, _ = built
  cached = {p: p.stat().st_mtime_ns for p in (data_dir / "_work").glob("*/*.npz")}
  faces = npz_records.load(next(p for p in cached if p.parent.name.startswith("media-")
                                and p.stem == "70_1"))
  t = int(np.argmax(faces["face_mask"].sum(1)))
  box = faces["face_boxes"][t, 0]
  individual = raw / "individual.csv"
  individual.write_text("clip_id,frame,x1,y1,x2,y2,emotion,valence,arousal\n"
                        f"70_1,{faces['frame_index'][t]},{','.join(map(str, box))},6,0.5,\n")
  assert run_build(raw, data_dir, encoder, "--individual", str(individual)) == 0
  report = json.loads((data_dir / "build_report.json").read_text())
  assert report["counts"]["extracted"] == 0 and report["counts"]["from_cache"] == 2
  assert report["counts"]["text_encoded"] == 0
  assert {p: p.stat().st_mtime_ns for p in cached} == cached
  assert report["clips"]["70_1"]["individual_labels"] == 1
  batch = next(input_pipeline.iterate_split_once(data_dir, "train", batch_size=1,
                                                 decode=()))
  assert batch["individual_emotion"][0, t, 0] == 6 and batch["individual_valence"][0, t, 0] == 0.5
  assert (batch["individual_emotion"][0] >= 0).sum() == 1


def test_split_leak_stops_the_build_with_a_clear_error(raw, encoder, tmp_path, capsys):
  leaky = tmp_path / "leaky.csv"
  leaky.write_text(f"{HEADER}\n70_1,train,1,1,0,0,1,2\n70_2,test,1,1,0,0,1,2\n")
  status = build.main(["--videos", str(raw / "videos"), "--annotations", str(leaky),
                       "--data_dir", str(tmp_path / "out"), "--text_encoder", encoder])
  assert status == 2
  assert "'70' in test/train" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_shards_build_disjoint_parts_then_one_run_writes(tmp_path, encoder):
  videos = tmp_path / "videos"
  videos.mkdir()
  rows = []
  for i in range(5):
    write_faceless_clip(videos / f"{80 + i}_1.mp4", frames=6, size=32, seed=i)
    rows.append(f"{80 + i}_1,{'train' if i < 3 else 'test'},1,1,0,0,1,2")
  (tmp_path / "ann.csv").write_text("\n".join([HEADER] + rows) + "\n")
  common = ["--videos", str(videos), "--annotations", str(tmp_path / "ann.csv"),
            "--data_dir", str(tmp_path / "out"), "--text_encoder", encoder, "--num_frames", "4"]
  assert build.main(common + ["--num_shards", "2", "--shard_index", "0", "--workers", "2"]) == 0
  assert build.main(common + ["--num_shards", "2", "--shard_index", "1"]) == 0
  parts = [json.loads((tmp_path / "out" / f"build_report.shard-0000{i}-of-00002.json").read_text())
           for i in range(2)]
  clip_sets = [set(p["clips"]) for p in parts]
  assert not clip_sets[0] & clip_sets[1] and clip_sets[0] | clip_sets[1] == {
      f"{80 + i}_1" for i in range(5)}
  assert [p["counts"]["extracted"] for p in parts] == [3, 2]
  assert not list((tmp_path / "out").glob("gems"))  # Shards only fill the cache.
  assert build.main(common) == 0
  final = json.loads((tmp_path / "out" / "build_report.json").read_text())
  assert final["counts"]["from_cache"] == 5 and final["counts"]["extracted"] == 0
  assert final["splits"] == {"test": 2, "train": 3}
  assert input_pipeline.num_examples(tmp_path / "out", "train") == 3
