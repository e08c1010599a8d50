"""A small in-memory audio-visual world for the privacy model's learning tests.

Every clip has the synthetic world's sound (`preprocessing.synthetic.audio.synthesize`: babble,
plus laughter for positive, booing for negative, nothing for neutral, loudness-normalised) and
whole frames. The frames carry the category too, as a faint colour cast under noise, except on
"audio-led" clips, whose frames are grey noise: only the sound tells their category. No face field
exists ('privacy' kind).
"""
import io

import numpy as np
from PIL import Image

from gems_jax.data import spec as spec_lib
from preprocessing.synthetic import audio as synthetic_audio

SECONDS = 2.0
# Colour cast per category (RGB offsets on a grey background) on clips that are not audio-led.
CASTS = np.array([[40, 20, -30], [0, 0, 0], [-30, 0, 40]], np.float32)


def av_spec(frames: int = 5, size: int = 32) -> spec_lib.DatasetSpec:
  return spec_lib.DatasetSpec(
      name="planted_av", num_frames=1, max_faces=1, text_dim=4, kind="privacy",
      num_whole_frames=frames, whole_frame_size=(size, size),
      audio_samples=int(SECONDS * synthetic_audio.SAMPLE_RATE))


def _jpeg(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def make_av_examples(spec: spec_lib.DatasetSpec, n: int, seed: int, audio_led: float = 0.5,
                     shuffle_audio: bool = False) -> list[dict]:
  """n valid 'privacy' examples; `audio_led` of them show grey frames. With `shuffle_audio`, the
  sounds are permuted across the clips (the sound no longer belongs to the clip's category)."""
  rng = np.random.default_rng(seed)
  categories = rng.integers(0, 3, n)
  sounds = [synthetic_audio.synthesize((seed, i), int(c), SECONDS) for i, c in enumerate(categories)]
  if shuffle_audio:
    sounds = [sounds[j] for j in rng.permutation(n)]
  height, width = spec.whole_frame_size
  examples = []
  for i, category in enumerate(categories):
    led = rng.random() < audio_led
    frames = np.full(spec.num_whole_frames, b"", dtype=object)
    for t in range(spec.num_whole_frames):
      pixels = 128 + rng.normal(0, 30, (height, width, 3)) + (0 if led else CASTS[category])
      frames[t] = _jpeg(np.clip(pixels, 0, 255).astype(np.uint8))
    examples.append({
        "clip_id": f"av_{seed}_{i}", "source_video": f"av_{seed}_{i}.mp4",
        "description": "audio-led" if led else "",
        "whole_frames": frames, "whole_frame_index": np.arange(spec.num_whole_frames, dtype=np.int32),
        "whole_frame_mask": np.ones(spec.num_whole_frames, bool),
        "audio": sounds[i], "audio_length": len(sounds[i]), "has_audio": True,
        "text_embedding": np.zeros((spec.text_parts, spec.text_dim), np.float32),
        "text_mask": np.zeros(spec.text_parts, bool),
        "group_emotion": 8, "group_category": int(category),
        "valence": np.float32(np.nan), "arousal": np.float32(np.nan),
        "situational_emotion": np.zeros(spec.num_situational_emotions, np.float32),
        "situation": -1})
  return examples
