"""Dataset spec, validation, the TFDS ArrayRecord writer, the npz codec, the planted generator."""
import io
import json
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from gems_jax.data import input_pipeline, npz_records, planted, tfds_writer
from gems_jax.data import spec as spec_lib
from gems_jax.data import validation


def _write(root, spec, n_train=12, n_val=5):
  splits = {"train": planted.make_planted_examples(spec, n_train, seed=0),
            "val": planted.make_planted_examples(spec, n_val, seed=1)}
  return tfds_writer.write_dataset(root, spec, splits), splits


@pytest.fixture(scope="module", params=["embeddings", "crops"])
def written(request, tmp_path_factory):
  spec = planted.planted_spec(storage=request.param, num_frames=5, max_faces=3, text_dim=8,
                              **({"embed_dim": 16} if request.param == "embeddings" else {}))
  path, splits = _write(tmp_path_factory.mktemp(request.param), spec)
  return spec, path, splits


def _assert_same(expected, actual, key):
  if key in spec_lib.STRING_KEYS:
    assert actual == expected, key
  elif key == "faces":
    assert actual.shape == expected.shape and actual.tolist() == expected.tolist(), key
  else:
    assert np.asarray(actual).dtype == np.asarray(expected).dtype, key
    np.testing.assert_array_equal(actual, expected, err_msg=key)  # NaN == NaN here.


def test_spec_json_roundtrip_and_unknown_key():
  spec = planted.planted_spec(emotion_names=["a", "b", "c"], valence_range=[0, 1])
  again = spec_lib.DatasetSpec.from_json(spec.to_json())
  assert again == spec and again.emotion_names == ("a", "b", "c") and again.num_emotions == 3
  with pytest.raises(ValueError, match="num_frame"):
    spec_lib.DatasetSpec.from_json(spec.to_json().replace('"num_frames"', '"num_frame"'))
  with pytest.raises(ValueError, match="embed_dim"):
    spec_lib.DatasetSpec(name="x", num_frames=2, max_faces=1, text_dim=4, storage="embeddings")


def test_spec_extract_config_round_trips_and_old_meta_files_load():
  config = {"num_frames": 5, "mtcnn_thresholds": (0.6, 0.7, 0.7), "text_encoder": "pkg:x"}
  spec = planted.planted_spec(num_frames=5, extract_config=config)
  assert spec.extract_config["mtcnn_thresholds"] == [0.6, 0.7, 0.7]  # As JSON holds it.
  assert spec_lib.DatasetSpec.from_json(spec.to_json()) == spec
  old = json.loads(spec.to_json())
  for key in ("extract_config", "kind", "num_whole_frames", "whole_frame_size",
              "whole_frame_embed_dim", "audio_samples", "audio_rate"):
    del old[key]  # gems_meta.json of a build before these fields existed.
  old_spec = spec_lib.DatasetSpec.from_json(json.dumps(old))
  assert old_spec.extract_config == {} and old_spec.kind == "faces"
  assert not old_spec.num_whole_frames and not old_spec.audio_samples
  with pytest.raises(ValueError, match="extract_config.*num_frames"):
    planted.planted_spec(num_frames=4, extract_config=config)
  with pytest.raises(ValueError, match="JSON-serialisable"):
    planted.planted_spec(extract_config={"num_frames": object()})


def test_roundtrip_every_key_per_clip(written):
  spec, path, splits = written
  assert input_pipeline.load_spec(path) == spec
  assert input_pipeline.load_spec(path.parent.parent) == spec  # The TFDS data_dir works too.
  for split, examples in splits.items():
    expected = {e["clip_id"]: validation.validate_example(e, spec) for e in examples}
    source = tfds.data_source(spec.name, data_dir=str(path.parent.parent), split=split)
    assert len(source) == len(expected) == input_pipeline.num_examples(path, split)
    stored = [source[i] for i in range(len(source))]
    assert [r["clip_id"].decode() for r in stored] == [e["clip_id"] for e in examples]  # Order.
    batches = list(input_pipeline.iterate_split_once(path, split, batch_size=4,
                                                     decode=()))
    seen = set()
    for batch in batches:
      for i in np.flatnonzero(batch["valid"]):
        clip = batch["clip_id"][i]
        seen.add(clip)
        for key in spec_lib.example_keys(spec):
          if key != "faces":
            _assert_same(expected[clip][key], batch[key][i], key)
    assert seen == set(expected)
    if spec.storage == "crops":  # The JPEG bytes themselves survive.
      for record in stored:
        _assert_same(expected[record["clip_id"].decode()]["faces"], record["faces"], "faces")


