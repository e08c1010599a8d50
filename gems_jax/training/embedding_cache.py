"""A frozen image encoder's embeddings, computed once per dataset and encoder.

The paper trains the Swin-B emotion encoder on individual emotions first (stage 1, `config.task =
'face'`) and freezes it for the GEMS model; the privacy audio-visual model may freeze its CLIP ViT.
With a frozen encoder, running it on every image in every epoch is wasted work, so `prepare_input`
encodes each split once into a sibling dataset that stores the embeddings instead of the JPEGs
(`<workdir>/<cache_name>/`, e.g. `face_cache/` with `face_embedding` for GEMS), and training reads
that instead. What is encoded, with which module and parameters, is the task's
`FrozenImageEncoder` (`Task.frozen_image_encoder()`; None = no cache): this module knows no model.

Encoding streams over all devices and hosts: each process reads its shard of clips a batch at a
time (`config.eval.batch_size` clips over all processes), takes the real images (mask True on valid
clips; empty slots are never encoded) and encodes them in chunks of `encoder.chunk` images over all
devices ([chunk, H, W, 3], padded, so that one compiled function serves every chunk and device
memory holds one chunk's activations whatever the dataset and batch sizes). Process 0 scatters the
embeddings back into the image slots (zeros in empty ones) and writes the clips in source order, so
the cache is the same whatever the number of devices and hosts.

The cache is keyed on content (`cache_info.json`, 'key'): sha256 of the source dataset's files and
of the encoder parameters actually used, plus the encoder's description (name, overrides, dtype,
image size). So a dataset rebuilt in place (e.g. corrected labels) or an encoder retrained in place
rebuilds it. It is written into a temporary folder renamed into place at the end: a killed build
is never taken for a complete cache.
"""
import collections
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
from gems_jax.training import fingerprint
from gems_jax.training import sharding as shd

INFO_FILE = "cache_info.json"
_FORMAT = 3  # Bump when what the cache holds changes for the same key inputs.


def prepare_input(config: ml_collections.ConfigDict, workdir: str, *, devices=None
                  ) -> ml_collections.ConfigDict:
  """Returns the config to train with: input.data_dir switched to the embedding cache if the
  task has a frozen image encoder to cache.

  Every process calls it: all of them encode (on the mesh `config.mesh` over `devices`, default
  all, as in `sharding.make_mesh`), process 0 fingerprints, writes and decides for all.
  """
  if not config.input.data_dir:
    raise ValueError("config.input.data_dir is not set (the folder written by preprocessing.build)")
  spec = input_pipeline.load_spec(config.input.data_dir)
  encoder = tasks_lib.get_task(config, spec).frozen_image_encoder()
  if encoder is None:
    return config
  params = jax.device_get(encoder.params)
  probe = jax.ShapeDtypeStruct((1, *encoder.image_size, 3), jnp.uint8)
  embed_dim = int(jax.eval_shape(encoder.features, params, probe).shape[-1])
  cached_spec = encoder.cached_spec(spec, embed_dim)
  cache_dir = os.path.join(workdir, encoder.cache_name)
  dataset_dir = tfds_writer.dataset_path(cache_dir, cached_spec)
  key, stale = None, False
  if jax.process_index() == 0:
    key = _cache_key(config, encoder, params)
    stale = _stored_key(cache_dir, dataset_dir) != key
  if multihost_utils.broadcast_one_to_all(np.int32(stale)):
    chunks = _ChunkEncoder(encoder, params, shd.make_mesh(config.mesh, devices), embed_dim)
    _build(config, cached_spec, encoder, chunks, workdir, key)
  else:
    logging.info("%s embeddings cached in %s are up to date", encoder.image_key, dataset_dir)
  multihost_utils.sync_global_devices(encoder.cache_name)
  config = ml_collections.ConfigDict(config.to_dict())
  config.input.data_dir = str(dataset_dir)
  return config


def _cache_key(config, encoder, params) -> dict:
  """What the cached embeddings depend on, by content (JSON round-tripped, as read back)."""
  source = input_pipeline.resolve_dataset_dir(config.input.data_dir)
  start = time.perf_counter()
  key = {"format": _FORMAT, "dataset_sha256": fingerprint.directory_sha256(source),
         "encoder": {**encoder.description, "image_key": encoder.image_key,
                     "image_size": list(encoder.image_size),
                     "params_sha256": fingerprint.tree_sha256(params)}}
  logging.info("fingerprinted %s and the %s encoder in %.1f s", source, encoder.image_key,
               time.perf_counter() - start)
  return json.loads(json.dumps(key))


