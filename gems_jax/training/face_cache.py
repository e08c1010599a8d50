"""The frozen face encoder's embeddings, computed once per dataset and encoder.

The paper trains the Swin-B emotion encoder on individual emotions first (stage 1, `config.task =
'face'`) and freezes it for the GEMS model. With a frozen encoder, running it on every crop in every
epoch is wasted work, so `prepare_input` encodes each split once into a sibling dataset with
`storage='embeddings'` (in `<workdir>/face_cache/`), and training reads that instead.

`config.model.face_encoder.checkpoint` may name
  * a stage-1 workdir (it has `best/`): its FaceEmotionClassifier parameters (encoder + heads), or
  * the output folder of `python -m gems_jax.tools.convert_swin` (timm weights): encoder only.

Encoding streams over all devices and hosts: each process reads its shard of clips a batch at a
time (`config.eval.batch_size` clips over all processes), takes the real faces (face_mask on valid
clips; empty slots are never encoded) and encodes them in chunks of `config.input.face_cache_chunk`
crops over all devices ([chunk, S, S, 3], padded, so that one compiled function serves every chunk
and device memory holds one chunk's activations whatever the dataset and batch sizes). Process 0
scatters the embeddings back into [T, K, E] (zeros in empty slots) and writes the clips in source
order, so the cache is the same whatever the number of devices and hosts.

The cache is keyed on content (`cache_info.json`, 'key'): sha256 of the source dataset's files and
of the encoder parameters actually used, plus the encoder's name, overrides and dtype and the crop
size. So a dataset rebuilt in place (e.g. corrected labels) or a stage-1 encoder retrained in place
rebuilds it. It is written into a temporary folder renamed into place at the end: a killed build
is never taken for a complete cache.
"""
import collections
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from gems_jax import tasks as tasks_lib
from gems_jax.data import input_pipeline
from gems_jax.data import spec as spec_lib
from gems_jax.data import tfds_writer
from gems_jax.models.gems import FaceEmotionClassifier
from gems_jax.training import fingerprint
from gems_jax.training import sharding as shd
from gems_jax.training.checkpointing import read_face_encoder_params

CACHE_DIR = "face_cache"
INFO_FILE = "cache_info.json"
_FORMAT = 2  # Bump when what the cache holds changes for the same key inputs.
_TMP_PREFIX = ".face_cache.tmp-"


def _needs_cache(config, spec) -> bool:
  fe = config.model.face_encoder
  return (tasks_lib.REGISTRY[config.task].caches_face_embeddings and fe.frozen
          and config.input.face_embedding_cache and spec.storage == "crops")


def prepare_input(config: ml_collections.ConfigDict, workdir: str, *, devices=None
                  ) -> ml_collections.ConfigDict:
  """Returns the config to train with: input.data_dir switched to the embedding cache if needed.

  Every process calls it: all of them encode (on the mesh `config.mesh` over `devices`, default
  all, as in `sharding.make_mesh`), process 0 fingerprints, writes and decides for all.
  """
  if not config.input.data_dir:
    raise ValueError("config.input.data_dir is not set (the folder written by preprocessing.build)")
  spec = input_pipeline.load_spec(config.input.data_dir)
  if not _needs_cache(config, spec):
    return config
  model = _face_model(config, spec)
  params = _encoder_params(config, model, spec)
  crops = jax.ShapeDtypeStruct((1, spec.face_size, spec.face_size, 3), jnp.uint8)
  embed_dim = int(jax.eval_shape(functools.partial(_features, model), params, crops).shape[-1])
  cached_spec = dataclasses.replace(spec, storage="embeddings", embed_dim=embed_dim)
  dataset_dir = tfds_writer.dataset_path(os.path.join(workdir, CACHE_DIR), cached_spec)
  key, stale = None, False
  if jax.process_index() == 0:
    key = _cache_key(config, spec, params)
    stale = _stored_key(workdir, dataset_dir) != key
  if multihost_utils.broadcast_one_to_all(np.int32(stale)):
    encoder = _ChunkEncoder(model, params, shd.make_mesh(config.mesh, devices),
                            config.input.face_cache_chunk, spec.face_size, embed_dim)
    _build(config, cached_spec, encoder, workdir, key)
  else:
    logging.info("face embeddings cached in %s are up to date", dataset_dir)
  multihost_utils.sync_global_devices("face_cache")
  config = ml_collections.ConfigDict(config.to_dict())
  config.input.data_dir = str(dataset_dir)
  return config


def _face_model(config, spec) -> FaceEmotionClassifier:
  fe = config.model.face_encoder
  return FaceEmotionClassifier(fe.name, dict(fe.overrides), len(spec.emotion_names),
                               dtype=jnp.dtype(fe.dtype))


def _features(model: FaceEmotionClassifier, params, crops):
  """Encoder params {'encoder': ...}, uint8 crops [n, S, S, 3] -> float32 features [n, E]."""
  return model.apply({"params": params}, crops, method=model.features, train=False)


