"""Reads a GEMS TFDS dataset with grain: per-host shards of padded, checkpointable batches.

    it = make_iterator(data_dir, "train", batch_size=8, shuffle=True, seed=0, num_epochs=None,
                       shard_index=jax.process_index(), shard_count=jax.process_count())
    batch = next(it)           # dict of numpy arrays, leading dim = batch_size (per process)
    state = it.get_state()     # store in the checkpoint; later: it.set_state(state)

Batches follow the schema in `gems_jax/data/spec.py`: the example keys stacked over a leading dim b
(the automatic-label keys a 'faces' dataset does not store hold their fill values:
`spec.read_array_specs`), the image keys named in `decode` (default: all the dataset stores)
decoded, `faces` to uint8 [b, T, K, S, S, 3] and `whole_frames` to uint8 [b, T_v, H, W, 3] (zeros
for empty slots); the other image keys dropped, or kept as JPEG bytes (object arrays [b, *slots])
with keep_jpeg=True; strings as numpy object arrays (dropped when keep_strings=False); plus
`valid` bool [b]. A model decodes only the images it reads (`Task.required_keys`).

Index plan (`ShardPlan`): each epoch orders the N examples (in storage order, or a permutation
drawn from (seed, epoch) when shuffling; the same on every host), and shard s of n takes the
positions s, s + n, s + 2n, ... of that order, so shards are disjoint and their union is the split.
Every epoch is ceil(ceil(N / n) / b) batches on every shard (= ceil(N / (n b)), the steps of a
global epoch); a shard whose share is shorter (N not divisible by n, or by b) fills its last batch
of the epoch with padding examples (`spec.padding_example`, `valid` False, masked out of losses and
metrics). So
  * every process runs the same number of steps per epoch (no multi-host deadlock),
  * no batch spans two epochs, so a global batch never holds a clip twice, and
  * every epoch shows every example exactly once; none is dropped.
num_epochs=E gives E such epochs (evaluation: E = 1); num_epochs=None repeats them forever
(training), with a fresh permutation per epoch when shuffling (which examples a shard gets changes
too; each epoch is still split disjointly and completely over the shards).

Each batch is one element of a grain `MapDataset` (computed from its position alone), so the
batches do not depend on `worker_count`, and the iterator's `get_state()`/`set_state()` resume
at exactly the next batch. worker_count > 0 decodes in grain worker processes (`mp_prefetch`).
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import pathlib
import sys
from typing import Any, Collection

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from absl import logging
from PIL import Image

from gems_jax.data import spec as spec_lib

_PREFETCH_BATCHES = 2  # Batches prefetched per reader (threads or workers); they can be large.


def resolve_dataset_dir(data_dir: str | os.PathLike) -> pathlib.Path:
  """The dataset version folder: `data_dir` itself, or the single `<name>/<version>` below it."""
  root = pathlib.Path(data_dir)
  if (root / spec_lib.META_FILENAME).exists():
    return root
  found = sorted(p.parent for p in root.glob(f"*/*/{spec_lib.META_FILENAME}"))
  if len(found) == 1:
    return found[0]
  if not found:
    raise FileNotFoundError(f"no GEMS dataset ({spec_lib.META_FILENAME}) in {root} or in "
                            f"{root}/<name>/<version>")
  raise ValueError(f"{root} holds several GEMS datasets, pass one of: {[str(p) for p in found]}")


def load_spec(data_dir: str | os.PathLike) -> spec_lib.DatasetSpec:
  return spec_lib.read_spec(resolve_dataset_dir(data_dir))


def _data_source(dataset_dir: pathlib.Path, split: str):
  builder = tfds.builder_from_directory(str(dataset_dir))
  if split not in builder.info.splits:
    raise ValueError(f"split {split!r} not in {dataset_dir}; "
                     f"available: {list(builder.info.splits)}")
  return builder.as_data_source(split)


def split_names(data_dir: str | os.PathLike) -> list[str]:
  """The splits the dataset holds, e.g. ['test', 'train', 'val']."""
  return sorted(tfds.builder_from_directory(str(resolve_dataset_dir(data_dir))).info.splits)


def num_examples(data_dir: str | os.PathLike, split: str) -> int:
  return len(_data_source(resolve_dataset_dir(data_dir), split))


@functools.lru_cache(maxsize=4)
def _epoch_order(num_records: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
  if not shuffle:
    return np.arange(num_records)
  return np.random.default_rng([seed, epoch]).permutation(num_records)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """Which example indices each batch of one shard holds (see the module docstring)."""
  num_records: int
  batch_size: int
  shard_index: int = 0
  shard_count: int = 1
  shuffle: bool = False
  seed: int = 0
  num_epochs: int | None = 1

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if not 0 <= self.shard_index < self.shard_count:
      raise ValueError(f"need 0 <= shard_index < shard_count, got {self.shard_index}, "
                       f"{self.shard_count}")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"num_epochs must be None (repeat) or >= 1, got {self.num_epochs}")
    if self.num_epochs is None and self.num_records < self.shard_count:
      raise ValueError(f"repeating needs every shard to hold examples: {self.num_records} "
                       f"examples < shard_count {self.shard_count}")

  @property
  def per_epoch(self) -> int:
    """Examples of this shard in one epoch."""
    return len(range(self.shard_index, self.num_records, self.shard_count))

  @property
  def batches_per_epoch(self) -> int:
    """Batches of one epoch, equal on every shard (the longest shard's share, rounded up)."""
    return max(1, math.ceil(math.ceil(self.num_records / self.shard_count) / self.batch_size))

  @property
  def num_batches(self) -> int | None:
    """Batches of a finite pass (equal on every shard); None when repeating forever."""
    return None if self.num_epochs is None else self.num_epochs * self.batches_per_epoch

  def batch_indices(self, batch: int) -> np.ndarray:
    """int64 [batch_size] example indices of batch number `batch`; -1 marks padding."""
    epoch, first = divmod(batch, self.batches_per_epoch)
    out = np.full(self.batch_size, -1, np.int64)
    if self.num_epochs is not None and epoch >= self.num_epochs:
      return out
    order = _epoch_order(self.num_records, self.shuffle, self.seed, epoch)
    for i, j in enumerate(range(first * self.batch_size, (first + 1) * self.batch_size)):
      if j < self.per_epoch:
        out[i] = order[self.shard_index + j * self.shard_count]
    return out


def _record_to_example(record: dict[str, Any], spec: spec_lib.DatasetSpec,
                       padding: dict[str, Any]) -> dict[str, Any]:
  """A TFDS-decoded record (bytes strings, Python scalars) -> the contract's numpy example; keys
  the dataset does not store (`spec.read_array_specs`) come from `padding` (their fill values)."""
  out: dict[str, Any] = {key: record[key].decode("utf-8") for key in spec_lib.STRING_KEYS}
  for key, (_, dtype) in spec_lib.read_array_specs(spec).items():
    out[key] = np.asarray(record[key], dtype=dtype) if key in record else padding[key]
  for key in spec_lib.byte_keys(spec):
    out[key] = record[key]
  return out


# JPEG key -> (its mask key, (height, width) of an image).
IMAGE_KEYS = {"faces": ("face_mask", lambda spec: (spec.face_size,) * 2),
               "whole_frames": ("whole_frame_mask", lambda spec: spec.whole_frame_size)}


def _decode_images(examples: list[dict[str, Any]], spec: spec_lib.DatasetSpec, key: str
                   ) -> np.ndarray:
  """JPEG bytes [b, *slots] -> uint8 [b, *slots, H, W, 3] (zeros where the mask is False)."""
  mask_key, size = IMAGE_KEYS[key]
  shape = (*size(spec), 3)
  out = np.zeros((len(examples), *examples[0][mask_key].shape, *shape), np.uint8)
  for b, example in enumerate(examples):
    for slot in zip(*np.nonzero(example[mask_key])):
      try:
        with Image.open(io.BytesIO(example[key][slot])) as img:
          pixels = np.asarray(img.convert("RGB"))
      except Exception as e:  # PIL raises several types for corrupt data.
        raise ValueError(f"example {example['clip_id']!r}: key {key!r}: slot {slot} does not "
                         f"decode: {e}") from e
      if pixels.shape != shape:
        raise ValueError(f"example {example['clip_id']!r}: key {key!r}: slot {slot} is "
                         f"{pixels.shape}, expected {shape}")
      out[(b, *slot)] = pixels
  return out


class MakeBatch(grain.transforms.Map):
  """Batch number -> batch dict; module level and picklable for grain worker processes."""

  def __init__(self, source, spec: spec_lib.DatasetSpec, plan: ShardPlan,
               decode: Collection[str] | None, keep_jpeg: bool, keep_strings: bool):
    self._source, self._spec, self._plan = source, spec, plan
    self._decode = None if decode is None else frozenset(decode)
    self._keep_jpeg, self._keep_strings = keep_jpeg, keep_strings

  def map(self, element: int) -> dict[str, np.ndarray]:
    indices = self._plan.batch_indices(element)
    valid = indices >= 0
    records = iter(self._source.__getitems__(indices[valid].tolist()) if valid.any() else [])
    padding = spec_lib.padding_example(self._spec)
    examples = [_record_to_example(next(records), self._spec, padding) if ok else padding
                for ok in valid]
    batch = {key: np.stack([e[key] for e in examples])
             for key in spec_lib.read_array_specs(self._spec)}
    if self._keep_strings:
      for key in spec_lib.STRING_KEYS:
        batch[key] = np.array([e[key] for e in examples], dtype=object)
    for key in spec_lib.byte_keys(self._spec):
      if self._decode is None or key in self._decode:
        batch[key] = _decode_images(examples, self._spec, key)
      elif self._keep_jpeg:
        batch[key] = np.stack([e[key] for e in examples])
    batch["valid"] = valid
    return batch


def make_iterator(data_dir: str | os.PathLike, split: str, *, batch_size: int,
                  shuffle: bool, seed: int, num_epochs: int | None,
                  shard_index: int = 0, shard_count: int = 1,
                  decode: Collection[str] | None = None, keep_jpeg: bool = False,
                  worker_count: int = 0, keep_strings: bool = True) -> grain.DatasetIterator:
  """A grain iterator over batches of this shard (`batch_size` per process).

  num_epochs=None repeats forever (training); an integer gives a finite, padded pass
  (evaluation). worker_count > 0 decodes in that many grain worker processes (spawned: the
  caller's main module needs an `if __name__ == "__main__":` guard; batches then live in shared
  memory). Call `close()` on an iterator with workers when done, and drop it, or grain prints
  tracebacks at interpreter exit.
  """
  dataset_dir = resolve_dataset_dir(data_dir)
  spec = spec_lib.read_spec(dataset_dir)
  source = _data_source(dataset_dir, split)
  plan = ShardPlan(len(source), batch_size, shard_index, shard_count, shuffle, seed, num_epochs)
  length = sys.maxsize if plan.num_batches is None else plan.num_batches
  batches = grain.MapDataset.range(length).map(
      MakeBatch(source, spec, plan, decode, keep_jpeg, keep_strings))
  dataset = batches.to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=_PREFETCH_BATCHES))
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (unparsed flags make them fail).
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=_PREFETCH_BATCHES))
  logging.info("input %s/%s: %d examples, shard %d/%d, %s batches of %d", dataset_dir, split,
               len(source), shard_index, shard_count, plan.num_batches or "endless", batch_size)
  return iter(dataset)


def iterate_split_once(data_dir: str | os.PathLike, split: str, *, batch_size: int,
                       shard_index: int = 0, shard_count: int = 1,
                       decode: Collection[str] | None = None, keep_jpeg: bool = False,
                       worker_count: int = 0, keep_strings: bool = True) -> grain.DatasetIterator:
  """One ordered, padded pass over this shard of `split` (evaluation; see `make_iterator`)."""
  return make_iterator(data_dir, split, batch_size=batch_size, shuffle=False, seed=0,
                       num_epochs=1, shard_index=shard_index, shard_count=shard_count,
                       decode=decode, keep_jpeg=keep_jpeg, worker_count=worker_count,
                       keep_strings=keep_strings)
