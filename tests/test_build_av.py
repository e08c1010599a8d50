"""Builds with audio and whole frames, and privacy builds (kind 'privacy', no detector).

Clips from tests/av_media.py (frame k a flat grey, beeps as sound), 64 x 48 at 10 fps: with audio
(AAC in mp4, PCM in mov), without an audio stream, with its audio cut short (the file ends after
the last video packet), with random bytes in audio packets, and a broken video. The privacy
builds run with a face detector that cannot be made, in the build process and in its worker
processes: such a build passes only if the detector is never constructed, let alone run.
"""
import io
import json
import shutil

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from av_media import beeps, write_clip
from PIL import Image

from configs import gems as gems_config
from gems_jax import predict, tasks
from gems_jax.data import input_pipeline
from gems_jax.data import spec as spec_lib
from preprocessing import audio, build, extract, faces, frames, pipeline, video
from preprocessing import text as text_lib
from preprocessing.random_text_encoder import write_random_roberta
from test_preprocess_build import HEADER, LABEL_KEYS

DESCRIPTION = "A crowd waits. Background: a hall. Event: a show starts."
OK_CLIPS = ["10_1", "11_1", "12_1", "13_1", "15_1"]
MEDIA = ["--whole_frames", "3", "--whole_frame_size", "32x48", "--audio_max_seconds", "3"]
FACES = ["--num_frames", "4", "--max_faces", "2", "--face_size", "32", "--detect_max_side", "480"]
SAMPLES = 3 * audio.SAMPLE_RATE


class NoDetector:
  """Stands in for faces.FaceDetector where making one is a failure."""

  def __init__(self, *args, **kwargs):
    raise AssertionError("a face detector was made in privacy mode")


_BUILD_WORKER_INIT = pipeline._init_worker


def _init_worker_without_detector(*args):
  """The build's worker initialiser, in a worker process where no face detector can be made.

  Module level, so the spawned worker processes import it from here."""
  faces.FaceDetector = NoDetector
  _BUILD_WORKER_INIT(*args)


def _write_clip_with_truncated_audio(path):
  """A clip whose 3 s of audio outlast its 2 s of video, cut after the last video packet: the
  video is whole, the audio stream ends before the end its container declares."""
  write_clip(path, audio=beeps([0.5, 2.5], 3.0, 48000), container_options={
      "movflags": "faststart"})
  with av.open(str(path)) as container:
    end = max(p.pos + p.size for p in container.demux(container.streams.video[0]) if p.size)
  path.write_bytes(path.read_bytes()[:end])


