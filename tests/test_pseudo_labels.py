"""Automatic per-face emotion labels (build --individual_labels, gems_jax/data/face_labels.py).

One build of 3 synthetic clips (preprocessing.make_synthetic: drawn faces that MTCNN finds) with
fer_mini_xception, where clip 1 keeps no human row and clip 2 loses the emotion (not the valence)
of every other row: every detected face without a human emotion gets the labeller's, flagged;
human labels win; report counts; the fields round-trip through TFDS. Then: datasets and
extract_configs from before the fields read with defaults; --privacy and --from_features refuse
the flag; the cache is keyed on the labeller; predict's auto rule.
(predict --face_emotions pretrained on the real clip: tests/test_predict.py.)
"""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import gems as gems_config
from configs import privacy_av as privacy_config
from gems_jax import predict
from gems_jax.data import face_labels, input_pipeline, npz_records, planted, tfds_writer
from gems_jax.data import spec as spec_lib
from preprocessing import build, extract, fer, individual, labels
from preprocessing import text as text_lib
from preprocessing.random_text_encoder import write_random_roberta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--num_frames", "4", "--max_faces", "4", "--face_size", "48", "--detect_max_side", "480",
         "--noaudio"]
LABELLER = "fer_mini_xception"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """3 synthetic clips and partial.csv: their individual rows, none for clip 1, and clip 2's rows
  with every other emotion cell emptied (valence and arousal kept)."""
  root = tmp_path_factory.mktemp("synthetic")
  proc = subprocess.run([sys.executable, "-m", "preprocessing.make_synthetic", "--out", str(root),
                         "--num_clips", "3", "--seed", "3", "--frames_per_clip", "12",
                         "--workers", "1"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(root / "individual.csv") as f:
    rows = list(csv.DictReader(f))
  clips = sorted({row["clip_id"] for row in rows})
  kept = [row for row in rows if row["clip_id"] != clips[0]]
  for i, row in enumerate(r for r in kept if r["clip_id"] == clips[1]):
    if i % 2:
      row["emotion"] = ""
  with open(root / "partial.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
  encoder = write_random_roberta(root / "roberta", ["A crowd."] * 5, hidden_size=24,
                                 num_layers=1, num_heads=2, vocab_size=300)
  return root, clips, encoder


def run_build(raw, data_dir, *flags):
  root, _, encoder = raw
  return build.main(["--videos", str(root / "videos"), "--annotations",
                     str(root / "annotations.csv"), "--data_dir", str(data_dir),
                     "--text_encoder", encoder, *FLAGS, *flags])


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("built")
  assert run_build(raw, data_dir, "--individual", str(raw[0] / "partial.csv"),
                   "--individual_labels", LABELLER) == 0
  return data_dir, json.loads((data_dir / "build_report.json").read_text())


def _decode(jpeg: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(jpeg)) as image:
    return np.asarray(image.convert("RGB"))


def test_faces_without_a_human_emotion_get_the_labellers_and_humans_win(built, raw):
  data_dir, report = built
  root, clips, _ = raw
  spec = input_pipeline.load_spec(data_dir)
  assert (spec.individual_labels, spec.individual_label_mapping) == (
      LABELLER, face_labels.DEFAULT_MAPPING)
  assert spec.extract_config["individual_labels"] == LABELLER
  people, _ = individual.read_individual_annotations(
      root / "partial.csv", labels.LabelSpace.beside(root / "annotations.csv"))
  matrix = face_labels.mapping_matrix(face_labels.DEFAULT_MAPPING, spec.emotion_names)
  unexpressed = [spec.emotion_names.index(name) for name in face_labels.UNEXPRESSED]
  classifier = fer.FerClassifier("mini_xception")
  work = next((data_dir / "_work").glob("media-*"))
  totals = {"human": 0, "automatic": 0, "unlabelled": 0}
  for batch in input_pipeline.iterate_split_once(data_dir, "train", batch_size=1,
                                                 decode=()):
    clip = batch["clip_id"][0]
    media = npz_records.load(work / f"{clip}.npz")
    mask = media["face_mask"]
    human, valence, _, _ = individual.assign_individual_labels(
        people.get(clip, []), media["frame_index"], media["face_boxes"], mask)
    emotion, probs, auto = (batch[key][0] for key in (
        "individual_emotion", "individual_emotion_probs", "individual_emotion_auto"))
    assert mask.sum() >= 8 and (emotion[mask] >= 0).all()  # Every detected face is labelled.
    np.testing.assert_array_equal(auto, mask & (human < 0))
    np.testing.assert_array_equal(emotion[human >= 0], human[human >= 0])  # Humans win.
    np.testing.assert_array_equal(emotion[auto], probs[auto].argmax(-1))
    np.testing.assert_array_equal(batch["individual_valence"][0], valence)  # Kept, NaN or not.
    np.testing.assert_allclose(probs, (media["face_fer_probs"] @ matrix) * mask[..., None],
                               atol=1e-6)
    np.testing.assert_allclose(probs[mask].sum(-1), 1, atol=1e-5)
    assert not probs[..., unexpressed].any() and not probs[~mask].any()
    # Each slot's probabilities are its own crop's: the labeller on the stored JPEG agrees.
    again = classifier.predict(np.stack([_decode(j) for j in media["faces"][mask]]))
    assert (again.argmax(1) == media["face_fer_probs"][mask].argmax(1)).mean() >= 0.9
    counts = {"human": int((human >= 0).sum()), "automatic": int(auto.sum()), "unlabelled": 0}
    assert report["clips"][clip]["face_labels"] == counts
    totals = {key: totals[key] + counts[key] for key in totals}
    if clip == clips[0]:
      assert auto[mask].all()  # No human row at all.
    if clip == clips[1]:
      assert (auto & ~np.isnan(valence)).any()  # Human valence, automatic emotion.
  assert report["face_labels"] == totals and min(totals["human"], totals["automatic"]) > 0
  features = tfds.builder_from_directory(str(input_pipeline.resolve_dataset_dir(data_dir))).info
  assert features.features["individual_emotion_probs"].shape == (4, 4, spec.num_emotions)
  assert features.features["individual_emotion_auto"].np_dtype == np.bool_


def test_datasets_and_extract_configs_without_the_fields_still_read(tmp_path):
  spec = planted.planted_spec(num_frames=3, max_faces=2, text_dim=8)
  path = tfds_writer.write_dataset(tmp_path, spec, {
      "train": planted.make_planted_examples(spec, 3, seed=0)})
  meta = json.loads((path / spec_lib.META_FILENAME).read_text())
  for key in ("individual_labels", "individual_label_mapping"):
    del meta[key]  # gems_meta.json of a build before automatic labels.
  (path / spec_lib.META_FILENAME).write_text(json.dumps(meta))
  assert input_pipeline.load_spec(path) == spec
  batch = next(input_pipeline.iterate_split_once(path, "train", batch_size=4))
  assert batch["valid"].tolist() == [True, True, True, False]
  assert batch["individual_emotion_probs"].shape == (4, 3, 2, spec.num_emotions)
  assert not batch["individual_emotion_probs"].any() and not batch["individual_emotion_auto"].any()
  assert batch["individual_emotion_auto"].dtype == np.bool_
  old = {key: value for key, value in extract.make_extract_config(
      extract.ExtractConfig(), text_lib.TextSettings("enc")).items()
         if key not in extract.LABEL_KEYS}
  assert extract.parse_extract_config(old)[0].individual_labels == "none"


def test_the_media_cache_is_keyed_on_the_labeller():
  """A labeller gets its own cache folder; without one the key is the one of older builds."""
  plain, labelled = extract.ExtractConfig(), extract.ExtractConfig(individual_labels=LABELLER)
  assert "individual_labels" not in plain.cache_key()
  assert labelled.cache_key() == {**plain.cache_key(), "individual_labels": LABELLER}
  with pytest.raises(ValueError, match="individual_labels"):
    extract.ExtractConfig(kind="privacy", audio_samples=10, individual_labels=LABELLER)


@pytest.mark.parametrize("flags, message", [
    (["--privacy"], "--individual_labels is refused with --privacy"),
    (["--from_features", "x"], "does not take --privacy, --whole_frames or --individual_labels")])
def test_the_flag_is_refused_where_there_are_no_face_crops(tmp_path, capsys, flags, message):
  argv = ["--data_dir", str(tmp_path / "out"), "--individual_labels", LABELLER, *flags]
  if "--privacy" in flags:
    argv += ["--videos", str(tmp_path), "--annotations", str(tmp_path / "a.csv")]
  with pytest.raises(SystemExit) as stop:
    build.main(argv)
  assert stop.value.code == 2 and message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_a_mapping_outside_the_vocabulary_stops_the_build(raw, tmp_path, capsys):
  assert run_build(raw, tmp_path / "out", "--individual_labels", LABELLER,
                   "--fer_mapping", "happy=happiness") == 2
  assert "'happy' -> 'happiness'" in capsys.readouterr().err
  assert not list((tmp_path / "out").glob("_work/media-*/*.npz"))  # Before any extraction.


def _dataset(root, name):
  spec = planted.planted_spec(name=name, num_frames=2, max_faces=1, text_dim=4)
  return str(tfds_writer.write_dataset(root / name, spec, {
      "train": planted.make_planted_examples(spec, 2, seed=0)}))


def test_auto_picks_pretrained_only_when_every_emotion_dataset_is_synthetic(tmp_path):
  synthetic, real = _dataset(tmp_path, "gems_synthetic"), _dataset(tmp_path, "gems_real")
  stage1 = tmp_path / "faces"
  stage1.mkdir()

  def source(run_data, stage1_data, checkpoint=str(stage1), choice="auto"):
    """face_emotion_source of a GEMS run on run_data whose encoder comes from `checkpoint`."""
    (stage1 / "config.json").write_text(json.dumps({  # Stage 1, from a random encoder.
        "input": {"data_dir": stage1_data}, "model": {"face_encoder": {"checkpoint": ""}}}))
    config = gems_config.get_config("runlocal")
    config.input.data_dir = run_data
    config.model.face_encoder.checkpoint = checkpoint
    return predict.face_emotion_source(config, input_pipeline.load_spec(run_data), choice)

  picked = source(synthetic, synthetic)
  assert picked["source"] == "pretrained" and picked["labeller"] == LABELLER
  assert picked["labelled_by"] == "faces labelled by fer_mini_xception (FER2013, pretrained)"
  assert picked["mapping"] == face_labels.DEFAULT_MAPPING and "gems_synthetic" in picked["rule"]
  assert source(synthetic, real)["source"] == "model"  # The encoder saw real faces.
  assert source(real, synthetic)["source"] == "model"  # So did the run's emotion head.
  timm = tmp_path / "timm"  # Converted ImageNet weights: no config.json, no emotion training.
  timm.mkdir()
  assert source(synthetic, real, checkpoint=str(timm))["source"] == "pretrained"
  model = source(synthetic, synthetic, choice="model")
  assert model == {"source": "model", "labelled_by": "faces labelled by this run's face encoder",
                   "rule": "--face_emotions model"}
  assert source(real, real, choice="pretrained")["source"] == "pretrained"
  privacy = privacy_config.get_config("runlocal")
  spec = spec_lib.DatasetSpec(name="av", num_frames=1, max_faces=1, text_dim=4, kind="privacy",
                              audio_samples=16)
  assert predict.face_emotion_source(privacy, spec)["source"] is None  # auto: ignored.
  with pytest.raises(ValueError, match="--face_emotions pretrained is refused.*has no faces"):
    predict.face_emotion_source(privacy, spec, "pretrained")
