"""gems_jax.data.log_mel against librosa 0.11, and its masks: padding never changes the features
of the real frames, segments line up with the video's sampled steps.

Tolerance against librosa (float64): 0.01 dB on every cell of test signals whose cells all lie
within 80 dB of their maximum (measured: 2e-4 dB); filterbanks: 1e-6 absolute.
"""
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from gems_jax.data import log_mel

RATE = 16_000


def config(**overrides):
  c = log_mel.default_config()
  c.update(overrides)
  return c


def chirp(length: int, seed: int = 0) -> np.ndarray:
  """int16 [length]: a rising tone over noise (no cell far below the maximum)."""
  t = np.arange(length) / RATE
  x = 0.3 * np.sin(2 * np.pi * 300 * t * (1 + t)) + 0.05 * np.random.default_rng(seed).normal(
      size=length)
  return np.round(x * 32767).astype(np.int16)


def padded(signal: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
  out = np.full(size, fill, np.int16)
  out[:len(signal)] = signal
  return out


def librosa_db(signal: np.ndarray, c) -> np.ndarray:
  """[frames, n_mels] dB of int16 `signal` by librosa with `c`'s settings."""
  power = librosa.feature.melspectrogram(
      y=signal.astype(np.float64) / 32768, sr=c.sample_rate, n_fft=c.n_fft,
      win_length=c.win_length, hop_length=c.hop_length, window="hann", center=True,
      pad_mode="constant", power=2.0, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax,
      htk=c.mel_scale == "htk", norm="slaney" if c.mel_norm == "slaney" else None)
  return librosa.power_to_db(power, ref=1.0, amin=c.amin, top_db=None).T


SETTINGS = [dict(), dict(mel_scale="htk", mel_norm="none", n_mels=64, fmin=0.0)]


@pytest.mark.parametrize("overrides", SETTINGS)
def test_filterbank_matches_librosa(overrides):
  c = config(**overrides)
  reference = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin,
                                  fmax=c.fmax, htk=c.mel_scale == "htk",
                                  norm="slaney" if c.mel_norm == "slaney" else None)
  np.testing.assert_allclose(log_mel.mel_filterbank(c).T, reference, atol=1e-6)


def test_default_filters_are_never_empty():
  assert (log_mel.mel_filterbank(log_mel.default_config()).max(axis=0) > 0).all()


@pytest.mark.parametrize("overrides", SETTINGS)
def test_log_mel_matches_librosa_on_the_real_samples(overrides):
  c = config(**overrides)
  signal = chirp(37_123)
  # Two copies: one zero-padded, one padded with garbage that must be ignored.
  batch = np.stack([padded(signal, 48_000), padded(signal, 48_000, fill=12_345)])
  db, mask = jax.jit(lambda w, n: log_mel.log_mel_spectrogram(w, n, c))(
      batch, jnp.array([37_123, 37_123]))
  reference = librosa_db(signal, c)
  assert reference.max() - reference.min() < 80
  np.testing.assert_array_equal(np.asarray(mask).sum(axis=1), [len(reference)] * 2)
  for row in range(2):
    np.testing.assert_allclose(np.asarray(db[row, :len(reference)]), reference, atol=0.01)


def test_normalization_ignores_padding_and_level():
  c = log_mel.default_config()
  signal = chirp(30_000, seed=1)

  @jax.jit
  def features(wave, length):
    db, mask = log_mel.log_mel_spectrogram(wave[None], length[None], c)
    return log_mel.normalize(db, mask, c.std_floor)[0], mask[0]

  length = jnp.array(30_000)
  short, mask = map(np.asarray, features(padded(signal, 40_000), length))
  long = np.asarray(features(padded(signal, 80_000, fill=-7_000), length)[0])
  as_float = signal.astype(np.float32) / 32768
  loud = np.asarray(features(as_float, length)[0])
  quiet = np.asarray(features(as_float / 4, length)[0])  # -12 dB: the same clip.
  real = mask.sum()
  np.testing.assert_allclose(long[:real], short[:real], atol=1e-5)
  np.testing.assert_allclose(loud, short[:real], atol=1e-5)
  np.testing.assert_allclose(quiet, loud, atol=1e-4)
  assert abs(short[:real].mean()) < 1e-5 and short[:real].std() == pytest.approx(1.0, abs=1e-4)
  assert not short[real:].any() and not long[real:].any()
  reference = librosa_db(signal, c)
  np.testing.assert_allclose(short[:real], (reference - reference.mean()) / reference.std(),
                             atol=1e-3)


