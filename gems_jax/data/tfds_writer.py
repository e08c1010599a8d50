"""Writes GEMS examples as a TFDS ArrayRecord dataset, without TensorFlow.

    path = write_dataset("/data/tfds", spec, {"train": train_examples, "val": val_examples})
    # -> /data/tfds/<spec.name>/<spec.version>/ with gems_meta.json, readable by
    #    tfds.builder_from_directory(path) / tfds.data_source and gems_jax.data.input_pipeline.

The TFDS builder class is generic (built per `DatasetSpec`; its name is `spec.name`). Examples are
streamed from the split iterables, validated one by one (`validation.validate_example`) and stored in
generation order (`disable_shuffling=True`). Split hygiene: a clip id may appear once in the whole
dataset, and a source video in one split only (unless `allow_shared_sources=True`), so that clips
of one video never leak between train and evaluation.

Atomicity: TFDS writes into a hidden temporary folder under `data_dir`; the finished version folder
(with `gems_meta.json`) is renamed into place at the end. A crash leaves only the temporary folder
(deleted on the next write of the same dataset), never a half-written dataset that looks complete.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import types
from typing import Any, Iterable, Iterator, Mapping

import tensorflow_datasets as tfds
from absl import logging

from gems_jax.data import spec as spec_lib
from gems_jax.data import validation

_TMP_PREFIX = ".tmp-gems-"


class _SplitChecker:
  """Tracks clip ids and source videos across splits while examples stream through."""

  def __init__(self, allow_shared_sources: bool):
    self._allow_shared_sources = allow_shared_sources
    self._clip_split: dict[str, str] = {}
    self._source_split: dict[str, str] = {}

  def check(self, split: str, example: Mapping[str, Any]):
    clip, source = example["clip_id"], example["source_video"]
    if clip in self._clip_split:
      raise ValueError(f"example {clip!r}: key 'clip_id': duplicate clip id (first seen in split "
                       f"{self._clip_split[clip]!r}, again in {split!r})")
    self._clip_split[clip] = split
    first = self._source_split.setdefault(source, split)
    if first != split and not self._allow_shared_sources:
      raise ValueError(f"example {clip!r}: key 'source_video': source video {source!r} appears in "
                       f"splits {first!r} and {split!r}; clips of one video must stay in one split "
                       f"(pass allow_shared_sources=True to override)")


class _GemsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Generic builder; `_builder_class` subclasses it per spec so that TFDS sees `spec.name`."""

  VERSION = tfds.core.Version("1.0.0")
  gems_spec: spec_lib.DatasetSpec

  def __init__(self, *, splits: Mapping[str, Iterable[Mapping[str, Any]]],
               allow_shared_sources: bool, **kwargs):
    self._gems_splits = splits
    self._checker = _SplitChecker(allow_shared_sources)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=spec_lib.features(self.gems_spec), disable_shuffling=True,
        description=f"GEMS group-emotion clips ({self.gems_spec.storage}); see gems_meta.json.")

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, examples)
            for split, examples in self._gems_splits.items()}

  def _generate_examples(self, split: str, examples: Iterable[Mapping[str, Any]]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    count = 0
    for example in examples:
      try:
        clean = validation.validate_example(example, self.gems_spec)
      except ValueError as e:
        raise ValueError(f"split {split!r}: {e}") from e
      self._checker.check(split, clean)
      count += 1
      yield clean["clip_id"], clean
    if not count:
      raise ValueError(f"split {split!r} has no examples")


def _builder_class(spec: spec_lib.DatasetSpec) -> type[_GemsBuilder]:
  class_name = "".join(part.capitalize() for part in spec.name.split("_")) or "Gems"
  namespace = {"name": spec.name, "gems_spec": spec, "VERSION": tfds.core.Version(spec.version),
               "__module__": __name__}
  return types.new_class(class_name, (_GemsBuilder,), {"skip_registration": True},
                         lambda ns: ns.update(namespace))


def dataset_path(data_dir: str | os.PathLike, spec: spec_lib.DatasetSpec) -> pathlib.Path:
  """Where `write_dataset` puts the dataset: `<data_dir>/<name>/<version>`."""
  return pathlib.Path(data_dir) / spec.name / spec.version


def write_dataset(data_dir: str | os.PathLike, spec: spec_lib.DatasetSpec,
                  splits: Mapping[str, Iterable[Mapping[str, Any]]], *, overwrite: bool = False,
                  allow_shared_sources: bool = False) -> pathlib.Path:
  """Validates and writes `splits` (split name -> examples) and returns the dataset folder.

  Raises ValueError (naming split, clip and key) on the first invalid example, and
  FileExistsError if the version folder exists and `overwrite` is False; in both cases nothing
  under `data_dir/<name>/<version>` changes.
  """
  if not splits:
    raise ValueError("write_dataset: no splits given")
  for split in splits:
    if not spec_lib.is_valid_split_name(split):
      raise ValueError(f"write_dataset: invalid split name {split!r} (use [a-z][a-z0-9_]*)")
  final = dataset_path(data_dir, spec)
  if final.exists() and not overwrite:
    raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
  final.parent.mkdir(parents=True, exist_ok=True)
  stale_prefix = f"{_TMP_PREFIX}{spec.name}-{spec.version}-"
  for stale in final.parent.parent.glob(stale_prefix + "*"):
    shutil.rmtree(stale, ignore_errors=True)  # Left by a crashed earlier write.
  tmp_root = pathlib.Path(tempfile.mkdtemp(prefix=stale_prefix, dir=final.parent.parent))
  try:
    builder = _builder_class(spec)(data_dir=str(tmp_root), file_format="array_record",
                                   splits=splits, allow_shared_sources=allow_shared_sources)
    builder.download_and_prepare(download_dir=str(tmp_root / "downloads"))
    built = tmp_root / spec.name / spec.version
    spec_lib.write_spec(built, spec)  # Written last: its presence marks a complete dataset.
    if final.exists():
      trash = tmp_root / "replaced"
      os.replace(final, trash)
    os.replace(built, final)
  finally:
    shutil.rmtree(tmp_root, ignore_errors=True)
  logging.info("wrote GEMS dataset %s (splits %s)", final, list(splits))
  return final
