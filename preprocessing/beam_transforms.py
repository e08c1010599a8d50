"""The Beam transforms of the build from raw clips (imports apache_beam: the 'beam' extra).

    with beam.Pipeline(options=...) as p:
      extract_clips(p, inputs)   # text + media + check; outcomes and dead letters as JSON lines

One pipeline does what the plain build's text, media and check stages do (preprocessing/
pipeline.py), with the plain build's own per-clip functions:
  * text: each batch of (clip_id, description) of `pipeline.text_batches` -> `EncodeText`
    (`pipeline.encode_text_batch`; the encoder is loaded once per DoFn instance, in `setup`) ->
    the text cache; the batches are the plain build's, so the embeddings are the same bits;
  * media: each (clip_id, video) -> `ExtractMedia`: a clip already in the media cache is only
    reported; the others run `pipeline._extract_one` in a killable worker process
    (`workers.JobRunner`, started in `setup`, which loads the detector once): decoding, detection,
    crops, tracking, whole frames and audio, cached as the plain build caches them. A clip that
    fails, hangs past the clip timeout or kills its worker goes to the dead-letter output;
  * check: each clip with media, once every text batch is done (a side input) -> `CheckExample`
    (`pipeline.check_example`: load the example as the dataset will hold it and validate it);
    an invalid one goes to the dead-letter output.
Every outcome is one JSON object per line: {"clip_id", "stage": "media", "stats"} (stats null: from
the cache), {"clip_id", "stage": "check", "fields", "warnings", "reason"}, {"stage": "text",
"encoded"}, and in the dead letters {"clip_id", "stage", "reason", ...}.
`preprocessing.beam_build` writes the inputs, reads the outcomes into the BuildReport and then
writes the dataset with TFDS's Beam writer (gems_jax.data.tfds_writer.write_dataset_beam).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Iterator

import apache_beam as beam

from gems_jax.data import spec as spec_lib
from preprocessing import extract, pipeline, workers
from preprocessing import text as text_lib

DEAD_LETTER = "dead_letter"


@dataclasses.dataclass(frozen=True)
class ExtractInputs:
  """Everything the extraction pipeline needs (picklable: it travels to the Beam workers)."""
  run_dir: pathlib.Path  # Holds text_batches.jsonl and media_jobs.jsonl; gets the outcomes.
  work: pipeline.WorkDirs
  config: extract.ExtractConfig
  text_settings: text_lib.TextSettings
  text_dim: int
  needs_encoder: bool  # Some description is to be encoded (else no encoder is loaded).
  needs_extractor: bool  # Some clip is not cached (else no extraction worker is started).
  device: str
  torch_threads: int
  detect_batch: int
  clip_timeout: float | None
  spec: spec_lib.DatasetSpec
  load_example: Callable[[str], tuple[dict[str, Any], dict[str, Any]]]
  skip_faceless: bool


class EncodeText(beam.DoFn):
  """A batch of [clip_id, description] -> the text cache; emits how many it encoded."""

  def __init__(self, inputs: ExtractInputs):
    self.inputs = inputs
    self.encoder = None

  def setup(self):
    s = self.inputs.text_settings
    if self.inputs.needs_encoder:
      self.encoder = text_lib.TextEncoder(s.encoder, s.pooling, s.max_length, s.batch_size,
                                          self.inputs.device)

  def process(self, batch: list) -> Iterator[int]:
    yield pipeline.encode_text_batch([tuple(job) for job in batch], self.encoder,
                                     self.inputs.text_dim, self.inputs.work)


class ExtractMedia(beam.DoFn):
  """[clip_id, video path] -> the media cache; emits the clip's media outcome (or a dead letter).

  The extraction runs in a worker process of this DoFn instance (one detector per instance,
  loaded in `setup`), so that a hung or crashing decoder costs one clip, as in the plain build.
  """

  def __init__(self, inputs: ExtractInputs):
    self.inputs = inputs
    self.runner: workers.JobRunner | None = None

  def setup(self):
    i = self.inputs
    initargs = (i.config, i.device, i.torch_threads, 0, i.detect_batch)
    self.runner = workers.JobRunner(pipeline._extract_one, pipeline._init_worker, initargs,
                                    timeout=i.clip_timeout or None)
    if i.needs_extractor:  # Else `run` would start it, if a clip were uncached after all.
      self.runner.start()

  def process(self, job: list) -> Iterator[Any]:
    clip_id, path = job
    out = self.inputs.work.media_file(clip_id)
    if out.exists():  # Extracted by an earlier run (or an earlier try of this bundle).
      yield {"clip_id": clip_id, "stage": "media", "stats": None}
      return
    result, failure = self.runner.run((clip_id, path, str(out)))
    reason = failure if failure is not None else result[2]
    if reason is not None:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"clip_id": clip_id, "stage": "media",
                                                   "reason": reason})
    else:
      yield {"clip_id": clip_id, "stage": "media", "stats": result[1]}

  def teardown(self):
    if self.runner is not None:
      self.runner.close()


class CheckExample(beam.DoFn):
  """A clip's media outcome -> its check outcome (loads and validates its example)."""

  def __init__(self, inputs: ExtractInputs):
    self.inputs = inputs

  def process(self, media: dict, text_encoded: int) -> Iterator[Any]:
    del text_encoded  # A side input only so that every text batch is cached before this runs.
    i = self.inputs
    check = pipeline.check_example(media["clip_id"], i.load_example, i.spec, i.skip_faceless)
    record = {"clip_id": media["clip_id"], "stage": "check", **dataclasses.asdict(check)}
    yield record if check.reason is None else beam.pvalue.TaggedOutput(DEAD_LETTER, record)


