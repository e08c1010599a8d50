"""Audio decoding with PyAV: the clip's sound as 16 kHz mono int16, aligned with its video frames.

    plan = video.plan_sampling(path, num_frames=5)
    clip = read_audio(path, plan, num_samples=80_000)   # 5 s at 16 kHz
    clip.waveform[:clip.length]                          # the real samples; zeros after them

The first audio stream is decoded whatever its position (it may come before the video), container
and codec (tested: AAC, MP3, Opus and PCM in mp4, mov and mkv). FFmpeg's libswresample (PyAV's
`AudioResampler`, as `ffmpeg -ac 1 -ar 16000` does) downmixes to mono with FFmpeg's standard
matrix, (L + R) / 2 for stereo, and resamples to `sample_rate`.

Timing follows `preprocessing.video`: the clip is the N demuxed video frames from the video
stream's start time, lasting N / fps seconds (`plan.num_decodable / plan.fps`). Sample 0 of the
waveform is the video's start time, so frame k (shown at k / fps) starts at sample k * rate / fps.
Decoded audio is placed by the timestamp of its first frame and taken as contiguous after it;
audio starting after the video is preceded by zeros, audio ending before it shortens `length`.
Without a plan the window runs from the video's start (the audio's, when there is no video) to
the end of the audio (its end as declared by the container, when it declares one).

Fixed length: the waveform has `num_samples` samples (default: the window's length, capped at
`max_seconds`), zero-padded or truncated; `length` counts the real samples among them.

Audio problems never raise: a file that cannot be opened, without an audio stream, with an audio
stream whose packets end more than `TRUNCATION_TOLERANCE` before the end its container declares
(a file cut short; PCM in mov counts samples, not packets, so packet counts cannot tell), or with
any decoding error (corrupt data) gives `has_audio=False`, a zero waveform, length 0, `reason`.
A partly decodable track is dropped rather than kept: a hole would shift all later samples, and
a track cut short would look like a clip that fell silent. The video itself is checked by
`preprocessing.video`, which raises for the same faults.
"""
from __future__ import annotations

import dataclasses
import os

import av
import numpy as np

from preprocessing.video import SamplingPlan

SAMPLE_RATE = 16_000
MAX_SECONDS = 10.0
TRUNCATION_TOLERANCE = 0.1  # seconds; an AAC/MP3/Opus packet lasts 20-26 ms.


@dataclasses.dataclass(frozen=True)
class AudioClip:
  """The sound of one clip.

  waveform: int16 [num_samples], mono at `sample_rate`; zeros after `length`.
  length: real samples at the start of `waveform` (0 without audio).
  has_audio: False when the file has no usable audio; `reason` says why ('' when usable).
  start_seconds: time of sample 0 on the file's timeline (the video's start time).
  source_rate, source_channels, codec: of the decoded stream (0, 0, '' without one).
  """
  waveform: np.ndarray
  length: int
  sample_rate: int
  has_audio: bool
  reason: str = ""
  start_seconds: float = 0.0
  source_rate: int = 0
  source_channels: int = 0
  codec: str = ""

  @property
  def mask(self) -> np.ndarray:
    """bool [num_samples]: True on the real samples."""
    return np.arange(len(self.waveform)) < self.length


def read_audio(path: str | os.PathLike, plan: SamplingPlan | None = None, *,
               sample_rate: int = SAMPLE_RATE, num_samples: int | None = None,
               max_seconds: float = MAX_SECONDS) -> AudioClip:
  """The clip's audio as `AudioClip` (see the module docstring); never raises for audio faults.

  plan: the video's sampling plan, which fixes the clip's duration (N / fps seconds).
  num_samples: output length; None = the window's length, at most `max_seconds`.
  """
  duration = plan.num_decodable / plan.fps if plan is not None and plan.fps > 0 else None
  cap = round(max_seconds * sample_rate)
  size = num_samples
  if size is None and duration is not None:
    size = min(round(duration * sample_rate), cap)

  def silent(reason: str, **meta) -> AudioClip:
    return AudioClip(np.zeros(size or 0, np.int16), 0, sample_rate, False, reason, **meta)

  try:
    container = av.open(str(path))
  except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
    return silent(f"cannot open: {e}")
  with container:
    if not container.streams.audio:
      return silent("no audio stream")
    stream = container.streams.audio[0]
    meta = dict(source_rate=stream.codec_context.sample_rate or 0,
                source_channels=stream.codec_context.layout.nb_channels, codec=stream.codec.name)
    start = _start_seconds(container.streams.video[0]) if container.streams.video else None
    stop = None if start is None or duration is None else start + duration
    try:
      decoded, first_time, packets_end = _decode_mono(container, stream, sample_rate, stop)
    except av.FFmpegError as e:
      return silent(f"corrupt audio: {e}", **meta)
    declared_end = (_start_seconds(stream) + float(stream.duration * stream.time_base)
                    if stream.duration else None)
    if declared_end is not None and packets_end < declared_end - TRUNCATION_TOLERANCE:
      return silent(f"truncated audio: the packets end at {packets_end:.3f} s, the container "
                    f"declares {declared_end:.3f} s", **meta)
  if first_time is None:
    return silent("the audio stream holds no samples", **meta)
  if start is None:
    start = first_time
  if duration is None:  # To the audio's declared end (AAC decoders add padding after it).
    duration = (declared_end or first_time + len(decoded) / sample_rate) - start
  offset = round((start - first_time) * sample_rate)  # Decoded samples before the window start.
  window = decoded[offset:] if offset >= 0 else np.concatenate(
      [np.zeros(-offset, np.int16), decoded])
  window = window[:max(0, round(duration * sample_rate))]
  if size is None:
    size = min(len(window), cap)
  length = min(len(window), size)
  waveform = np.zeros(size, np.int16)
  waveform[:length] = window[:length]
  return AudioClip(waveform, length, sample_rate, True, "", start, **meta)


def _start_seconds(stream: av.stream.Stream) -> float:
  """Start time of `stream` in seconds (0 when the container gives none)."""
  if stream.start_time is None or stream.time_base is None:
    return 0.0
  return float(stream.start_time * stream.time_base)


def _decode_mono(container, stream, sample_rate: int,
                 stop: float | None) -> tuple[np.ndarray, float | None, float]:
  """(int16 mono waveform at `sample_rate`, time of its first sample or None, end time of the
  last packet in seconds).

  Decodes up to the first frame starting at or after `stop` (all of it when None), but demuxes
  every packet, so that the stream's end can be checked against the container's declaration.
  """
  resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
  chunks, first_time, packets_end, done = [], None, 0.0, False
  for packet in container.demux(stream):
    if packet.pts is not None:  # The final flush packet has none.
      packet_end = (packet.pts + (packet.duration or 0)) * packet.time_base
      packets_end = max(packets_end, float(packet_end))
    if done:
      continue
    for frame in stream.decode(packet):
      if first_time is None:
        first_time = frame.time if frame.time is not None else _start_seconds(stream)
      chunks.extend(out.to_ndarray()[0] for out in resampler.resample(frame))
      if stop is not None and frame.time is not None and frame.time >= stop:
        done = True
  chunks.extend(out.to_ndarray()[0] for out in resampler.resample(None))
  waveform = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
  return waveform, first_time, packets_end
