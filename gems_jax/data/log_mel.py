r"""Log-mel "audio frames" computed on device (pure JAX): waveform -> A segments of log-mel images.

    config = log_mel.default_config()            # embed as config.model.audio.log_mel, say
    out = log_mel.audio_frames(waveform, length, config)
    out["segments"]       # float32 [B, A, n_mels, segment_frames], per-clip normalised dB
    out["column_mask"]    # bool [B, A, segment_frames], True on real STFT frames
    out["segment_mask"]   # bool [B, A], True when the segment holds any real frame

Input: `waveform` [B, S] int16 PCM (scaled by 1/32768) or float in [-1, 1], at
`config.sample_rate`, zero-padded after `length` [B] real samples (`preprocessing.audio`).

Steps (each a public function; 1-3 are checked against librosa 0.11 in tests/test_log_mel.py):
  1. `power_spectrogram`: samples past `length` are zeroed, the signal is padded with n_fft/2
     zeros on both sides (librosa's center=True, pad_mode='constant'), framed every hop_length,
     windowed by a periodic Hann of win_length centred in n_fft, |rfft|^2 -> [B, F, n_fft/2 + 1],
     F = 1 + S // hop_length. Frame j is real when j <= length // hop_length (librosa's frame
     count of the unpadded signal), so the real frames equal librosa's on `waveform[:length]`.
  2. `mel_filterbank` (NumPy, a constant of the trace) and 10 log10(max(mel, amin)) (dB, no
     top_db clipping, librosa.power_to_db(ref=1.0)).
  3. `normalize`: (x - mean) / max(std, std_floor) with mean and std over the real frames and
     all bands of each clip, so padding never changes the statistics (and the level of a clip
     carries no information); padded frames are set to 0.
  4. `segment`: A = num_segments windows of segment_frames STFT frames, window i centred on the
     centre of the i-th of A equal parts of the real frames (clamped inside them), as
     `preprocessing.video` picks the centre frame of T equal parts: audio segment i lines up with
     video step i. Windows overlap when a part is shorter than segment_frames (1 s parts and
     1.28 s windows for a 5 s clip and A = 5) and run into the (masked) padding when the whole
     clip is shorter than one window.

Parameters (the authors never published theirs; Augusma et al. 2023 only say each audio frame is
an image of at least 106 x 106, which their CNN's valid convolutions need):
  * 16 kHz, 25 ms Hann window (400 samples) in a 512-point FFT, 10 ms hop (160), 128 mel bands,
    20 Hz - 8 kHz: the front end of AST (Gong et al., Interspeech 2021, via Kaldi fbank, which
    rounds the 400-sample window up to a 512-point FFT and cuts at 20 Hz). VGGish frames the
    same way (16 kHz, 25 ms / 10 ms) and PANNs use 10 ms hops, both with 64 bands: too few for
    the CNN's 106-pixel height.
  * segment_frames = 128 (1.28 s): at least 106, and a 128 x 128 image leaves 2 x 2 before the
    CNN's AdaptiveAvgPool2d((1, 2)) (106 -> 1 x 1).
  * Slaney mel scale with Slaney (equal-area) normalisation, librosa's default and PANNs' choice:
    each band then measures a spectral density, so the wide high bands do not dominate the
    per-clip statistics by width alone; at 128 bands and a 31.25 Hz bin spacing every band still
    holds at least one FFT bin (HTK spacing is finer below 1 kHz and leaves some empty).
    'htk' and mel_norm='none' are available (both tested against librosa).
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", "none")
NORMALIZATIONS = ("clip", "none")


def default_config() -> ml_collections.ConfigDict:
  """The log-mel settings (see the module docstring for the sources)."""
  return ml_collections.ConfigDict(dict(
      sample_rate=16_000,  # Hz, as preprocessing.audio decodes.
      n_fft=512,  # FFT size; the window is zero-padded to it (Kaldi/AST).
      win_length=400,  # 25 ms Hann window.
      hop_length=160,  # 10 ms.
      n_mels=128,  # AST; >= 106, the CNN's minimum height.
      fmin=20.0,  # Hz, Kaldi's low cut (AST).
      fmax=8_000.0,  # Hz, Nyquist at 16 kHz.
      mel_scale="slaney",  # 'slaney' or 'htk'.
      mel_norm="slaney",  # 'slaney' (equal area) or 'none' (peak 1).
      amin=1e-10,  # power floor before dB (-100 dB).
      normalize="clip",  # 'clip' (mean/std over the clip's real frames) or 'none'.
      std_floor=0.1,  # dB; real clips spread over tens of dB, a silent one normalises to ~0.
      num_segments=5,  # A audio frames per clip (the authors' default; 75 an option).
      segment_frames=128,  # STFT frames per segment (1.28 s); >= 106 for the CNN.
  ))


def _check(config) -> None:
  if not 0 < config.win_length <= config.n_fft:
    raise ValueError(f"win_length must be in (0, n_fft={config.n_fft}], got {config.win_length}")
  if not 0 <= config.fmin < config.fmax <= config.sample_rate / 2:
    raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2, got {config.fmin}, "
                     f"{config.fmax}")
  for key, allowed in (("mel_scale", MEL_SCALES), ("mel_norm", MEL_NORMS),
                       ("normalize", NORMALIZATIONS)):
    if config[key] not in allowed:
      raise ValueError(f"{key} must be one of {allowed}, got {config[key]!r}")
  if config.num_segments < 1 or config.segment_frames < 1:
    raise ValueError("num_segments and segment_frames must be >= 1")


def _hz_to_mel(hz: np.ndarray, scale: str) -> np.ndarray:
  if scale == "htk":
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  # Slaney: linear (3 bands per 200 Hz) below 1 kHz, logarithmic (27 bands per octave x 6.4) above.
  log_step = np.log(6.4) / 27.0
  return np.where(hz < 1000.0, hz * 3.0 / 200.0,
                  15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) / log_step)


def _mel_to_hz(mel: np.ndarray, scale: str) -> np.ndarray:
  if scale == "htk":
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  log_step = np.log(6.4) / 27.0
  return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp(log_step * (mel - 15.0)))


def mel_filterbank(config) -> np.ndarray:
  """float32 [n_fft // 2 + 1, n_mels]: triangular filters, as librosa.filters.mel."""
  freqs = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(np.float64(config.fmin), config.mel_scale),
                                 _hz_to_mel(np.float64(config.fmax), config.mel_scale),
                                 config.n_mels + 2), config.mel_scale)
  lower = (freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
  upper = (edges[2:, None] - freqs[None, :]) / np.diff(edges)[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  if config.mel_norm == "slaney":
    weights *= 2.0 / (edges[2:] - edges[:-2])[:, None]
  return weights.T.astype(np.float32)


def _window(config) -> np.ndarray:
  """float32 [n_fft]: periodic Hann of win_length, centred in n_fft (librosa's pad_center)."""
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.win_length) / config.win_length)
  left = (config.n_fft - config.win_length) // 2
  return np.pad(hann, (left, config.n_fft - config.win_length - left)).astype(np.float32)