def _read_jsonl(p: beam.Pipeline, label: str, path: pathlib.Path) -> beam.PCollection:
  """The JSON lines of `path`, spread over the workers."""
  return (p | f"{label}/read" >> beam.io.ReadFromText(str(path))
          | f"{label}/parse" >> beam.Map(json.loads)
          | f"{label}/spread" >> beam.Reshuffle())


def _write_jsonl(pcollections: tuple, label: str, prefix: pathlib.Path) -> None:
  _ = (pcollections | f"{label}/merge" >> beam.Flatten()
       | f"{label}/json" >> beam.Map(json.dumps, sort_keys=True)
       | f"{label}/write" >> beam.io.WriteToText(str(prefix), file_name_suffix=".jsonl"))


def extract_clips(p: beam.Pipeline, inputs: ExtractInputs) -> None:
  """Adds the text, media and check transforms to `p` (see the module docstring); the outcomes
  go to run_dir/outcomes-*.jsonl, the dead letters to run_dir/dead_letter-*.jsonl."""
  encoded = (_read_jsonl(p, "text", inputs.run_dir / "text_batches.jsonl")
             | "text/encode" >> beam.ParDo(EncodeText(inputs))
             | "text/count" >> beam.CombineGlobally(sum))
  media = (_read_jsonl(p, "media", inputs.run_dir / "media_jobs.jsonl")
           | "media/extract" >> beam.ParDo(ExtractMedia(inputs)).with_outputs(DEAD_LETTER,
                                                                              main="ok"))
  checked = (media.ok | "check" >> beam.ParDo(CheckExample(inputs), beam.pvalue.AsSingleton(
      encoded)).with_outputs(DEAD_LETTER, main="ok"))
  text = encoded | "text/outcome" >> beam.Map(lambda n: {"stage": "text", "encoded": n})
  _write_jsonl((media.ok, checked.ok, text), "outcomes", inputs.run_dir / "outcomes")
  _write_jsonl((media[DEAD_LETTER], checked[DEAD_LETTER]), "dead_letter",
               inputs.run_dir / DEAD_LETTER)