@pytest.mark.parametrize("written", ["crops"], indirect=True)
def test_decoded_faces_match_the_jpegs(written):
  spec, path, splits = written
  examples = {e["clip_id"]: e for e in splits["val"]}
  batch = next(input_pipeline.iterate_split_once(path, "val", batch_size=8))
  assert batch["faces"].shape == (8, 5, 3, spec.face_size, spec.face_size, 3)
  assert batch["faces"].dtype == np.uint8
  for i, clip in enumerate(batch["clip_id"]):
    if not batch["valid"][i]:
      assert not batch["faces"][i].any()
      continue
    example = examples[clip]
    for t in range(spec.num_frames):
      for k in range(spec.max_faces):
        if example["face_mask"][t, k]:
          pixels = np.asarray(Image.open(io.BytesIO(example["faces"][t, k])).convert("RGB"))
          np.testing.assert_array_equal(batch["faces"][i, t, k], pixels)
        else:
          assert not batch["faces"][i, t, k].any()
  assert "faces" not in next(input_pipeline.iterate_split_once(path, "val", batch_size=2,
                                                               decode=()))
  assert "clip_id" not in next(input_pipeline.iterate_split_once(path, "val", batch_size=2,
                                                                 keep_strings=False))


def _break(example, key, value):
  out = dict(example)
  out[key] = value
  return out


def _bad_jpeg(size):
  buf = io.BytesIO()
  Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def test_validation_errors_name_key_and_values():
  spec = planted.planted_spec()
  good = planted.make_planted_examples(spec, 1, seed=3)[0]
  assert validation.validate_example(good, spec)["group_emotion"].dtype == np.int32
  face = tuple(int(i) for i in np.argwhere(good["face_mask"])[0])
  empty = tuple(int(i) for i in np.argwhere(~good["face_mask"])[0])
  nan_face = good["individual_valence"].copy()
  nan_face[face] = 7.0
  filled = good["face_track"].copy()
  filled[empty] = 3
  holes = good["step_mask"].copy()
  holes[0] = False
  cases = [
      (_break(good, "frame_index", np.zeros(9, np.int32)), "frame_index", r"\(8,\).*\(9,\)"),
      (_break(good, "group_emotion", 9), "group_emotion", "9"),
      (_break(good, "valence", np.float32(-2.0)), "valence", "-2.0"),
      (_break(good, "arousal", 1.5), "arousal", "1.5"),
      (_break(good, "group_category", 0.5), "group_category", "float64"),
      (_break(good, "individual_valence", nan_face), "individual_valence", "7.0"),
      (_break(good, "face_track", filled), "face_track", "empty slots"),
      (_break(good, "step_mask", holes), "step_mask", "prefix"),
      (_break(good, "situational_emotion", np.full(10, 2.0)), "situational_emotion", "multi-hot"),
      (_break(good, "clip_id", ""), "clip_id", "non-empty"),
      ({k: v for k, v in good.items() if k != "situation"}, "situation", "missing"),
  ]
  for example, key, detail in cases:
    with pytest.raises(ValueError, match=f"'{key}'.*{detail}"):
      validation.validate_example(example, spec)

  crops = planted.planted_spec(storage="crops")
  good_crops = planted.make_planted_examples(crops, 1, seed=3)[0]
  wrong_size = good_crops["faces"].copy()
  wrong_size[np.nonzero(good_crops["face_mask"])[0][0],
             np.nonzero(good_crops["face_mask"])[1][0]] = _bad_jpeg(crops.face_size + 1)
  with pytest.raises(ValueError, match="'faces'.*17x17"):
    validation.validate_example(_break(good_crops, "faces", wrong_size), crops)
  with pytest.raises(ValueError, match="'face_embedding'.*unexpected"):
    validation.validate_example(_break(good_crops, "face_embedding", np.zeros(3)), crops)