def test_silence_and_missing_audio_give_zeros():
  c = log_mel.default_config()
  out = jax.jit(lambda w, n: log_mel.audio_frames(w, n, c))(jnp.zeros((2, 16_000), jnp.int16),
                                                            jnp.array([16_000, 0]))
  segments = np.asarray(out["segments"])
  np.testing.assert_allclose(segments, 0.0, atol=1e-4)  # float32 rounding of the mean only.
  np.testing.assert_array_equal(np.asarray(out["segment_mask"]), [[True] * 5, [False] * 5])


def test_audio_frames_shapes_and_masks():
  c = log_mel.default_config()
  wave = np.stack([chirp(80_000), padded(chirp(20_000), 80_000)])
  out = jax.jit(lambda w, n: log_mel.audio_frames(w, n, c))(wave, jnp.array([80_000, 20_000]))
  assert out["segments"].shape == (2, 5, 128, 128) and out["segments"].dtype == jnp.float32
  assert out["column_mask"].shape == (2, 5, 128) and out["segment_mask"].shape == (2, 5)
  column_mask = np.asarray(out["column_mask"])
  assert column_mask[0].all()  # 501 real frames: every window inside.
  # 20000 samples = 126 frames < 128: every window starts at 0, its last 2 columns are padding.
  np.testing.assert_array_equal(column_mask[1], np.broadcast_to(np.arange(128) < 126, (5, 128)))
  assert not np.asarray(out["segments"])[1][:, :, 126:].any()


@pytest.mark.parametrize("seconds, fps, steps", [(5.0, 25, 5), (3.0, 30, 5), (10.0, 24, 8)])
def test_segments_centre_on_the_video_steps(seconds, fps, steps):
  """Segment i is centred where `preprocessing.video` samples step i, within a frame and a hop."""
  c = config(num_segments=steps)
  num_real = 1 + round(seconds * RATE) // c.hop_length
  ramp = jnp.broadcast_to(jnp.arange(num_real, dtype=jnp.float32)[None, :, None],
                          (1, num_real, 2))  # feature value = frame index
  segments, mask = log_mel.segment(ramp, jnp.array([num_real]), steps, c.segment_frames)
  assert np.asarray(mask).all()
  columns = np.asarray(segments[0, :, 0, :])  # [A, W] frame indices
  assert columns.min() >= 0 and columns.max() <= num_real - 1
  np.testing.assert_array_equal(np.diff(columns, axis=1), 1)  # Contiguous windows.
  num_frames = round(seconds * fps)
  video_steps = ((np.arange(steps) + 0.5) * num_frames / steps).astype(int)  # video.py's rule
  video_times = (video_steps + 0.5) / fps
  audio_times = columns.mean(axis=1) * c.hop_length / RATE
  clamped = (columns[:, 0] == 0) | (columns[:, -1] == num_real - 1)
  assert (~clamped).sum() >= steps - 2
  np.testing.assert_allclose(audio_times[~clamped], video_times[~clamped],
                             atol=1 / fps + c.hop_length / RATE)
  frame_times = columns * c.hop_length / RATE  # Clamped windows still hold their step's time.
  assert (frame_times[:, 0] <= video_times).all() and (video_times <= frame_times[:, -1]).all()


def test_invalid_config_is_refused():
  with pytest.raises(ValueError, match="mel_scale"):
    log_mel.log_mel_spectrogram(jnp.zeros((1, 1600)), jnp.array([1600]), config(mel_scale="x"))
  with pytest.raises(ValueError, match="fmax"):
    log_mel.log_mel_spectrogram(jnp.zeros((1, 1600)), jnp.array([1600]), config(fmax=9000.0))
