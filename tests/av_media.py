"""Test media written with PyAV: small clips with chosen containers, codecs and sound.

`write_clip` makes a video whose frame k is a flat grey of level `frame_level(k)` (so a decoded
frame tells its index) with an optional audio track given as float samples; `beeps` makes a
sound that marks chosen frames.
"""
import av
import numpy as np

QUIET_X265 = {"x265-params": "log-level=none"}


def frame_level(k: int) -> int:
  """Grey level of frame k (distinct for k < 20, then repeating; far from black and white)."""
  return 30 + 10 * (k % 20)


def beeps(times: list[float], seconds: float, rate: int, freq: float = 1000.0,
          beep_seconds: float = 0.03) -> np.ndarray:
  """float32 [seconds * rate]: silence with a sine beep of amplitude 0.5 starting at each time."""
  out = np.zeros(round(seconds * rate), np.float32)
  n = round(beep_seconds * rate)
  burst = 0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)
  for t in times:
    start = round(t * rate)
    out[start:start + n] = burst[:len(out) - start]
  return out


def write_clip(path, *, audio: np.ndarray | None = None, audio_rate: int = 48000,
               audio_codec: str = "aac", layout: str = "mono", audio_first: bool = False,
               video_codec: str = "libx264", num_frames: int = 20, fps: int = 10,
               width: int = 64, height: int = 48, audio_offset: float = 0.0,
               container_options: dict | None = None) -> None:
  """Writes a clip of `num_frames` flat-grey frames and, when given, `audio`.

  audio: float [n] (copied to every channel of `layout`) or [channels, n], in [-1, 1].
  audio_first: the audio stream is stream 0, before the video.
  audio_offset: seconds after the first video frame at which the audio starts.
  """
  with av.open(str(path), "w", options=container_options or {}) as container:
    def add_audio():
      return container.add_stream(audio_codec, rate=audio_rate, layout=layout)

    def add_video():
      options = QUIET_X265 if video_codec in ("libx265", "hevc") else {}
      stream = container.add_stream(video_codec, rate=fps, options=options)
      stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
      return stream

    a_stream = add_audio() if audio is not None and audio_first else None
    v_stream = add_video()
    if audio is not None and not audio_first:
      a_stream = add_audio()
    for k in range(num_frames):
      image = np.full((height, width, 3), frame_level(k), np.uint8)
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      frame.pts = k
      container.mux(v_stream.encode(frame))
    container.mux(v_stream.encode())
    if audio is None:
      return
    channels = av.AudioLayout(layout).nb_channels
    samples = np.broadcast_to(np.atleast_2d(audio), (channels, np.shape(audio)[-1]))
    for start in range(0, samples.shape[1], 1000):
      chunk = np.ascontiguousarray(samples[:, start:start + 1000], np.float32)
      frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
      frame.sample_rate, frame.pts = audio_rate, start + round(audio_offset * audio_rate)
      container.mux(a_stream.encode(frame))
    container.mux(a_stream.encode())
