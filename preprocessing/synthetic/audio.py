"""The sound of a synthetic clip: crowd babble plus an event planted by the group category.

    wave = synthesize(seed=(0, 3, clip), group_category=0, seconds=4.0)   # int16 [64000]
    add_audio_track("clip.mp4", wave)                   # the mp4 of dataset.write_mp4 gains AAC

Every clip has babble: 4-7 overlapping talkers (harmonic voices at 120-240 Hz, each syllable of
0.1-0.35 s with one of five vowels' formants) over pink room noise high-passed at 120 Hz. The
planted rule (see `rules.GROUP_CATEGORIES`):
  * positive: laughter, 2-3 bursts of 4-8 "ha" pulses (about 5 per second) of breathy voices at
    260-450 Hz with an open-vowel formant (F1 ~ 800 Hz, F2 ~ 1300 Hz);
  * negative: booing, 1-2 long (1.5-2.5 s) groans of 3 low voices in near unison (F0 70-110 Hz,
    gliding down by 10-40 %, below the babble's) with a closed "oo" formant (F1 ~ 320 Hz);
  * neutral: no event.
The event's level relative to the babble is drawn from EVENT_SNR_DB per clip, then the whole clip
is scaled to TARGET_RMS_DBFS: loudness carries no information, only the spectro-temporal shape.

The sound is made with NumPy only, from a seed (an int or a tuple such as (seed, 3, clip), beside
the world's (seed, 2, clip)): the same seed gives the same samples, and `add_audio_track` (PyAV)
the same bytes (FFmpeg's native AAC encoder is deterministic and the video packets are copied,
not re-encoded).
"""
from __future__ import annotations

import os
import pathlib

import av
import numpy as np

from preprocessing.synthetic import rules

SAMPLE_RATE = 16_000
TARGET_RMS_DBFS = -23.0
EVENT_SNR_DB = (6.0, 15.0)   # event RMS over babble RMS, drawn per clip
ROOM_NOISE_DB = -25.0        # pink noise below the babble
ROOM_NOISE_LOW_HZ = 120.0    # room noise high-passed (as by a recorder's rumble filter)
AAC_BITRATE = 64_000
MAX_HARMONIC_HZ = 5_000.0    # voices carry little energy above

_OPEN_VOWEL = (800.0, 1300.0)     # "ah" F1, F2
_CLOSED_VOWEL = (320.0, 800.0)    # "oo"
_VOWELS = ((730.0, 1090.0), (270.0, 2290.0), (530.0, 1840.0), (570.0, 840.0), (440.0, 1020.0))


def _rms(x: np.ndarray) -> float:
  return float(np.sqrt(np.mean(x ** 2)) + 1e-12)


def harmonic_source(f0: np.ndarray, sample_rate: int, breath: float = 0.0,
                    rng: np.random.Generator | None = None) -> np.ndarray:
  """float64 [n]: a band-limited sawtooth on the pitch track `f0` [n] (Hz), harmonic k at
  amplitude 1/k below Nyquist and (where f0 is lowest) MAX_HARMONIC_HZ, plus `breath` x white
  noise of the same RMS."""
  phase = 2 * np.pi * np.cumsum(f0) / sample_rate
  # sin(k phase) by the recurrence sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x): no sin per k.
  twice_cos, previous, current = 2 * np.cos(phase), np.zeros_like(phase), np.sin(phase)
  source = np.zeros_like(phase)
  for k in range(1, int(min(MAX_HARMONIC_HZ / f0.min(), sample_rate / 2 / f0.max())) + 1):
    source += current / k
    previous, current = current, twice_cos * current - previous
  if breath:
    source += breath * _rms(source) * rng.standard_normal(len(f0))
  return source


def formant_filter(signal: np.ndarray, formants: tuple[float, ...], sample_rate: int) -> np.ndarray:
  """float64 [n]: `signal` through Gaussian formant peaks (bandwidth 150 Hz, on a floor of 0.05),
  cut at MAX_HARMONIC_HZ."""
  freqs = np.fft.rfftfreq(len(signal), 1 / sample_rate)
  response = sum(np.exp(-0.5 * ((freqs - f) / 150.0) ** 2) for f in formants) + 0.05
  response[freqs >= MAX_HARMONIC_HZ] = 0.0
  return np.fft.irfft(np.fft.rfft(signal) * response, len(signal))


def _envelope(n: int, sample_rate: int, onsets: np.ndarray, durations: np.ndarray) -> np.ndarray:
  """float64 [n]: a raised-cosine bump of each duration at each onset (seconds)."""
  env = np.zeros(n)
  for onset, duration in zip(onsets, durations):
    start, size = round(onset * sample_rate), max(2, round(duration * sample_rate))
    bump = np.sin(np.pi * np.arange(size) / size) ** 2
    env[start:start + size] += bump[:max(0, n - start)]
  return env