def _stored_key(cache_dir: str, dataset_dir: pathlib.Path) -> dict | None:
  """The key of the complete cache in `cache_dir`, or None if there is none."""
  info = os.path.join(cache_dir, INFO_FILE)
  if not (os.path.exists(info) and (dataset_dir / spec_lib.META_FILENAME).exists()):
    return None
  with open(info) as f:
    return json.load(f).get("key")


class _ChunkEncoder:
  """The frozen encoder on fixed-size chunks of images spread over every device of `mesh`.

  A call encodes this process's images in global chunks of `chunk` images (uint8 [chunk, H, W, 3]
  split over the mesh's batch axes; `chunk` is rounded up to whole images per device): this process
  fills its `local` rows of each chunk and pads the rest with black images. Every process makes the
  same calls, however many images it has: the number of chunks is the largest process's need (a
  small allgather of image counts). The function is compiled ahead of time for that one input shape
  (`compile_seconds`), so that a call of any other shape is an error, and the timed encoding pass
  holds no compilation. `calls` and `num_images` (over all processes) count the work.
  """

  def __init__(self, encoder: "tasks_lib.FrozenImageEncoder", params, mesh, embed_dim: int):
    if encoder.chunk < 1:
      raise ValueError(f"the {encoder.image_key} cache chunk must be >= 1, got {encoder.chunk}")
    self.chunk = -(-encoder.chunk // mesh.size) * mesh.size
    self.local = self.chunk // jax.process_count()  # Processes own equal shares of the mesh.
    self.mesh, self.embed_dim = mesh, embed_dim
    shardings = shd.tree_shardings(params, mesh)
    self.params = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
        params, shardings)
    data = shd.batch_sharding(mesh)
    images = jax.ShapeDtypeStruct((self.chunk, *encoder.image_size, 3), jnp.uint8, sharding=data)
    start = time.perf_counter()
    self.encode = jax.jit(encoder.features, in_shardings=(shardings, data),
                          out_shardings=data).lower(self.params, images).compile()
    self.compile_seconds = time.perf_counter() - start
    self.calls = self.num_images = 0

  def __call__(self, images: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """images uint8 [b, *slots, H, W, 3], slots int [n, 1 + len(slots)] (the index of each real
    image) -> float32 [m, E], m = chunks * local >= n: row i embeds slots[i]; the rest pad."""
    counts = multihost_utils.process_allgather(np.int32(len(slots)))
    self.num_images += int(counts.sum())
    rows, previous = [np.zeros((0, self.embed_dim), np.float32)], None
    for start in range(0, int(counts.max()), self.local):
      part = slots[start:start + self.local]
      chunk = np.zeros((self.local,) + images.shape[-3:], np.uint8)
      chunk[:len(part)] = images[tuple(part.T)]
      out = self.encode(self.params, shd.global_batch({"images": chunk}, self.mesh)["images"])
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


def _real(batch: dict, mask_key: str) -> np.ndarray:
  """bool [b, *slots]: the image slots to encode (mask True on valid clips)."""
  mask = batch[mask_key]
  return mask & batch["valid"].reshape((-1,) + (1,) * (mask.ndim - 1))


def _split_examples(config, split: str, encoder, chunks: _ChunkEncoder):
  """Yields `split`'s examples with the embeddings in source order on process 0; the other
  processes make the same encoder calls and yield nothing.

  With n processes, process p reads clips p, p + n, p + 2n, ... (the input pipeline's shards) in
  batches of b, so batch j of all processes together holds clips j*b*n ... (j+1)*b*n - 1: process 0
  reads those again, undecoded, for their labels and strings (row r of process p is row r*n + p).
  Images other than the encoded ones (a faces dataset's whole frames, say) stay JPEG bytes and are
  copied into the cache as they are.
  Every shard yields the same number of (padded) batches, so all processes call the encoder alike.
  """
  n, me = jax.process_count(), jax.process_index()
  data_dir, b = config.input.data_dir, max(1, config.eval.batch_size // n)
  mine = input_pipeline.iterate_split_once(data_dir, split, batch_size=b, shard_index=me,
                                           shard_count=n, decode=(encoder.image_key,),
                                           keep_jpeg=n == 1, keep_strings=n == 1)
  together = None
  if me == 0 and n > 1:
    together = input_pipeline.iterate_split_once(data_dir, split, batch_size=b * n, decode=(),
                                                 keep_jpeg=True)
  for batch in mine:
    real = _real(batch, encoder.mask_key)
    rows = multihost_utils.process_allgather(chunks(batch[encoder.image_key], np.argwhere(real)))
    if me == 0:
      yield from _with_embeddings(next(together) if together else batch, rows, encoder)


def _with_embeddings(batch: dict, rows: np.ndarray, encoder):
  """The valid clips of `batch` (b*n clips; row r*n + p is process p's row r), each with the
  embeddings float32 [*slots, E]: `rows[p]` [m, E] in process p's real slots, 0 elsewhere."""
  n = len(rows)
  real = _real(batch, encoder.mask_key)
  embedding = np.zeros(real.shape + rows.shape[-1:], np.float32)
  for p in range(n):
    index = np.argwhere(real[p::n]).T
    embedding[(index[0] * n + p, *index[1:])] = rows[p, :index.shape[1]]
  for i in np.flatnonzero(batch["valid"]):
    example = {key: value[i] for key, value in batch.items()
               if key not in (encoder.image_key, "valid")}
    example[encoder.embedding_key] = embedding[i]
    yield example


def _build(config, cached_spec, encoder, chunks: _ChunkEncoder, workdir: str, key) -> None:
  """Encodes every split (all processes); process 0 writes the cache into a temporary folder in
  `workdir` and renames it to `<workdir>/<cache_name>` (the previous cache, if any, goes).

  cache_info.json holds the key and the work: `num_images` (real images encoded, all processes)
  and `encode_seconds`, the wall time of the streaming pass (reading and decoding clips, encoding,
  writing; the encoder's compilation is `compile_seconds`), so images/s is what a user gets.
  """
  stored = set(spec_lib.example_keys(cached_spec))  # Not the defaults a reader adds (spec.py).
  splits = {split: ({k: v for k, v in example.items() if k in stored}
                    for example in _split_examples(config, split, encoder, chunks))
            for split in input_pipeline.split_names(config.input.data_dir)}
  if jax.process_index() != 0:
    for examples in splits.values():
      collections.deque(examples, maxlen=0)  # Runs the encoder calls in step with process 0.
    return
  os.makedirs(workdir, exist_ok=True)
  tmp_prefix = f".{encoder.cache_name}.tmp-"
  for stale in pathlib.Path(workdir).glob(tmp_prefix + "*"):
    shutil.rmtree(stale, ignore_errors=True)  # Left by a killed build.
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=workdir))
  name = encoder.cache_name
  try:
    logging.info("caching %s embeddings of %s (chunks of %d on %d devices)", encoder.image_key,
                 config.input.data_dir, chunks.chunk, chunks.mesh.size)
    start = time.perf_counter()
    tfds_writer.write_dataset(tmp / name, cached_spec, splits)
    seconds = time.perf_counter() - start
    info = {"key": key, "image_key": encoder.image_key, "num_images": chunks.num_images,
            "encode_seconds": seconds, "images_per_second": chunks.num_images / seconds,
            "compile_seconds": chunks.compile_seconds, "encoder_calls": chunks.calls,
            "chunk": chunks.chunk, "devices": chunks.mesh.size,
            "processes": jax.process_count(), "source": os.path.abspath(config.input.data_dir),
            "checkpoint": encoder.description.get("checkpoint", "")}
    (tmp / name / INFO_FILE).write_text(json.dumps(info, indent=1))
    final = pathlib.Path(workdir) / name
    if final.exists():
      os.replace(final, tmp / "replaced")
    os.replace(tmp / name, final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info("cached %d %s embeddings in %.1f s (%.1f images/s, %d encoder calls) in %s",
               chunks.num_images, encoder.image_key, seconds, info["images_per_second"],
               chunks.calls, final)
