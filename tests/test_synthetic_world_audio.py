"""The synthetic world's sound: one AAC track per clip holding the recorded planted category, the
agreement and audio-led plan (exact counts), rule 7 (audio-led labels come from the sound), the
silent world, and a build of the world that reads the sound without a warning."""
import collections
import csv
import json

import av
import numpy as np
import pytest

from preprocessing import audio, build, make_synthetic, video
from preprocessing.random_text_encoder import write_random_roberta
from preprocessing.synthetic import audio as synthetic_audio
from preprocessing.synthetic import dataset, faces, rules

SEED, NUM_CLIPS, FRAMES, FPS = 3, 6, 12, 10
SMALL = ["--frames_per_clip", str(FRAMES), "--fps", str(FPS), "--width", "160", "--height", "96"]
AGREEMENT, LED_FRACTION = 0.5, 0.34   # 3 disagreeing and 2 audio-led clips of 6
NONE = faces.EMOTIONS.index("none")


def _rows(path) -> tuple[list, list]:
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("world")
  make_synthetic.main(["--out", str(out), "--num_clips", str(NUM_CLIPS), "--seed", str(SEED), *SMALL,
                       "--audio_agreement", str(AGREEMENT), "--audio_led_fraction",
                       str(LED_FRACTION), "--workers", "2"])
  return out


def test_annotations_record_the_sound_and_honour_the_fractions(world_dir):
  header, rows = _rows(world_dir / "annotations.csv")
  assert tuple(header) == dataset.ANNOTATION_COLUMNS + dataset.AUDIO_COLUMNS
  assert all(int(r["audio_agrees"]) == (r["audio_category"] == r["group_category"]) for r in rows)
  led = [r for r in rows if r["audio_led"] == "1"]
  assert len(led) == round(LED_FRACTION * NUM_CLIPS) and all(r["audio_agrees"] == "1" for r in led)
  assert sum(r["audio_agrees"] == "0" for r in rows) == NUM_CLIPS - round(AGREEMENT * NUM_CLIPS)


def test_audio_led_clips_show_neutral_faces_and_are_labelled_by_their_sound(world_dir):
  """Rule 7: faces all 'none' (individual labels of neutral faces, steady), group labels those of
  the sound's category."""
  _, rows = _rows(world_dir / "annotations.csv")
  _, individual = _rows(world_dir / "individual.csv")
  _, planted = _rows(world_dir / "planted.csv")
  faces_of = collections.defaultdict(list)
  for r in individual:
    faces_of[r["clip_id"]].append((int(r["emotion"]), float(r["valence"]), float(r["arousal"])))
  led = [(r, p) for r, p in zip(rows, planted) if r["audio_led"] == "1"]
  assert len({r["audio_category"] for r, _ in led}) == len(led)   # balanced categories
  for row, facts in led:
    emotions, valence, arousal = map(np.array, zip(*faces_of[row["clip_id"]]))
    assert (emotions == NONE).all() and facts["trajectory"] == "steady" and not facts["arc_emotion"]
    table = rules.EMOTION_VALENCE_AROUSAL["none"]
    assert np.abs(valence - table[0]).max() < 6 * rules.VA_NOISE_SD
    assert np.abs(arousal - table[1]).max() < 6 * rules.VA_NOISE_SD
    category = int(row["audio_category"])
    assert int(row["group_category"]) == category
    emotion = rules.SOUND_EMOTION[rules.GROUP_CATEGORIES[category]]
    assert int(row["group_emotion"]) == faces.EMOTIONS.index(emotion)
    assert (float(row["valence"]), float(row["arousal"])) == rules.EMOTION_VALENCE_AROUSAL[emotion]
    assert rules.category_of(float(row["valence"])) == category
    expected = rules.situational_emotions(int(row["situation"]), category)
    assert row["situational_emotion"] == ";".join(map(str, expected))


def test_label_clip_rule_7_overrides_only_the_group_labels():
  expressions, visible = np.full((3, 6), NONE), np.ones((3, 6), bool)
  plain = rules.label_clip(expressions, visible, 2, np.random.default_rng(0))
  for category, name in enumerate(rules.GROUP_CATEGORIES):
    led = rules.label_clip(expressions, visible, 2, np.random.default_rng(0), category)
    np.testing.assert_array_equal(led.individual_valence, plain.individual_valence)
    np.testing.assert_array_equal(led.individual_arousal, plain.individual_arousal)
    assert (led.group_category, led.face_category) == (category, plain.group_category)
    assert led.whole_clip_arousal == plain.whole_clip_arousal
    emotion = rules.SOUND_EMOTION[name]
    assert led.group_emotion == faces.EMOTIONS.index(emotion)
    assert (led.valence, led.arousal) == rules.EMOTION_VALENCE_AROUSAL[emotion]
    assert led.situational_emotion == rules.situational_emotions(2, category)
  expressions[1, 4] = 0
  with pytest.raises(ValueError, match="audio-led"):
    rules.label_clip(expressions, visible, 2, np.random.default_rng(0), 0)


