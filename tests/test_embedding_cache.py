"""The embedding cache of a frozen image encoder (GEMS's face encoder here): equal to the encoder
applied face by face, the same on any mesh and chunk size, keyed on content (labels, encoder
weights), atomic, and with a bounded encoder call."""
import dataclasses
import io
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import gems as gems_config
from gems_jax.data import input_pipeline
from gems_jax.data import planted
from gems_jax.data import tfds_writer
from gems_jax.models.gems import FaceEmotionClassifier
from gems_jax.training import checkpointing
from gems_jax.training import embedding_cache

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE_DIR = "face_cache"  # GemsTask's cache folder.
SPEC = planted.planted_spec(storage="crops", face_size=32)  # T=8, K=4; the runlocal Swin's size.
SPLITS = {"train": 7, "val": 3}  # With 4 clips per read: full, partial and padded batches.
CLIPS_PER_READ = 4


def _examples(seed_offset=0):
  return {split: planted.make_planted_examples(SPEC, n, seed=i + 1 + seed_offset)
          for i, (split, n) in enumerate(SPLITS.items())}


def _write_source(root, examples) -> str:
  return str(tfds_writer.write_dataset(root, SPEC, examples, overwrite=True))


def _model(config) -> FaceEmotionClassifier:
  fe = config.model.face_encoder
  return FaceEmotionClassifier(fe.name, dict(fe.overrides), SPEC.num_emotions)


def _config(data_dir, checkpoint="", chunk=16, mesh=(-1, 1)):
  config = gems_config.get_config("runlocal")
  config.input.data_dir = data_dir
  config.eval.batch_size = CLIPS_PER_READ
  config.input.face_cache_chunk = chunk
  config.model.face_encoder.frozen = True
  config.model.face_encoder.checkpoint = checkpoint
  config.mesh.data, config.mesh.fsdp = mesh
  return config


def _save_stage1(workdir, params, step):
  """A stage-1 workdir as training leaves it: `best/<step>` holding a state with params."""
  ckpt = checkpointing.Checkpoints(str(workdir))
  ckpt.save(step, {"params": params}, {}, best=True)
  ckpt.close()