def test_npz_records_round_trip_is_exact_and_atomic(tmp_path):
  faces = np.full((2, 3), b"", dtype=object)
  faces[0, 1], faces[1, 0] = b"\xff\xd8jpeg\x00bytes\xff\xd9", b"\x00"
  record = {"faces": faces, "clip_id": "70_1", "boxes": np.arange(6, dtype=np.float32)}
  npz_records.save(tmp_path / "x.npz", record)
  back = npz_records.load(tmp_path / "x.npz")
  assert back["faces"].tolist() == faces.tolist() and back["clip_id"] == "70_1"
  np.testing.assert_array_equal(back["boxes"], record["boxes"])
  assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]
  (tmp_path / "bad.npz").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="bad.npz"):
    npz_records.load(tmp_path / "bad.npz")


def test_writer_is_atomic_and_checks_splits(tmp_path):
  spec = planted.planted_spec(num_frames=3, max_faces=2, text_dim=4, embed_dim=4)
  examples = planted.make_planted_examples(spec, 6, seed=0)
  bad = examples[:4] + [_break(examples[4], "situation", 10)]
  with pytest.raises(ValueError, match="split 'train'.*'situation'"):
    tfds_writer.write_dataset(tmp_path, spec, {"train": bad})
  final = tfds_writer.dataset_path(tmp_path, spec)
  assert not final.exists() and not list(tmp_path.glob(".tmp-*"))

  path = tfds_writer.write_dataset(tmp_path, spec, {"train": examples[:4]})
  assert path == final and input_pipeline.num_examples(path, "train") == 4
  with pytest.raises(FileExistsError):
    tfds_writer.write_dataset(tmp_path, spec, {"train": examples})
  with pytest.raises(ValueError, match="source video"):  # Clips 0 and 1 share a source video.
    tfds_writer.write_dataset(tmp_path, spec, {"train": examples[:1], "val": examples[1:2]},
                              overwrite=True)
  with pytest.raises(ValueError, match="duplicate"):
    tfds_writer.write_dataset(tmp_path, spec, {"train": examples[:2] + examples[:1]},
                              overwrite=True)
  with pytest.raises(ValueError, match="no examples"):
    tfds_writer.write_dataset(tmp_path, spec, {"train": examples[:2], "val": []}, overwrite=True)
  assert input_pipeline.num_examples(path, "train") == 4  # Failed overwrites changed nothing.
  tfds_writer.write_dataset(
      tmp_path, spec, {"train": examples, "test": planted.make_planted_examples(spec, 2, seed=9)},
      overwrite=True)
  assert input_pipeline.num_examples(path, "train") == 6
  assert input_pipeline.num_examples(path, "test") == 2
  assert not list(tmp_path.glob(".tmp-*"))


def test_writing_a_dataset_leaves_no_temporary_folder(tmp_path, monkeypatch):
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  spec = planted.planted_spec(num_frames=3, max_faces=2, text_dim=4, embed_dim=4)
  tfds_writer.write_dataset(tmp_path / "data", spec,
                            {"train": planted.make_planted_examples(spec, 2, seed=0)})
  assert not list(temp.iterdir())


def test_planted_examples_are_valid_deterministic_and_follow_the_rules():
  spec = planted.planted_spec()
  first = planted.make_planted_examples(spec, 40, seed=5)
  again = planted.make_planted_examples(spec, 40, seed=5)
  other = planted.make_planted_examples(spec, 40, seed=6)
  for a, b in zip(first, again):
    for key in spec_lib.example_keys(spec):
      _assert_same(a[key], b[key], key)
  assert not np.array_equal(first[0]["face_embedding"], other[0]["face_embedding"])
  assert {e["source_video"] for e in first}.isdisjoint({e["source_video"] for e in other})
  padded_steps = padded_slots = 0
  for example in first:
    clean = validation.validate_example(example, spec)
    mask = clean["face_mask"]
    true_emotion = np.argmax(  # The nearest prototype recovers most individual emotions.
        clean["face_embedding"][mask] @ planted._World(spec, 0).face_proto.T, axis=-1)
    counts = np.bincount(true_emotion, minlength=spec.num_emotions)
    assert counts[clean["group_emotion"]] >= counts.max() - 2
    assert clean["situational_emotion"][clean["situation"] % 10] == 1
    padded_steps += int((~clean["step_mask"]).sum())
    padded_slots += int((~mask[clean["step_mask"]]).sum())
  assert padded_steps > 0 and padded_slots > 0  # Masks matter.
  many = planted.make_planted_examples(spec, 300, seed=1)
  for key, classes in (("group_emotion", 9), ("group_category", 3), ("situation", 10)):
    shares = np.bincount([int(e[key]) for e in many], minlength=classes) / 300
    assert shares.max() < 2.0 / classes, (key, shares)  # Balanced-ish: no dominant class.


