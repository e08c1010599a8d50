"""preprocessing.audio: decoding whatever the container/codec, alignment with the video's frames,
fixed length, and every audio fault reported (has_audio=False + reason), never raised.

Media are written with PyAV (tests/av_media.py): 20 frames at 10 fps = 2 s = 32000 samples at
16 kHz. Alignment tolerance: 1 ms (16 samples); measured 0-2 samples for every codec here.
"""
import av
import numpy as np
import pytest
from av_media import beeps, write_clip

from preprocessing import audio, video

FPS, FRAMES, RATE = 10, 20, audio.SAMPLE_RATE
CLIP_SAMPLES = FRAMES * RATE // FPS
TOLERANCE = RATE // 1000  # 1 ms
BEEP_FRAMES = (3, 7, 12)


def onsets(waveform: np.ndarray, count: int) -> list[int]:
  """Sample index of the first `count` beep onsets: where |x| first exceeds half the peak after
  at least 0.1 s below it."""
  loud = np.flatnonzero(np.abs(waveform.astype(np.int32)) > 0.5 * np.abs(waveform).max())
  starts = loud[np.concatenate([[True], np.diff(loud) > RATE // 10])]
  return starts[:count].tolist()


@pytest.mark.parametrize("name, audio_codec, audio_rate, layout, audio_first, video_codec", [
    ("clip.mp4", "aac", 48000, "stereo", False, "libx264"),
    ("clip.mp4", "aac", 44100, "mono", True, "libx264"),        # audio is stream 0
    ("clip.mp4", "libmp3lame", 44100, "stereo", False, "libx264"),  # MP3 in MP4
    ("clip.mkv", "libopus", 48000, "stereo", True, "libx264"),
    ("clip.mov", "pcm_s16le", 44100, "stereo", False, "libx264"),
    ("clip.mov", "aac", 48000, "mono", False, "libx265"),       # HEVC video in MOV
])
def test_beeps_at_frame_times_are_found_at_their_samples(tmp_path, name, audio_codec, audio_rate,
                                                         layout, audio_first, video_codec):
  path = tmp_path / name
  sound = beeps([k / FPS for k in BEEP_FRAMES], FRAMES / FPS, audio_rate)
  write_clip(path, audio=sound, audio_rate=audio_rate, audio_codec=audio_codec, layout=layout,
             audio_first=audio_first, video_codec=video_codec, num_frames=FRAMES, fps=FPS)
  clip = audio.read_audio(path, video.plan_sampling(path, 5))
  assert clip.has_audio and clip.reason == ""
  assert (clip.sample_rate, clip.length, len(clip.waveform)) == (RATE, CLIP_SAMPLES, CLIP_SAMPLES)
  assert clip.waveform.dtype == np.int16
  assert clip.source_rate == audio_rate
  assert clip.source_channels == av.AudioLayout(layout).nb_channels
  expected = [k * RATE // FPS for k in BEEP_FRAMES]
  np.testing.assert_allclose(onsets(clip.waveform, 3), expected, atol=TOLERANCE)


def test_audio_starting_after_the_video_keeps_its_place(tmp_path):
  path = tmp_path / "late.mp4"
  # The audio track starts 0.3 s after the first frame; its beeps sit at frames 7 and 12.
  write_clip(path, audio=beeps([0.4, 0.9], 1.7, 48000), audio_offset=0.3)
  clip = audio.read_audio(path, video.plan_sampling(path, 5))
  assert clip.has_audio and clip.length == CLIP_SAMPLES
  assert not clip.waveform[:round(0.3 * RATE) - TOLERANCE].any()
  np.testing.assert_allclose(onsets(clip.waveform, 2), [7 * RATE // FPS, 12 * RATE // FPS],
                             atol=TOLERANCE)


def test_audio_ending_before_the_video_shortens_the_real_length(tmp_path):
  path = tmp_path / "short.mov"
  write_clip(path, audio=np.full(44100, 0.25, np.float32), audio_rate=44100,
             audio_codec="pcm_s16le")
  clip = audio.read_audio(path, video.plan_sampling(path, 5))
  assert clip.has_audio and clip.length == RATE and len(clip.waveform) == CLIP_SAMPLES
  assert not clip.waveform[clip.length:].any()
  np.testing.assert_array_equal(clip.mask, np.arange(CLIP_SAMPLES) < RATE)


def test_stereo_is_downmixed_to_the_mean_of_its_channels(tmp_path):
  path = tmp_path / "stereo.mov"
  rate = 44100
  sine = np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)
  write_clip(path, audio=np.stack([0.4 * sine, 0.2 * sine]), audio_rate=rate,
             audio_codec="pcm_s16le", layout="stereo")
  clip = audio.read_audio(path)
  assert clip.source_channels == 2 and clip.length == 2 * RATE
  peak = np.abs(clip.waveform[1000:-1000]).max() / 32768
  assert peak == pytest.approx(0.3, rel=0.01)


def test_silent_clip_decodes_to_zeros(tmp_path):
  path = tmp_path / "silent.mp4"
  write_clip(path, audio=np.zeros(96000, np.float32))
  clip = audio.read_audio(path, video.plan_sampling(path, 5))
  assert clip.has_audio and clip.length == CLIP_SAMPLES
  assert np.abs(clip.waveform).max() <= 1


def test_no_audio_stream(tmp_path):
  path = tmp_path / "mute.mp4"
  write_clip(path)
  clip = audio.read_audio(path, video.plan_sampling(path, 5))
  assert not clip.has_audio and clip.reason == "no audio stream"
  assert clip.length == 0 and len(clip.waveform) == CLIP_SAMPLES and not clip.waveform.any()


@pytest.mark.parametrize("num_samples, length", [(48000, CLIP_SAMPLES), (8000, 8000)])
def test_fixed_length_pads_or_truncates(tmp_path, num_samples, length):
  path = tmp_path / "clip.mp4"
  write_clip(path, audio=np.full(96000, 0.1, np.float32) + beeps([0.0], 2.0, 48000))
  clip = audio.read_audio(path, video.plan_sampling(path, 5), num_samples=num_samples)
  assert len(clip.waveform) == num_samples and clip.length == length
  assert not clip.waveform[length:].any() and clip.waveform[length - 100:length].all()


def test_default_length_is_capped(tmp_path):
  path = tmp_path / "long.mp4"
  write_clip(path, audio=np.full(12 * 48000, 0.1, np.float32), num_frames=120)
  clip = audio.read_audio(path, video.plan_sampling(path, 5), max_seconds=10.0)
  assert clip.length == len(clip.waveform) == 10 * RATE


def _audio_only_mp4(path) -> list[tuple[int, int]]:
  """Writes 2 s of AAC (moov first, so a cut file still opens); returns (pos, size) per packet."""
  with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
    stream = container.add_stream("aac", rate=48000, layout="mono")
    frame = av.AudioFrame.from_ndarray(0.3 * beeps(np.arange(0, 2, 0.25), 2.0, 48000)[None],
                                       format="fltp", layout="mono")
    frame.sample_rate, frame.pts = 48000, 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode())
  with av.open(str(path)) as container:
    return [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.size]


def test_audio_only_file(tmp_path):
  path = tmp_path / "sound.m4a"
  _audio_only_mp4(path)
  clip = audio.read_audio(path)
  assert clip.has_audio and clip.length == len(clip.waveform) == 2 * RATE  # Declared end, no padding.


def test_truncated_audio_is_reported(tmp_path):
  path = tmp_path / "sound.mp4"
  packets = _audio_only_mp4(path)
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(path.read_bytes()[:packets[40][0]])  # Cut at a packet boundary.
  clip = audio.read_audio(cut)
  assert not clip.has_audio and clip.reason.startswith("truncated audio")
  assert clip.length == 0 and clip.codec == "aac"


def test_corrupt_audio_is_reported(tmp_path):
  path = tmp_path / "sound.mp4"
  packets = _audio_only_mp4(path)
  data = bytearray(path.read_bytes())
  start, end = packets[40][0], packets[50][0]
  data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, np.uint8).tobytes()
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(bytes(data))
  clip = audio.read_audio(bad)
  assert not clip.has_audio and clip.reason.startswith("corrupt audio")


def test_file_cut_short_with_video(tmp_path):
  """A whole clip cut in half: the video reader raises, the audio reader reports."""
  path = tmp_path / "clip.mp4"
  write_clip(path, audio=beeps([0.5], 2.0, 48000), container_options={"movflags": "faststart"})
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(path.read_bytes()[:path.stat().st_size * 6 // 10])
  with pytest.raises(video.VideoError, match="truncated"):
    video.plan_sampling(cut, 5)
  clip = audio.read_audio(cut)
  assert not clip.has_audio and clip.reason.startswith(("truncated audio", "corrupt audio"))


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 10])
def test_unreadable_file_is_reported(tmp_path, content):
  path = tmp_path / "clip.mp4"
  path.write_bytes(content)
  clip = audio.read_audio(path, num_samples=100)
  assert not clip.has_audio and clip.reason.startswith("cannot open")
  assert len(clip.waveform) == 100 and not clip.waveform.any()


def test_missing_file_is_reported(tmp_path):
  clip = audio.read_audio(tmp_path / "nowhere.mp4")
  assert not clip.has_audio and clip.reason.startswith("cannot open")


def test_real_clip(real_clip):
  plan = video.plan_sampling(real_clip, 5)
  clip = audio.read_audio(real_clip, plan)
  assert clip.has_audio and clip.codec == "aac"
  assert (clip.source_rate, clip.source_channels, clip.sample_rate) == (48000, 2, RATE)
  assert clip.length == len(clip.waveform) == round(plan.num_decodable / plan.fps * RATE)
  assert clip.length == 67200  # 105 frames at 25 fps = 4.2 s.
  rms = np.sqrt(np.mean(clip.waveform.astype(np.float64) ** 2))
  assert 50 < rms < 10000  # Crowd noise: about -42 dBFS (rms 263), neither silent nor clipped.
  assert np.mean(np.abs(clip.waveform) > 16) > 0.5  # Sound throughout, not a few clicks.