def test_each_clip_has_one_aac_track_as_long_as_its_video_with_the_recorded_event(world_dir):
  """One mono 16 kHz AAC stream of frames / fps seconds, starting with the video; decoded, it is
  synthesize((seed, 3, clip), audio_category) up to AAC's loss."""
  _, rows = _rows(world_dir / "annotations.csv")
  seconds = FRAMES / FPS
  for index, row in enumerate(rows):
    path = world_dir / "videos" / f"{row['clip_id']}.mp4"
    with av.open(str(path)) as container:
      assert [s.type for s in container.streams] == ["video", "audio"]
      sound, picture = container.streams.audio[0], container.streams.video[0]
      assert (sound.codec_context.name, sound.rate, sound.channels) == ("aac", 16_000, 1)
      assert float(sound.duration * sound.time_base) == pytest.approx(seconds, abs=1e-3)
      assert float(picture.duration * picture.time_base) == pytest.approx(seconds, abs=1e-3)
    clip = audio.read_audio(path, video.plan_sampling(path, 2))
    expected = synthetic_audio.synthesize((SEED, 3, index), int(row["audio_category"]), seconds)
    assert clip.has_audio and clip.length == len(expected) == round(seconds * 16_000)
    assert np.corrcoef(clip.waveform, expected)[0, 1] > 0.98, row


def test_plan_audio_counts_are_exact_and_balanced():
  for n in (1, 7, 10, 33):
    for agreement in (1.0, 0.85, 0.5, 0.0):
      for led_fraction in (0.0, 0.2, 0.5):
        sound = dataset.AudioFormat(agreement, led_fraction)
        disagree, led = n - round(agreement * n), round(led_fraction * n)
        if disagree + led > n:
          with pytest.raises(ValueError, match="exceed"):
            dataset.plan_audio(n, 0, sound)
          continue
        plan = dataset.plan_audio(n, 0, sound)
        assert plan == dataset.plan_audio(n, 0, sound)
        offsets = np.bincount([o for o, _ in plan], minlength=3)
        categories = np.bincount([c for _, c in plan if c is not None], minlength=3)
        assert offsets[1:].sum() == disagree and np.ptp(offsets[1:]) <= 1
        assert categories.sum() == led and np.ptp(categories) <= 1
        assert not any(o and c is not None for o, c in plan)
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    dataset.plan_audio(5, 0, dataset.AudioFormat(1.5))
  specs = [s for s, _ in dataset.plan_dataset(9, 1, dataset.VideoFormat(), sound=dataset.AudioFormat(
      led_fraction=1 / 3))]
  led = [s for s in specs if s.audio_led is not None]
  assert len(led) == 3 and all(s.dominant_emotion == NONE and s.trajectory == "steady" for s in led)
  assert [s.audio_seed for s in specs] == [(1, 3, i) for i in range(9)]


def test_a_silent_world_is_the_same_world_without_its_sound(tmp_path, capsys):
  """--no_audio: no audio stream and no audio column; otherwise the files and the video packets
  are those of the world with sound (all clips agreeing, none audio-led)."""
  for name, flags in (("silent", ["--no_audio"]), ("sound", [])):
    make_synthetic.main(["--out", str(tmp_path / name), "--num_clips", "2", "--seed", "5",
                         *SMALL, "--workers", "1", *flags])
  silent_header, silent = _rows(tmp_path / "silent" / "annotations.csv")
  header, sound = _rows(tmp_path / "sound" / "annotations.csv")
  assert tuple(silent_header) == dataset.ANNOTATION_COLUMNS
  assert [{k: r[k] for k in silent_header} for r in sound] == silent
  for name in ("individual.csv", "planted.csv", "descriptions.jsonl"):
    assert (tmp_path / "silent" / name).read_bytes() == (tmp_path / "sound" / name).read_bytes()
  for row in silent:
    packets = []
    for name in ("silent", "sound"):
      with av.open(str(tmp_path / name / "videos" / f"{row['clip_id']}.mp4")) as container:
        assert len(container.streams.audio) == (name == "sound")
        packets.append([bytes(p) for p in container.demux(container.streams.video[0]) if p.size])
    assert packets[0] == packets[1]
  capsys.readouterr()
  with pytest.raises(SystemExit) as stop:
    make_synthetic.main(["--out", str(tmp_path / "x"), "--num_clips", "2", "--no_audio",
                         "--audio_agreement", "0.5"])
  assert stop.value.code == 2 and "need sound" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    make_synthetic.main(["--out", str(tmp_path / "x"), "--num_clips", "4", "--audio_agreement",
                         "0.5", "--audio_led_fraction", "0.75"])
  assert "exceed" in capsys.readouterr().err


def test_the_build_reads_the_sound_and_ignores_the_audio_columns(world_dir, tmp_path):
  """A privacy build (no detector) of the world: every clip kept, with its sound and no warning."""
  descriptions = [json.loads(line)["description"]
                  for line in (world_dir / "descriptions.jsonl").read_text().splitlines()]
  encoder = write_random_roberta(tmp_path / "roberta", descriptions, hidden_size=24, num_layers=1,
                                 num_heads=2, vocab_size=300)
  data_dir = tmp_path / "data"
  status = build.main(["--videos", str(world_dir / "videos"), "--annotations",
                       str(world_dir / "annotations.csv"), "--descriptions",
                       str(world_dir / "descriptions.jsonl"), "--data_dir", str(data_dir),
                       "--text_encoder", encoder, "--privacy", "--whole_frames", "2",
                       "--whole_frame_size", "32", "--audio_max_seconds", "2"])
  assert status == 0
  report = json.loads((data_dir / "build_report.json").read_text())
  assert report["counts"]["ok"] == NUM_CLIPS and report["clip_warnings"] == {}
  for entry in report["clips"].values():
    assert entry["has_audio"] and entry["audio_length"] == FRAMES / FPS * 16_000
    assert not entry.get("warnings"), entry