def _jpeg(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _with_media(example: dict, spec, rng: np.random.Generator, has_audio: bool) -> dict:
  """A planted example plus 2 real whole frames of 3 and audio; without face keys if privacy."""
  out = {k: v for k, v in example.items()
         if spec.kind == "faces" or k not in spec_lib.FACE_KEYS}
  height, width = spec.whole_frame_size
  frames = np.full(spec.num_whole_frames, b"", dtype=object)
  for t in range(2):
    frames[t] = _jpeg(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
  out.update(whole_frames=frames, whole_frame_index=np.array([0, 5, -1], np.int32),
             whole_frame_mask=np.array([True, True, False]))
  length = 600 if has_audio else 0
  audio = np.zeros(spec.audio_samples, np.int16)
  audio[:length] = rng.integers(-30000, 30000, length)
  out.update(audio=audio, audio_length=length, has_audio=has_audio)
  return out


@pytest.mark.parametrize("kind", ["privacy", "faces"])
def test_whole_frames_and_audio_round_trip_and_privacy_holds_no_face_field(kind, tmp_path):
  spec = planted.planted_spec(num_frames=3, max_faces=2, text_dim=4, embed_dim=4)
  if kind == "privacy":
    spec = planted.planted_spec(num_frames=3, max_faces=2, text_dim=4, storage="crops")
  spec = spec_lib.DatasetSpec(**{**spec.__dict__, "kind": kind, "num_whole_frames": 3,
                                 "whole_frame_size": (8, 12), "audio_samples": 800})
  rng = np.random.default_rng(0)
  base = planted.make_planted_examples(
      planted.planted_spec(num_frames=3, max_faces=2, text_dim=4, embed_dim=4), 5, seed=0)
  examples = [_with_media(e, spec, rng, has_audio=i != 2) for i, e in enumerate(base)]
  path = tfds_writer.write_dataset(tmp_path, spec, {"train": examples})
  assert input_pipeline.load_spec(path) == spec
  if kind == "privacy":
    assert not set(spec_lib.example_keys(spec)) & set(spec_lib.FACE_KEYS)
    assert not set(spec_lib.features(spec).keys()) & set(spec_lib.FACE_KEYS)
  batch = next(input_pipeline.iterate_split_once(path, "train", batch_size=8))
  assert batch["whole_frames"].shape == (8, 3, 8, 12, 3)
  for i, example in enumerate(examples):
    clean = validation.validate_example(example, spec)
    for key in spec_lib.array_specs(spec):
      _assert_same(clean[key], batch[key][i], key)
    for t in range(2):
      expected = np.asarray(Image.open(io.BytesIO(example["whole_frames"][t])).convert("RGB"))
      np.testing.assert_array_equal(batch["whole_frames"][i, t], expected)
    assert not batch["whole_frames"][i, 2].any()
  assert batch["audio"].dtype == np.int16 and batch["has_audio"].tolist()[:5] == [
      True, True, False, True, True]
  assert not batch["audio"][5:].any() and not batch["whole_frames"][5:].any()  # Padding.

  good = examples[0]
  loud_tail = good["audio"].copy()
  loud_tail[700] = 5
  cases = [(_break(good, "audio", loud_tail), "audio", "past audio_length=600"),
           (_break(good, "has_audio", False), "audio_length", "has_audio is False"),
           (_break(good, "whole_frame_mask", np.array([False, True, False])), "whole_frame_mask",
            "prefix"),
           (_break(good, "audio", np.full(800, 40000)), "audio", "int16")]
  if kind == "privacy":
    cases.append((_break(good, "face_mask", base[0]["face_mask"]), "face_mask", "unexpected"))
  for example, key, detail in cases:
    with pytest.raises(ValueError, match=f"'{key}'.*{detail}"):
      validation.validate_example(example, spec)