def _write_clip_with_corrupt_audio(path):
  """A clip whose audio packets 20-39 hold random bytes (its video packets are intact)."""
  write_clip(path, audio=beeps([0.3, 1.2], 2.0, 48000))
  with av.open(str(path)) as container:
    packets = [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.size]
  data = bytearray(path.read_bytes())
  rng = np.random.default_rng(0)
  for start, size in packets[20:40]:
    data[start:start + size] = rng.integers(0, 256, size, np.uint8).tobytes()
  path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  return write_random_roberta(tmp_path_factory.mktemp("roberta"), [DESCRIPTION] * 5,
                              hidden_size=24, num_layers=1, num_heads=2, vocab_size=300)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  root = tmp_path_factory.mktemp("av")
  videos = root / "videos"
  videos.mkdir()
  write_clip(videos / "10_1.mp4", audio=beeps([0.3, 1.2], 2.0, 48000), layout="stereo")
  write_clip(videos / "11_1.mov", audio=beeps([0.5, 3.5], 4.0, 44100), audio_rate=44100,
             audio_codec="pcm_s16le", num_frames=40)  # 4 s: the stored audio is cut at 3 s.
  write_clip(videos / "12_1.mp4")  # No audio stream.
  _write_clip_with_truncated_audio(videos / "13_1.mp4")
  whole = (videos / "10_1.mp4").read_bytes()
  (videos / "14_1.mp4").write_bytes(whole[:len(whole) // 2])  # Its index is lost: bad video.
  _write_clip_with_corrupt_audio(videos / "15_1.mp4")
  rows = ["10_1,train,2,0,0.5,-0.25,0;4,7", "11_1,train,1,1,0,0,1,2", "12_1,val,1,1,0,0,1,2",
          "13_1,test,1,1,0,0,1,2", "14_1,test,1,1,0,0,1,2", "15_1,test,1,1,0,0,1,2"]
  (root / "ann.csv").write_text("\n".join([HEADER] + rows) + "\n")
  (root / "desc.jsonl").write_text(json.dumps({"clip_id": "10_1", "description": DESCRIPTION}))
  return root


def run_build(raw, data_dir, encoder, *flags):
  return build.main(["--videos", str(raw / "videos"), "--annotations", str(raw / "ann.csv"),
                     "--descriptions", str(raw / "desc.jsonl"), "--data_dir", str(data_dir),
                     "--text_encoder", encoder, *flags])


def run_privacy_build(raw, data_dir, encoder, *flags):
  """A --privacy build in which making a face detector fails, here and in the workers."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(faces, "FaceDetector", NoDetector)
    patch.setattr(pipeline, "_init_worker", _init_worker_without_detector)
    status = run_build(raw, data_dir, encoder, "--privacy", *flags)
  return status, json.loads((data_dir / "build_report.json").read_text())


@pytest.fixture(scope="module")
def faces_av(raw, encoder, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("faces_av")
  assert run_build(raw, data_dir, encoder, *FACES, *MEDIA) == 0
  return data_dir, json.loads((data_dir / "build_report.json").read_text())


@pytest.fixture(scope="module")
def privacy(raw, encoder, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("privacy")
  status, report = run_privacy_build(raw, data_dir, encoder, *MEDIA)
  assert status == 0
  return data_dir, report


def _examples(data_dir) -> dict[str, dict]:
  """{clip_id: example} over every split, whole frames decoded (faces not)."""
  out = {}
  for split in input_pipeline.split_names(data_dir):
    for batch in input_pipeline.iterate_split_once(data_dir, split, batch_size=1,
                                                   decode=("whole_frames",)):
      out[batch["clip_id"][0]] = {key: value[0] for key, value in batch.items()}
  return out


def _pixels(jpeg: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def test_clips_without_usable_audio_are_kept_and_say_why(faces_av):
  _, report = faces_av
  clips = report["clips"]
  assert report["counts"]["ok"] == 5 and clips["14_1"]["reason"].startswith("bad video")
  assert [clips[c]["has_audio"] for c in OK_CLIPS] == [True, True, False, False, False]
  assert [clips[c]["audio_length"] for c in OK_CLIPS] == [32_000, SAMPLES, 0, 0, 0]
  assert "no audio stream: kept without audio" in clips["12_1"]["warnings"]
  assert any(w.startswith("truncated audio: kept without audio (the packets end at")
             for w in clips["13_1"]["warnings"])
  assert any(w.startswith("corrupt audio: kept without audio (") for w in clips["15_1"]["warnings"])
  for kind in ("no audio stream", "truncated audio", "corrupt audio"):
    assert report["clip_warnings"][kind] == 1
  assert all(clips[c]["whole_frames"] == 3 and clips[c]["steps"] == 4 for c in OK_CLIPS)


@pytest.mark.parametrize("kind", ["faces_av", "privacy"])
def test_audio_and_whole_frames_are_what_the_readers_give(kind, raw, request):
  """The stored audio is read_audio's waveform and the whole frames decode to the pixels of
  read_whole_frames' JPEGs, on one plan of the clip (whose steps differ from the faces')."""
  data_dir, _ = request.getfixturevalue(kind)
  spec = input_pipeline.load_spec(data_dir)
  assert (spec.num_whole_frames, spec.whole_frame_size, spec.audio_samples, spec.audio_rate) == (
      3, (32, 48), SAMPLES, 16_000)
  examples = _examples(data_dir)
  assert sorted(examples) == OK_CLIPS
  for clip_id, example in examples.items():
    path = next((raw / "videos").glob(f"{clip_id}.*"))
    plan = video.plan_sampling(path, 3)
    sound = audio.read_audio(path, plan, num_samples=SAMPLES)
    np.testing.assert_array_equal(example["audio"], sound.waveform, err_msg=clip_id)
    assert (example["audio_length"], example["has_audio"]) == (sound.length, sound.has_audio)
    whole = frames.read_whole_frames(path, width=48, height=32, plan=plan)
    np.testing.assert_array_equal(example["whole_frame_index"], plan.frame_index)
    assert example["whole_frame_mask"].all()
    for t, jpeg in enumerate(whole.jpegs):
      np.testing.assert_array_equal(example["whole_frames"][t], _pixels(jpeg), err_msg=clip_id)


def test_privacy_dataset_holds_no_face_field_and_never_made_a_detector(privacy):
  """The fixture's build ran with a detector that cannot be made; nothing per face is stored."""
  data_dir, report = privacy
  spec = input_pipeline.load_spec(data_dir)
  assert spec.kind == "privacy" and spec.extract_config["kind"] == "privacy"
  face_keys = set(spec_lib.FACE_KEYS)
  assert not set(spec_lib.example_keys(spec)) & face_keys
  dataset = tfds.builder_from_directory(str(input_pipeline.resolve_dataset_dir(data_dir)))
  assert not set(dataset.info.features.keys()) & face_keys
  examples = _examples(data_dir)
  assert sorted(examples) == OK_CLIPS and not any(set(e) & face_keys for e in examples.values())
  assert not any("faces" in entry or "steps" in entry for entry in report["clips"].values())
  assert "no faces" not in report["clip_warnings"]
  assert report["clips"]["14_1"]["reason"].startswith("bad video")


def test_individual_annotations_are_refused_in_privacy_mode(raw, encoder, tmp_path, capsys):
  individual = tmp_path / "individual.csv"
  individual.write_text("clip_id,frame,x1,y1,x2,y2,emotion,valence,arousal\n")
  with pytest.raises(SystemExit) as stop:
    run_build(raw, tmp_path / "out", encoder, "--privacy", "--individual", str(individual))
  assert stop.value.code == 2
  assert "--individual is refused with --privacy" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_gems_training_refuses_a_privacy_dataset_naming_the_missing_keys(privacy):
  spec = input_pipeline.load_spec(privacy[0])
  with pytest.raises(ValueError, match=r"needs dataset keys \['faces', 'face_mask', 'step_mask'\]"):
    tasks.get_task(gems_config.get_config("runlocal"), spec)


def test_extract_config_repeats_the_privacy_build_without_a_detector(privacy, raw, tmp_path,
                                                                     monkeypatch):
  """extract_clip (in this process, where no detector can be made) and the predict tool's
  extraction subprocess give the stored media of a privacy dataset's clip, and no face field."""
  data_dir, _ = privacy
  spec = input_pipeline.load_spec(data_dir)
  stored = _examples(data_dir)["10_1"]
  path = raw / "videos" / "10_1.mp4"
  monkeypatch.setattr(faces, "FaceDetector", NoDetector)
  record = extract.extract_clip(path, DESCRIPTION, spec.extract_config)
  assert sorted(record) == sorted(set(spec_lib.example_keys(spec)) - LABEL_KEYS | {"audio_reason"})
  np.testing.assert_allclose(record["text_embedding"], stored["text_embedding"], atol=1e-5)
  for found in (record, predict.extract(str(path), "", spec, str(tmp_path))):
    assert not set(found) & set(spec_lib.FACE_KEYS) and found["audio_reason"] == ""
    for key in ("audio", "audio_length", "has_audio", "whole_frame_index", "whole_frame_mask"):
      np.testing.assert_array_equal(found[key], stored[key], err_msg=key)
    for t, jpeg in enumerate(found["whole_frames"]):
      np.testing.assert_array_equal(_pixels(jpeg), stored["whole_frames"][t])


def test_an_extract_config_without_media_keys_means_faces_without_media():
  """A dataset built before whole frames and audio stores an extract_config without their keys."""
  before = {key: value for key, value in extract.make_extract_config(
      extract.ExtractConfig(), text_lib.TextSettings("enc")).items()
            if key not in extract.MEDIA_KEYS}
  config, _ = extract.parse_extract_config(before)
  assert (config.kind, config.num_whole_frames, config.audio_samples) == ("faces", 0, 0)
  del before["max_faces"]
  with pytest.raises(ValueError, match=r"missing keys \['max_faces'\]"):
    extract.parse_extract_config(before)


def test_the_cache_is_keyed_on_the_media_settings(privacy, raw, encoder, tmp_path):
  """A rerun reuses every clip; another audio length extracts them again."""
  data_dir = tmp_path / "data"
  shutil.copytree(privacy[0], data_dir)

  def rerun(*flags):
    status, report = run_privacy_build(raw, data_dir, encoder, *flags)
    assert status == 0
    return report["counts"]["extracted"], report["counts"]["from_cache"]

  assert rerun(*MEDIA) == (0, 5)
  assert rerun("--whole_frames", "3", "--whole_frame_size", "32x48", "--audio_max_seconds",
               "2") == (5, 0)
  assert input_pipeline.load_spec(data_dir).audio_samples == 32_000


def test_real_clip_builds_in_privacy_mode_with_its_sound(real_clip, encoder, tmp_path):
  """crowd_4s.mp4 (1080p H.264, AAC 48 kHz stereo) with the privacy defaults: 5 whole frames of
  224 x 224 and 10 s of 16 kHz audio."""
  (tmp_path / "videos").mkdir()
  shutil.copy(real_clip, tmp_path / "videos" / "90_1.mp4")
  (tmp_path / "ann.csv").write_text(f"{HEADER}\n90_1,train,2,0,0.5,-0.25,0,7\n")
  (tmp_path / "desc.jsonl").write_text("")
  status, report = run_privacy_build(tmp_path, tmp_path / "data", encoder)
  assert status == 0 and report["clips"]["90_1"]["has_audio"]
  spec = input_pipeline.load_spec(tmp_path / "data")
  assert (spec.kind, spec.num_whole_frames, spec.whole_frame_size, spec.audio_samples) == (
      "privacy", 5, (224, 224), 160_000)
  example = _examples(tmp_path / "data")["90_1"]
  assert example["has_audio"] and example["audio_length"] == 67_200  # 105 frames at 25 fps.
  assert example["whole_frames"].shape == (5, 224, 224, 3) and example["whole_frame_mask"].all()
  assert example["whole_frames"].std() > 20  # A real scene.


def _converted_vit(config, directory) -> str:
  """A converted-ViT checkpoint (as gems_jax.tools.convert_vit writes) of the config's ViT."""
  import jax
  import jax.numpy as jnp
  from gems_jax.models.vit import create_vit
  from gems_jax.training import checkpointing
  ve = config.model.video_encoder
  kwargs = {**dict(ve.overrides), "num_classes": 0}
  variables = jax.device_get(create_vit(ve.name, **kwargs).init(
      jax.random.key(1), jnp.zeros((1, config.input.frame_size, config.input.frame_size, 3))))
  return str(checkpointing.save_converted(directory, ve.name, variables, kwargs, family="vit"))


@pytest.mark.parametrize("variant", [
    "mode=fusion",
    pytest.param("mode=fusion,pooling=flatten,frozen=blocks", marks=pytest.mark.slow),
    pytest.param("mode=video,frozen=all", marks=pytest.mark.slow)])  # Through the frame cache.
def test_predict_on_a_privacy_audio_visual_run_uses_no_face(raw, encoder, tmp_path, variant):
  """Build (--privacy), train an audio-visual model one epoch, predict a new clip: the category
  distribution from frames and sound, no face used, the missing sound said."""
  from configs import privacy_av
  from gems_jax import train
  data_dir = tmp_path / "data"
  status, _ = run_privacy_build(raw, data_dir, encoder, "--whole_frames", "5",
                                "--whole_frame_size", "32", "--audio_max_seconds", "3")
  assert status == 0
  config = privacy_av.get_config(f"runlocal,{variant}")
  config.input.data_dir = str(data_dir)
  config.input.batch_size = config.eval.batch_size = 8
  config.train.num_epochs = 1
  if "frozen=all" in variant:  # Cached embeddings: predict takes the encoder from its checkpoint.
    config.model.video_encoder.checkpoint = _converted_vit(config, tmp_path / "vit")
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  names = input_pipeline.load_spec(data_dir).group_category_names
  for clip, has_audio in (("10_1.mp4", True), ("12_1.mp4", False)):
    result = predict.predict(str(workdir), str(raw / "videos" / clip), "", str(tmp_path / clip))
    assert result["faces_used"] is False and result["has_audio"] is has_audio
    probs = result["clip"]["group_category_probabilities"]
    assert list(probs) == list(names) and abs(sum(probs.values()) - 1) < 1e-3
    assert result["clip"]["group_category"] == max(probs, key=probs.get)
    assert result["num_whole_frames"] == 5
    assert (result["audio_note"] == "") is has_audio
    assert json.loads((tmp_path / clip / "profile.json").read_text()) == result
