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

`write_dataset_beam` writes the same dataset with an Apache Beam pipeline (TFDS's Beam writer; the
examples are loaded on the Beam workers from their ids); `serialized_features` reads a written
dataset back feature by feature, to compare two writes.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import types
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

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


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """A DatasetInfo that never looks for a copy of itself on TFDS's GCS bucket.

  A builder whose folder does not exist yet asks for one, and TFDS 4.9 makes a `/tmp/tmp*tfds`
  folder for the answer even with GCS disabled, and leaves it behind: one per dataset written.
  Our datasets are never on that bucket.
  """

  def initialize_from_bucket(self) -> None:
    pass


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
    return _LocalDatasetInfo(
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
  return _write_atomically(data_dir, spec, splits, overwrite, lambda tmp_root: _builder_class(
      spec)(data_dir=tmp_root, file_format="array_record", splits=splits,
            allow_shared_sources=allow_shared_sources))


def write_dataset_beam(data_dir: str | os.PathLike, spec: spec_lib.DatasetSpec,
                       split_ids: Mapping[str, Sequence[str]],
                       load_example: Callable[[str], Mapping[str, Any]],
                       beam_options: Sequence[str], *, overwrite: bool = False,
                       allow_shared_sources: bool = False) -> pathlib.Path:
  """`write_dataset` as an Apache Beam pipeline (TFDS's `BeamWriter`), for examples too many or
  too large for one process: split name -> clip ids, and `load_example(clip_id)` (picklable: it
  runs on the Beam workers) gives each example.

  beam_options: Beam pipeline flags, e.g. ['--runner=DirectRunner', '--direct_num_workers=2'].
  The examples and the split checks are those of `write_dataset`; each split keeps the order of
  its ids (the writer's keys are the positions), so for the same examples both write the same
  records in the same order and, below 64 MiB per split, the same single shard per split. An
  invalid example or a split leak fails the pipeline (raised here), with the same atomicity.
  """
  from apache_beam.options.pipeline_options import PipelineOptions
  config = tfds.download.DownloadConfig(beam_options=PipelineOptions(list(beam_options)))
  return _write_atomically(data_dir, spec, split_ids, overwrite, lambda tmp_root: _beam_builder(
      spec, split_ids, load_example, allow_shared_sources, data_dir=tmp_root,
      file_format="array_record"), config)


def _write_atomically(data_dir: str | os.PathLike, spec: spec_lib.DatasetSpec,
                      splits: Mapping[str, Any], overwrite: bool,
                      make_builder: Callable[[str], tfds.core.DatasetBuilder],
                      download_config: tfds.download.DownloadConfig | None = None
                      ) -> pathlib.Path:
  """Prepares `make_builder(tmp_data_dir)` in a temporary folder, adds gems_meta.json and renames
  the version folder into place (see the module docstring)."""
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
    builder = make_builder(str(tmp_root))
    builder.download_and_prepare(download_dir=str(tmp_root / "downloads"),
                                 download_config=download_config)
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


def _beam_builder(spec: spec_lib.DatasetSpec, split_ids: Mapping[str, Sequence[str]],
                  load_example: Callable[[str], Mapping[str, Any]], allow_shared_sources: bool,
                  **kwargs) -> tfds.core.DatasetBuilder:
  """The builder of `_builder_class(spec)` whose splits are Beam PCollections: its
  `_split_generators` takes TFDS's `pipeline` argument, which makes TFDS write with Beam."""
  import apache_beam as beam

  def split_generators(self, dl_manager, pipeline):
    del self, dl_manager  # Nothing to download.
    splits, sources = {}, []
    for split, ids in split_ids.items():
      splits[split] = (pipeline | f"{split}/ids" >> beam.Create(list(enumerate(ids)))
                       | f"{split}/load" >> beam.Map(_load_valid, split, load_example, spec))
      sources.append(splits[split] | f"{split}/sources" >> beam.Map(_source_of, split))
    _ = (sources | "sources" >> beam.Flatten()
         | "all sources" >> beam.combiners.ToList()
         | "check splits" >> beam.Map(_check_sources, allow_shared_sources))
    return splits

  base = _builder_class(spec)
  beam_class = types.new_class(base.__name__, (base,), {"skip_registration": True},
                               lambda ns: ns.update(_split_generators=split_generators,
                                                    __module__=__name__))
  return beam_class(splits={}, allow_shared_sources=allow_shared_sources, **kwargs)


def _load_valid(key_id: tuple[int, str], split: str, load_example: Callable,
                spec: spec_lib.DatasetSpec) -> tuple[int, dict[str, Any]]:
  key, clip_id = key_id
  try:
    return key, validation.validate_example(load_example(clip_id), spec)
  except ValueError as e:
    raise ValueError(f"split {split!r}: {e}") from e


def _source_of(key_example: tuple[int, Mapping[str, Any]], split: str) -> tuple[str, int, dict]:
  _, example = key_example
  return split, key_example[0], {"clip_id": example["clip_id"],
                                 "source_video": example["source_video"]}


def _check_sources(sources: list[tuple[str, int, dict]], allow_shared_sources: bool) -> None:
  """`_SplitChecker` over every split's examples, in split then key order."""
  checker = _SplitChecker(allow_shared_sources)
  for split, _, ids in sorted(sources, key=lambda s: s[:2]):
    checker.check(split, ids)


def serialized_features(dataset_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, bytes]]]:
  """{split: {clip_id: {feature: its serialized tf.train.Feature}}} of a written dataset, read
  from its ArrayRecord files: how two writes are compared. (A record's own bytes are not: protobuf
  writes the feature map in a per-process order, so two writes of the same examples in two
  processes give other record bytes but the same bytes for every feature.)"""
  from array_record.python import array_record_module
  from tensorflow_datasets.proto import tf_example_pb2
  out: dict[str, dict[str, dict[str, bytes]]] = {}
  for path in sorted(pathlib.Path(dataset_dir).glob("*.array_record-*")):
    split = path.name.split("-")[1].split(".")[0]  # <name>-<split>.array_record-NNNNN-of-NNNNN
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
      for record in reader.read_all():
        feature = tf_example_pb2.Example.FromString(record).features.feature
        clip_id = feature["clip_id"].bytes_list.value[0].decode()
        out.setdefault(split, {})[clip_id] = {k: v.SerializeToString() for k, v in feature.items()}
    finally:
      reader.close()
  return out
