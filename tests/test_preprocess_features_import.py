"""Import of the authors' precomputed-feature layout, read back through the input pipeline."""
import json

import numpy as np
import pytest

from gems_jax.data import input_pipeline
from preprocessing import build, features_import

HEADER = ("video_file_name,group_emotion,group_emotion_category,class_emotion,class_valence,"
          "class_arousal,event_emotion,event")
E, D = 6, 4


def test_numeric_sort_key_orders_steps_in_time():
  names = ["10", "2", "frame_10", "frame_9", "1", "frame_1b", "frame_1a"]
  assert sorted(names, key=features_import.numeric_sort_key) == [
      "1", "2", "10", "frame_1a", "frame_1b", "frame_9", "frame_10"]


def _clip(split_dir, clip_id, steps, text_parts=(1, 2, 3)):
  face_dir = split_dir / "face_features" / clip_id
  face_dir.mkdir(parents=True)
  for step in steps:  # Each step's vector holds its step number.
    np.save(face_dir / f"{step}.npy", np.full((1, E), step, np.float32))
  for part in text_parts:
    folder = split_dir / f"text_latent{part}"
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{clip_id}.npy", np.full(D, 10 * part, np.float32))


@pytest.fixture()
def layout(tmp_path):
  root = tmp_path / "features"
  train, val = root / "train", root / "val"
  _clip(train, "10_1", [2, 10, 1])
  _clip(train, "11_1", [0, 1], text_parts=(1, 3))
  _clip(train, "12_1", [0])  # Its label row is bad.
  _clip(val, "20_1", [5, 6, 7, 8, 9])  # More steps than T = 3 below: keeps the first 3.
  _clip(val, "21_1", [0])  # No label row.
  (train / "labels.csv").write_text("\n".join([
      HEADER, "10_1.mp4,2,0,2,0.1,0.2,3,4", "11_1,1,1,1,0,0,0,0", "12_1,1,5,1,0,0,0,0",
      "13_1,1,1,1,0,0,0,0"]) + "\n")
  (val / "labels.csv").write_text(f"{HEADER}\n20_1,8,2,8,-0.5,0.5,9,9\n")
  return root


def test_import_round_trip(layout, tmp_path):
  out = tmp_path / "out"
  assert build.main(["--from_features", str(layout), "--data_dir", str(out),
                     "--num_frames", "3"]) == 0
  report = json.loads((out / "build_report.json").read_text())
  status = {c: e["status"] for c, e in report["clips"].items()}
  assert status == {"10_1": "ok", "11_1": "ok", "12_1": "skipped", "13_1": "skipped",
                    "20_1": "ok", "21_1": "skipped"}
  assert "group_category 5 out of range" in report["clips"]["12_1"]["reason"]
  assert report["clips"]["13_1"]["reason"].startswith("no features")
  assert report["clips"]["21_1"]["reason"].startswith("unknown clip id")
  assert any("text_latent2" in w for w in report["clips"]["11_1"]["warnings"])
  assert any("kept the first 3" in w for w in report["clips"]["20_1"]["warnings"])
  spec = input_pipeline.load_spec(out)
  assert (spec.storage, spec.embed_dim, spec.text_dim, spec.max_faces, spec.num_frames) == (
      "embeddings", E, D, 1, 3)
  train = next(input_pipeline.iterate_split_once(out, "train", batch_size=2))
  assert train["clip_id"].tolist() == ["10_1", "11_1"]
  np.testing.assert_array_equal(train["face_embedding"][0, :, 0, 0], [1, 2, 10])
  np.testing.assert_array_equal(train["face_embedding"][1, :, 0, 0], [0, 1, 0])
  assert train["step_mask"].tolist() == [[True] * 3, [True, True, False]]
  np.testing.assert_array_equal(train["frame_index"][1], [0, 1, -1])
  np.testing.assert_array_equal(train["text_embedding"][1, :, 0], [10, 0, 30])
  assert train["text_mask"][1].tolist() == [True, False, True]
  assert (train["group_emotion"][0], train["situation"][0], train["valence"][0]) == (2, 4,
                                                                                    np.float32(0.1))
  assert train["situational_emotion"][0].nonzero()[0].tolist() == [3]
  val = next(input_pipeline.iterate_split_once(out, "val", batch_size=1))
  np.testing.assert_array_equal(val["face_embedding"][0, :, 0, 0], [5, 6, 7])


def test_import_without_num_frames_uses_the_longest_clip(layout, tmp_path):
  assert build.main(["--from_features", str(layout), "--data_dir", str(tmp_path / "o")]) == 0
  assert input_pipeline.load_spec(tmp_path / "o").num_frames == 5


def test_bad_step_file_skips_only_that_clip(layout, tmp_path):
  np.save(layout / "train" / "face_features" / "11_1" / "3.npy", np.zeros(E + 1, np.float32))
  assert build.main(["--from_features", str(layout), "--data_dir", str(tmp_path / "o")]) == 0
  report = json.loads((tmp_path / "o" / "build_report.json").read_text())
  assert "3.npy" in report["clips"]["11_1"]["reason"]
  assert report["clips"]["10_1"]["status"] == "ok"