def pink_noise(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
  """float64 [n], unit RMS, power falling 3 dB per octave from ROOM_NOISE_LOW_HZ (none below)."""
  spectrum = np.fft.rfft(rng.standard_normal(n))
  freqs = np.fft.rfftfreq(n, 1 / sample_rate)
  spectrum *= np.where(freqs >= ROOM_NOISE_LOW_HZ, 1 / np.sqrt(np.maximum(freqs, 1.0)), 0.0)
  noise = np.fft.irfft(spectrum, n)
  return noise / _rms(noise)


def babble(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
  """float64 [n]: overlapping talkers over room noise (module docstring). Each syllable takes one
  of five vowels at random, so the average spectrum varies little from clip to clip."""
  seconds = n / sample_rate
  t = np.arange(n) / sample_rate
  out = np.zeros(n)
  for _ in range(rng.integers(4, 8)):
    base = rng.uniform(120.0, 240.0)
    f0 = base * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 6.3)))
    source = harmonic_source(f0, sample_rate)
    syllables = rng.uniform(0, seconds, rng.integers(int(2 * seconds), int(4 * seconds) + 1))
    durations = rng.uniform(0.1, 0.35, len(syllables))
    vowels = rng.integers(len(_VOWELS), size=len(syllables))
    talk = sum(formant_filter(source, _VOWELS[v], sample_rate)
               * _envelope(n, sample_rate, syllables[vowels == v], durations[vowels == v])
               for v in np.unique(vowels))
    out += rng.uniform(0.5, 1.0) * talk
  return out + _rms(out) * 10 ** (ROOM_NOISE_DB / 20) * pink_noise(n, sample_rate, rng)


def laughter(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
  """float64 [n]: 2-3 bursts of "ha" pulses (module docstring)."""
  seconds = n / sample_rate
  out = np.zeros(n)
  for _ in range(rng.integers(2, 4)):
    pulses = rng.integers(4, 9)
    period = rng.uniform(0.17, 0.23)
    onset = rng.uniform(0, max(0.0, seconds - pulses * period))
    f0 = rng.uniform(260.0, 450.0) * np.linspace(1.1, 0.9, n)
    ha = formant_filter(harmonic_source(f0, sample_rate, 0.5, rng), _OPEN_VOWEL, sample_rate)
    onsets = onset + period * np.arange(pulses)
    out += ha * _envelope(n, sample_rate, onsets, rng.uniform(0.08, 0.15, pulses))
  return out


def booing(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
  """float64 [n]: 1-2 low gliding groans of 3 voices in near unison (module docstring)."""
  seconds = n / sample_rate
  out = np.zeros(n)
  for _ in range(rng.integers(1, 3)):
    duration = min(rng.uniform(1.5, 2.5), seconds)
    onset = rng.uniform(0, seconds - duration)
    glide = np.linspace(1.0, 1.0 - rng.uniform(0.1, 0.4), n)
    base = rng.uniform(70.0, 110.0)
    groan = formant_filter(sum(harmonic_source(base * rng.uniform(0.97, 1.03) * glide, sample_rate)
                               for _ in range(3)), _CLOSED_VOWEL, sample_rate)
    out += groan * _envelope(n, sample_rate, [onset], [duration])
  return out


EVENTS = {"positive": laughter, "neutral": None, "negative": booing}


def synthesize(seed, group_category: int, seconds: float,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """int16 [round(seconds * sample_rate)]: babble plus the category's event, at TARGET_RMS_DBFS."""
  rng = np.random.default_rng(seed)
  n = round(seconds * sample_rate)
  mix = babble(n, sample_rate, rng)
  event = EVENTS[rules.GROUP_CATEGORIES[group_category]]
  if event is not None:
    sound = event(n, sample_rate, rng)
    snr_db = rng.uniform(*EVENT_SNR_DB)
    mix = mix + sound * _rms(mix) / _rms(sound) * 10 ** (snr_db / 20)
  mix *= 10 ** (TARGET_RMS_DBFS / 20) / _rms(mix)
  return np.round(np.clip(mix, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def add_audio_track(video_path: str | os.PathLike, waveform: np.ndarray,
                    sample_rate: int = SAMPLE_RATE, out_path: str | os.PathLike | None = None,
                    bitrate: int = AAC_BITRATE) -> None:
  """Writes `video_path`'s video stream (packets copied, not re-encoded) plus `waveform` (int16
  [n], mono) as an AAC track starting with the video, to `out_path` (default: replaces
  `video_path`, through a `.partial` file so that `out_path` never holds half a clip).

  The container format follows `out_path`'s extension (mp4, mov, mkv). The audio is written as
  given: pass as many samples as the video lasts (frames / fps seconds).
  """
  target = pathlib.Path(out_path or video_path)
  partial = target.with_name(target.stem + ".partial" + target.suffix)
  with av.open(str(video_path)) as source, av.open(str(partial), "w") as sink:
    video_in = source.streams.video[0]
    video_out = sink.add_stream_from_template(video_in)
    audio_out = sink.add_stream("aac", rate=sample_rate, layout="mono")
    audio_out.bit_rate = bitrate
    for packet in source.demux(video_in):
      if packet.dts is None:  # The demuxer's final flush packet.
        continue
      packet.stream = video_out
      sink.mux(packet)
    frame = av.AudioFrame.from_ndarray(np.asarray(waveform, np.int16)[None], format="s16",
                                       layout="mono")
    frame.sample_rate, frame.pts = sample_rate, 0
    sink.mux(audio_out.encode(frame))
    sink.mux(audio_out.encode())
  os.replace(partial, target)