def real_frames(length: jnp.ndarray, num_frames: int, hop_length: int) -> jnp.ndarray:
  """int32 [B]: STFT frames of `length` real samples (1 + length // hop, 0 without samples)."""
  count = jnp.where(length > 0, 1 + length // hop_length, 0)
  return jnp.minimum(count, num_frames).astype(jnp.int32)


def power_spectrogram(waveform: jnp.ndarray, length: jnp.ndarray, config) -> jnp.ndarray:
  """float32 [B, F, n_fft // 2 + 1] power spectrum of [B, S] samples (step 1 of the docstring)."""
  x = waveform.astype(jnp.float32)
  if jnp.issubdtype(waveform.dtype, jnp.integer):
    x = x / 32768.0
  x = jnp.where(jnp.arange(x.shape[1])[None, :] < length[:, None], x, 0.0)
  half = config.n_fft // 2
  x = jnp.pad(x, ((0, 0), (half, half)))
  num_frames = 1 + waveform.shape[1] // config.hop_length
  index = (config.hop_length * np.arange(num_frames)[:, None] + np.arange(config.n_fft)[None, :])
  frames = x[:, index] * _window(config)
  spectrum = jnp.fft.rfft(frames, axis=-1)
  return jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2


def log_mel_spectrogram(waveform: jnp.ndarray, length: jnp.ndarray,
                        config) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(float32 [B, F, n_mels] dB, bool [B, F] real-frame mask) of [B, S] samples."""
  _check(config)
  power = power_spectrogram(waveform, length, config)
  # Full float32 matmul: TPUs' default precision (bfloat16 passes) would cost ~0.1 dB.
  mel = jnp.matmul(power, mel_filterbank(config), precision="highest")
  db = 10.0 * jnp.log10(jnp.maximum(mel, config.amin))
  frames = jnp.arange(db.shape[1])[None, :]
  return db, frames < real_frames(length, db.shape[1], config.hop_length)[:, None]


def normalize(features: jnp.ndarray, frame_mask: jnp.ndarray, std_floor: float) -> jnp.ndarray:
  """[B, F, M] features standardised per clip over its real frames; 0 on padded frames."""
  mask = frame_mask[:, :, None]
  count = jnp.maximum(jnp.sum(frame_mask, axis=1) * features.shape[2], 1)[:, None, None]
  mean = jnp.sum(jnp.where(mask, features, 0.0), axis=(1, 2), keepdims=True) / count
  var = jnp.sum(jnp.where(mask, (features - mean) ** 2, 0.0), axis=(1, 2), keepdims=True) / count
  return jnp.where(mask, (features - mean) / jnp.maximum(jnp.sqrt(var), std_floor), 0.0)


def segment(features: jnp.ndarray, num_real: jnp.ndarray, num_segments: int,
            segment_frames: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """A windows of [B, F, M] features (step 4 of the docstring).

  num_real: int [B] real frames per clip. Returns (float [B, A, M, W] with 0 on padded
  columns, bool [B, A, W] column mask), W = segment_frames.
  """
  width = segment_frames
  if features.shape[1] < width:
    features = jnp.pad(features, ((0, 0), (0, width - features.shape[1]), (0, 0)))
  parts = jnp.arange(num_segments)
  centre = ((2 * parts[None, :] + 1) * num_real[:, None]) // (2 * num_segments)
  start = jnp.clip(centre - width // 2, 0, jnp.maximum(num_real - width, 0)[:, None])
  index = start[:, :, None] + jnp.arange(width)[None, None, :]  # [B, A, W]
  columns = jnp.take_along_axis(features, index.reshape(index.shape[0], -1)[:, :, None], axis=1)
  columns = columns.reshape(*index.shape, features.shape[2])  # [B, A, W, M]
  mask = index < num_real[:, None, None]
  segments = jnp.where(mask[..., None], columns, 0.0)
  return jnp.swapaxes(segments, 2, 3), mask


def audio_frames(waveform: jnp.ndarray, length: jnp.ndarray, config) -> dict[str, jnp.ndarray]:
  """The model's audio input from [B, S] samples with [B] real lengths (module docstring)."""
  features, frame_mask = log_mel_spectrogram(waveform, length, config)
  if config.normalize == "clip":
    features = normalize(features, frame_mask, config.std_floor)
  num_real = jnp.sum(frame_mask, axis=1)
  segments, column_mask = segment(features, num_real, config.num_segments,
                                  config.segment_frames)
  return {"segments": segments, "column_mask": column_mask,
          "segment_mask": jnp.any(column_mask, axis=2)}