def _read(data_dir, split) -> dict:
  """Every valid example of `split`, stacked (faces decoded for a crops dataset)."""
  n = input_pipeline.num_examples(data_dir, split)
  batch = next(iter(input_pipeline.iterate_split_once(data_dir, split, batch_size=n)))
  return {k: v for k, v in batch.items() if k != "valid"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
  return _write_source(tmp_path_factory.mktemp("source"), _examples())


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
  """(stage-1 workdir, its FaceEmotionClassifier params: encoder and heads)."""
  model = _model(_config(""))
  init = jax.jit(lambda crops: model.init(jax.random.key(7), crops)["params"])  # One compile.
  params = jax.device_get(init(jnp.zeros((1, 32, 32, 3), jnp.uint8)))
  workdir = tmp_path_factory.mktemp("stage1")
  _save_stage1(workdir, params, step=1)
  return str(workdir), params


def _reference(source, params) -> dict:
  """split -> float32 [n, T, K, E]: the encoder on each real crop alone, zeros elsewhere."""
  model = _model(_config(""))
  encode = jax.jit(lambda crop: model.apply({"params": params}, crop[None], method=model.features,
                                            train=False)[0])
  out = {}
  for split in SPLITS:
    clips = _read(source, split)
    emb = np.zeros(clips["face_mask"].shape + (32,), np.float32)
    for i, t, k in np.argwhere(clips["face_mask"]):
      emb[i, t, k] = encode(clips["faces"][i, t, k])
    out[split] = emb
  return out


@pytest.fixture(scope="module")
def reference(source, stage1):
  return _reference(source, stage1[1])


@pytest.fixture
def encoder_calls(monkeypatch):
  """Records (input shape, jitted function) of every encoder call of the cache builds."""
  calls = []
  init = embedding_cache._ChunkEncoder.__init__

  def spy_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    jitted = self.encode

    def encode(params, crops):
      calls.append((crops.shape, jitted))
      return jitted(params, crops)
    self.encode = encode

  monkeypatch.setattr(embedding_cache._ChunkEncoder, "__init__", spy_init)
  return calls


def _expected_calls(source, chunk) -> int:
  """Chunks per read batch (clips in storage order, CLIPS_PER_READ at a time), summed."""
  total = 0
  for split in SPLITS:
    counts = _read(source, split)["face_mask"].sum(axis=(1, 2))
    total += sum(-(-int(c.sum()) // chunk) for c in np.array_split(
        counts, range(CLIPS_PER_READ, len(counts), CLIPS_PER_READ)))
  return total


def _check_cache(cache_dir, source, reference):
  for split in SPLITS:
    src, got = _read(source, split), _read(cache_dir, split)
    assert set(got) == set(src) - {"faces"} | {"face_embedding"}
    for key in src:
      if key != "faces":
        np.testing.assert_array_equal(got[key], src[key], err_msg=key)  # Order and labels.
    np.testing.assert_allclose(got["face_embedding"], reference[split], atol=1e-5, rtol=0)
    assert not got["face_embedding"][~src["face_mask"]].any()  # Empty slots exactly 0.


# devices, mesh (data, fsdp), chunk asked, chunk used: 16 and 24 do not divide the face counts of
# most read batches, 5 is rounded up to whole crops per device.
MESHES = [(1, (1, 1), 16, 16), (8, (8, 1), 16, 16), (8, (2, 4), 24, 24), (8, (8, 1), 5, 8)]


@pytest.mark.parametrize("devices,mesh,chunk,used", MESHES)
def test_cache_equals_face_by_face_encoding_on_any_mesh_and_chunk(
    source, stage1, reference, tmp_path, encoder_calls, devices, mesh, chunk, used):
  config = _config(source, stage1[0], chunk, mesh)
  out = embedding_cache.prepare_input(config, str(tmp_path), devices=jax.devices()[:devices])
  assert out.input.data_dir.startswith(str(tmp_path / CACHE_DIR))
  _check_cache(out.input.data_dir, source, reference)
  # Bounded calls: only real faces, every call the same [chunk, S, S, 3] and one compiled program.
  assert encoder_calls and {shape for shape, _ in encoder_calls} == {(used, 32, 32, 3)}
  assert len(encoder_calls) == _expected_calls(source, used)
  assert len({id(f) for _, f in encoder_calls}) == 1
  assert isinstance(encoder_calls[0][1], jax.stages.Compiled)  # Takes no other shape.
  info = json.loads((tmp_path / CACHE_DIR / embedding_cache.INFO_FILE).read_text())
  num_faces = sum(int(_read(source, s)["face_mask"].sum()) for s in SPLITS)
  assert info["num_images"] == num_faces and info["encode_seconds"] > 0
  assert (info["chunk"], info["devices"]) == (used, devices)
  assert info["encoder_calls"] == len(encoder_calls)


def _with_whole_frames(examples: dict, spec) -> dict:
  """The examples of `examples` plus 2 whole frames each (random pixels, JPEG) of `spec`'s size."""
  rng = np.random.default_rng(5)
  out = {}
  for split, clips in examples.items():
    out[split] = []
    for example in clips:
      frames = np.empty(spec.num_whole_frames, dtype=object)
      for t in range(spec.num_whole_frames):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (*spec.whole_frame_size, 3), dtype=np.uint8)
                        ).save(buf, format="JPEG")
        frames[t] = buf.getvalue()
      out[split].append({**example, "whole_frames": frames,
                         "whole_frame_index": np.array([0, 4], np.int32),
                         "whole_frame_mask": np.ones(spec.num_whole_frames, bool)})
  return out


def test_a_faces_dataset_with_whole_frames_keeps_them_in_the_cache(tmp_path, stage1, reference):
  """The demo's dataset (faces and whole frames, for both model families): the face cache copies
  the whole frames as the JPEG bytes they are (an earlier cache wrote decoded pixels and failed)."""
  spec = dataclasses.replace(SPEC, num_whole_frames=2, whole_frame_size=(8, 12))
  examples = _with_whole_frames(_examples(), spec)
  source = str(tfds_writer.write_dataset(tmp_path / "source", spec, examples))
  out = embedding_cache.prepare_input(_config(source, stage1[0]), str(tmp_path / "run"))
  for split in SPLITS:
    cached = _read(out.input.data_dir, split)
    np.testing.assert_allclose(cached["face_embedding"], reference[split], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cached["whole_frames"], _read(source, split)["whole_frames"])
    raw = next(iter(input_pipeline.iterate_split_once(
        out.input.data_dir, split, batch_size=SPLITS[split], decode=(), keep_jpeg=True)))
    assert raw["whole_frames"].tolist() == [list(e["whole_frames"]) for e in examples[split]]
    assert "faces" not in raw


def test_calls_grow_with_the_dataset_but_not_their_size(tmp_path, stage1, encoder_calls):
  small = _write_source(tmp_path / "small", _examples())
  big_examples = {split: planted.make_planted_examples(SPEC, 4 * n, seed=10 + i)
                  for i, (split, n) in enumerate(SPLITS.items())}
  big = _write_source(tmp_path / "big", big_examples)
  embedding_cache.prepare_input(_config(small, stage1[0]), str(tmp_path / "w_small"))
  n_small = len(encoder_calls)
  embedding_cache.prepare_input(_config(big, stage1[0]), str(tmp_path / "w_big"))
  assert len(encoder_calls) - n_small == _expected_calls(big, 16) > 2 * n_small
  assert {shape for shape, _ in encoder_calls} == {(16, 32, 32, 3)}


