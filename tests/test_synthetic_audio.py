"""preprocessing.synthetic.audio: reproducible sound, level without information, an AAC track
added to a PyAV mp4 byte-for-byte reproducibly, and a planted category rule that survives AAC."""
import hashlib

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gems_jax.data import log_mel
from preprocessing import audio, video
from preprocessing.synthetic import audio as synthetic_audio
from preprocessing.synthetic import rules
from preprocessing.synthetic.dataset import write_mp4

FPS, SECONDS = 10, 3.0


@pytest.fixture(scope="module")
def silent_video(tmp_path_factory):
  """A 3 s H.264 mp4 written as the synthetic world writes its clips."""
  path = tmp_path_factory.mktemp("video") / "clip.mp4"
  write_mp4(path, np.full((int(SECONDS * FPS), 48, 64, 3), 90, np.uint8), FPS)
  return path


def test_same_seed_same_sound_and_level_carries_nothing():
  waves = {c: synthetic_audio.synthesize((5, c), c, SECONDS) for c in range(3)}
  for category, wave in waves.items():
    assert wave.dtype == np.int16 and wave.shape == (48_000,)
    np.testing.assert_array_equal(wave, synthetic_audio.synthesize((5, category), category,
                                                                   SECONDS))
    rms_db = 20 * np.log10(np.sqrt(np.mean((wave / 32768.0) ** 2)))
    assert rms_db == pytest.approx(synthetic_audio.TARGET_RMS_DBFS, abs=0.01)
  assert not np.array_equal(waves[1], synthetic_audio.synthesize((6, 1), 1, SECONDS))


def test_audio_track_is_byte_reproducible(tmp_path, silent_video):
  wave = synthetic_audio.synthesize((1, 2), 0, SECONDS)
  digests = []
  for name in ("a.mp4", "b.mp4"):
    synthetic_audio.add_audio_track(silent_video, wave, out_path=tmp_path / name)
    digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
  assert digests[0] == digests[1]
  other = synthetic_audio.synthesize((1, 3), 0, SECONDS)
  synthetic_audio.add_audio_track(silent_video, other, out_path=tmp_path / "c.mp4")
  assert hashlib.sha256((tmp_path / "c.mp4").read_bytes()).hexdigest() != digests[0]


def test_audio_track_keeps_the_video_and_decodes_aligned(tmp_path, silent_video):
  wave = synthetic_audio.synthesize((2, 0), 2, SECONDS)
  target = tmp_path / "clip.mp4"
  target.write_bytes(silent_video.read_bytes())
  synthetic_audio.add_audio_track(target, wave)  # In place.
  assert not list(tmp_path.glob("*.partial*"))

  def video_packets(path):
    with av.open(str(path)) as container:
      return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]

  assert video_packets(target) == video_packets(silent_video)
  plan = video.plan_sampling(target, 5)
  clip = audio.read_audio(target, plan)
  assert clip.has_audio and clip.codec == "aac" and clip.source_channels == 1
  assert clip.length == len(wave)
  assert np.corrcoef(clip.waveform, wave)[0, 1] > 0.99  # Same timing, up to AAC's loss.


def test_planted_category_survives_aac(tmp_path, silent_video):
  """Nearest centroid on log-mel band means, leave-one-out over 8 clips per category."""
  per_category = 8
  labels = np.repeat(np.arange(len(rules.GROUP_CATEGORIES)), per_category)
  waves = []
  for i, category in enumerate(labels):
    path = tmp_path / f"{i}.mp4"
    synthetic_audio.add_audio_track(
        silent_video, synthetic_audio.synthesize((10, i), int(category), SECONDS), out_path=path)
    clip = audio.read_audio(path, video.plan_sampling(path, 5))
    waves.append(clip.waveform)
  config = log_mel.default_config()

  @jax.jit
  def band_means(batch):
    length = jnp.full(batch.shape[0], batch.shape[1])
    db, mask = log_mel.log_mel_spectrogram(batch, length, config)
    return log_mel.normalize(db, mask, config.std_floor).mean(axis=1)  # [N, n_mels]

  features = np.asarray(band_means(np.stack(waves)))
  correct = 0
  for i in range(len(labels)):
    train = np.arange(len(labels)) != i
    centroids = np.stack([features[train & (labels == k)].mean(axis=0) for k in range(3)])
    correct += np.argmin(((centroids - features[i]) ** 2).sum(axis=1)) == labels[i]
  assert correct >= 22, f"{correct}/24 clips classified (chance: 8)"  # Measured: 24/24.