def _encoder_params(config, model: FaceEmotionClassifier, spec) -> dict:
  """Host (numpy) params {'encoder': ...}: the checkpoint's, or initialised from config.seed."""
  fe = config.model.face_encoder
  crops = jnp.zeros((1, spec.face_size, spec.face_size, 3), jnp.uint8)
  init = lambda c: model.init(jax.random.key(config.seed), c, method=model.features, train=False)
  if not fe.checkpoint:
    logging.warning("caching embeddings of a randomly initialised frozen face encoder; set "
                    "config.model.face_encoder.checkpoint to a stage-1 workdir")
    return jax.device_get(jax.jit(init)(crops)["params"])  # One compile, not one per op.
  params = {"encoder": read_face_encoder_params(fe.checkpoint)["encoder"]}
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(x.shape)
                         for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  if shapes(params) != shapes(jax.eval_shape(init, crops)["params"]):
    raise ValueError(f"face encoder checkpoint {fe.checkpoint}: its encoder does not match the "
                     f"configured encoder {fe.name} {dict(fe.overrides)}")
  return jax.device_get(params)


def _cache_key(config, spec, params) -> dict:
  """What the cached embeddings depend on, by content (JSON round-tripped, as read back)."""
  fe = config.model.face_encoder
  source = input_pipeline.resolve_dataset_dir(config.input.data_dir)
  start = time.perf_counter()
  key = {"format": _FORMAT, "dataset_sha256": fingerprint.directory_sha256(source),
         "encoder": {"name": fe.name, "overrides": dict(fe.overrides), "dtype": fe.dtype,
                     "face_size": spec.face_size, "params_sha256": fingerprint.tree_sha256(params)}}
  logging.info("fingerprinted %s and the face encoder in %.1f s", source,
               time.perf_counter() - start)
  return json.loads(json.dumps(key))


def _stored_key(workdir: str, dataset_dir: pathlib.Path) -> dict | None:
  """The key of the complete cache in `workdir`, or None if there is none."""
  info = os.path.join(workdir, CACHE_DIR, INFO_FILE)
  if not (os.path.exists(info) and (dataset_dir / spec_lib.META_FILENAME).exists()):
    return None
  with open(info) as f:
    return json.load(f).get("key")


class _ChunkEncoder:
  """The frozen encoder on fixed-size chunks of face crops spread over every device of `mesh`.

  A call encodes this process's faces in global chunks of `chunk` crops (uint8 [chunk, S, S, 3]
  split over the mesh's batch axes; `chunk` is rounded up to whole crops per device): this process
  fills its `local` rows of each chunk and pads the rest with black crops. Every process makes the
  same calls, however many faces it has: the number of chunks is the largest process's need (a
  small allgather of face counts). The function is compiled ahead of time for that one input shape
  (`compile_seconds`), so that a call of any other shape is an error, and the timed encoding pass
  holds no compilation. `calls` and `num_faces` (over all processes) count the work.
  """

  def __init__(self, model: FaceEmotionClassifier, params, mesh, chunk: int, face_size: int,
               embed_dim: int):
    if chunk < 1:
      raise ValueError(f"config.input.face_cache_chunk must be >= 1, got {chunk}")
    self.chunk = -(-chunk // mesh.size) * mesh.size
    self.local = self.chunk // jax.process_count()  # Processes own equal shares of the mesh.
    self.mesh, self.embed_dim = mesh, embed_dim
    shardings = shd.tree_shardings(params, mesh)
    self.params = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
        params, shardings)
    data = shd.batch_sharding(mesh)
    crops = jax.ShapeDtypeStruct((self.chunk, face_size, face_size, 3), jnp.uint8, sharding=data)
    start = time.perf_counter()
    self.encode = jax.jit(functools.partial(_features, model), in_shardings=(shardings, data),
                          out_shardings=data).lower(self.params, crops).compile()
    self.compile_seconds = time.perf_counter() - start
    self.calls = self.num_faces = 0

  def __call__(self, faces: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """faces uint8 [b, T, K, S, S, 3], slots int [n, 3] (b, t, k of each real face) ->
    float32 [m, E], m = chunks * local >= n: row i is the embedding of slots[i]; the rest pad."""
    counts = multihost_utils.process_allgather(np.int32(len(slots)))
    self.num_faces += int(counts.sum())
    rows, previous = [np.zeros((0, self.embed_dim), np.float32)], None
    for start in range(0, int(counts.max()), self.local):
      part = slots[start:start + self.local]
      crops = np.zeros((self.local,) + faces.shape[-3:], np.uint8)
      crops[:len(part)] = faces[tuple(part.T)]
      out = self.encode(self.params, shd.global_batch({"crops": crops}, self.mesh)["crops"])
      self.calls += 1
      if previous is not None:
        rows.append(_process_rows(previous))  # Fetched while `out` computes.
      previous = out
    if previous is not None:
      rows.append(_process_rows(previous))
    return np.concatenate(rows)


def _process_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in the order in which
  `make_array_from_process_local_data` took them (its devices' row blocks, ascending)."""
  blocks = {shard.index[0].start or 0: shard.data for shard in x.addressable_shards}
  return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])