def test_rebuilds_on_new_labels_or_weights_and_reuses_otherwise(tmp_path, stage1, encoder_calls):
  examples = _examples()
  source = _write_source(tmp_path / "source", examples)
  encoder_dir = tmp_path / "stage1"
  params = stage1[1]
  _save_stage1(encoder_dir, params, step=1)
  workdir = str(tmp_path / "work")
  info_path = tmp_path / "work" / CACHE_DIR / embedding_cache.INFO_FILE
  run = lambda: embedding_cache.prepare_input(_config(source, str(encoder_dir)), workdir).input.data_dir

  cache_dir = run()
  built = len(encoder_calls)
  info = info_path.read_text()
  assert built > 0
  assert run() == cache_dir and len(encoder_calls) == built  # Unchanged: reused, not re-encoded.
  assert info_path.read_text() == info

  # The dataset rebuilt in place with one corrected label: new labels, same embeddings.
  old = examples["val"][1]["group_emotion"]
  examples["val"][1]["group_emotion"] = np.int32((old + 1) % SPEC.num_emotions)
  _write_source(tmp_path / "source", examples)
  before = _read(cache_dir, "val")
  assert run() == cache_dir and len(encoder_calls) > built
  after = _read(cache_dir, "val")
  assert after["group_emotion"][1] == (old + 1) % SPEC.num_emotions
  np.testing.assert_array_equal(np.delete(after["group_emotion"], 1),
                                np.delete(before["group_emotion"], 1))
  np.testing.assert_array_equal(after["face_embedding"], before["face_embedding"])

  # Stage 1 retrained into the same workdir: new weights, new embeddings.
  built = len(encoder_calls)
  retrained = jax.tree.map(lambda x: x * 1.5, params)
  _save_stage1(encoder_dir, retrained, step=2)
  assert run() == cache_dir and len(encoder_calls) > built
  _check_cache(cache_dir, source, _reference(source, retrained))


def test_a_killed_build_leaves_no_cache(tmp_path, source, stage1, reference, monkeypatch):
  calls = {"n": 0}
  encode = embedding_cache._ChunkEncoder.__call__

  def dying(self, *args):
    calls["n"] += 1
    if calls["n"] == 3:
      raise KeyboardInterrupt  # As a kill would, mid-split.
    return encode(self, *args)

  monkeypatch.setattr(embedding_cache._ChunkEncoder, "__call__", dying)
  with pytest.raises(KeyboardInterrupt):
    embedding_cache.prepare_input(_config(source, stage1[0]), str(tmp_path))
  assert not (tmp_path / CACHE_DIR).exists()
  monkeypatch.setattr(embedding_cache._ChunkEncoder, "__call__", encode)
  out = embedding_cache.prepare_input(_config(source, stage1[0]), str(tmp_path))
  _check_cache(out.input.data_dir, source, reference)
  assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_DIR]  # No temp folders.


_WORKER = """
import sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from configs import gems as gems_config
from gems_jax.training import embedding_cache
config = gems_config.get_config("runlocal")
config.input.data_dir, config.model.face_encoder.checkpoint, workdir = sys.argv[3:6]
config.eval.batch_size = 4
config.input.face_cache_chunk = 8
config.model.face_encoder.frozen = True
for _ in range(2):  # The second run finds the cache up to date.
  print("DATA_DIR", embedding_cache.prepare_input(config, workdir).input.data_dir)
  print("INFO", open(f"{workdir}/face_cache/cache_info.json").read().replace("\\n", " "))
"""


@pytest.mark.slow
def test_two_processes_write_the_same_cache(tmp_path, source, stage1, reference):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, f"localhost:{port}", str(i), source,
                             stage1[0], str(tmp_path)], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outs = [proc.communicate(timeout=600)[0] for proc in procs]
  for proc, out in zip(procs, outs):
    assert proc.returncode == 0, out[-4000:]
  lines = lambda tag: {line for out in outs for line in out.splitlines() if line.startswith(tag)}
  dirs, infos = lines("DATA_DIR"), lines("INFO")
  assert len(dirs) == 1 and len(infos) == 1  # Both processes, both runs: one cache, built once.
  _check_cache(dirs.pop().split()[1], source, reference)
  info = json.loads((tmp_path / CACHE_DIR / embedding_cache.INFO_FILE).read_text())
  assert (info["processes"], info["devices"], info["chunk"]) == (2, 4, 8)