def _split_examples(config, split: str, encoder: _ChunkEncoder):
  """Yields `split`'s examples with `face_embedding` in source order on process 0; the other
  processes make the same encoder calls and yield nothing.

  With n processes, process p reads clips p, p + n, p + 2n, ... (the input pipeline's shards) in
  batches of b, so batch j of all processes together holds clips j*b*n ... (j+1)*b*n - 1: process 0
  reads those again, undecoded, for their labels and strings (row r of process p is row r*n + p).
  Every shard yields the same number of (padded) batches, so all processes call the encoder alike.
  """
  n, me = jax.process_count(), jax.process_index()
  data_dir, b = config.input.data_dir, max(1, config.eval.batch_size // n)
  mine = input_pipeline.iterate_split_once(data_dir, split, batch_size=b, shard_index=me,
                                           shard_count=n, keep_strings=n == 1)
  together = None
  if me == 0 and n > 1:
    together = input_pipeline.iterate_split_once(data_dir, split, batch_size=b * n,
                                                 decode_faces=False)
  for batch in mine:
    real = batch["face_mask"] & batch["valid"][:, None, None]
    rows = multihost_utils.process_allgather(encoder(batch["faces"], np.argwhere(real)))
    if me == 0:
      yield from _with_embeddings(next(together) if together else batch, rows)


def _with_embeddings(batch: dict, rows: np.ndarray):
  """The valid clips of `batch` (b*n clips; row r*n + p is process p's row r), each with
  `face_embedding` float32 [T, K, E]: `rows[p]` [m, E] in process p's real slots, 0 elsewhere."""
  n = len(rows)
  real = batch["face_mask"] & batch["valid"][:, None, None]
  embedding = np.zeros(real.shape + rows.shape[-1:], np.float32)
  for p in range(n):
    r, t, k = np.argwhere(real[p::n]).T
    embedding[r * n + p, t, k] = rows[p, :len(r)]
  for i in np.flatnonzero(batch["valid"]):
    example = {key: value[i] for key, value in batch.items() if key not in ("faces", "valid")}
    example["face_embedding"] = embedding[i]
    yield example


def _build(config, cached_spec, encoder: _ChunkEncoder, workdir: str, key) -> None:
  """Encodes every split (all processes); process 0 writes the cache into a temporary folder in
  `workdir` and renames it to `<workdir>/face_cache` (the previous cache, if any, goes).

  cache_info.json holds the key and the work: `num_faces` (real faces encoded, all processes) and
  `encode_seconds`, the wall time of the streaming pass (reading and decoding clips, encoding,
  writing; the encoder's compilation is `compile_seconds`), so faces/s is what a user gets.
  """
  splits = {split: _split_examples(config, split, encoder)
            for split in input_pipeline.split_names(config.input.data_dir)}
  if jax.process_index() != 0:
    for examples in splits.values():
      collections.deque(examples, maxlen=0)  # Runs the encoder calls in step with process 0.
    return
  os.makedirs(workdir, exist_ok=True)
  for stale in pathlib.Path(workdir).glob(_TMP_PREFIX + "*"):
    shutil.rmtree(stale, ignore_errors=True)  # Left by a killed build.
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=workdir))
  try:
    logging.info("caching face embeddings of %s (chunks of %d faces on %d devices)",
                 config.input.data_dir, encoder.chunk, encoder.mesh.size)
    start = time.perf_counter()
    tfds_writer.write_dataset(tmp / CACHE_DIR, cached_spec, splits)
    seconds = time.perf_counter() - start
    info = {"key": key, "num_faces": encoder.num_faces, "encode_seconds": seconds,
            "faces_per_second": encoder.num_faces / seconds,
            "compile_seconds": encoder.compile_seconds, "encoder_calls": encoder.calls,
            "chunk": encoder.chunk, "devices": encoder.mesh.size,
            "processes": jax.process_count(), "source": os.path.abspath(config.input.data_dir),
            "checkpoint": config.model.face_encoder.checkpoint}
    (tmp / CACHE_DIR / INFO_FILE).write_text(json.dumps(info, indent=1))
    final = pathlib.Path(workdir) / CACHE_DIR
    if final.exists():
      os.replace(final, tmp / "replaced")
    os.replace(tmp / CACHE_DIR, final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info("cached %d face embeddings in %.1f s (%.1f faces/s, %d encoder calls) in %s",
               encoder.num_faces, seconds, info["faces_per_second"], encoder.calls, final)
