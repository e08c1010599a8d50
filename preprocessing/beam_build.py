"""The build from raw clips as Apache Beam pipelines: `preprocessing.build ... --runner RUNNER`.

    python -m preprocessing.build --videos DIR --annotations FILE --data_dir OUT \
        --runner direct|dataflow|flink|spark [--beam_options key=value,key=value] [--workers N]

The plain build (--runner plain, the default) runs on one machine; with a Beam runner the same
build runs as two Beam jobs on that runner:
  1. extraction (preprocessing/beam_transforms.py): text encoding, media extraction (decoding,
     detection, crops, tracking, whole frames, audio) and the example check, with the plain
     build's per-clip functions, into the per-clip caches OUT/_work/{media,text}-<hash>/; failed
     clips go to a dead-letter output;
  2. writing (gems_jax.data.tfds_writer.write_dataset_beam): TFDS's Beam writer turns the ok clips
     into the ArrayRecord dataset OUT/<name>/<version>/ with its metadata and gems_meta.json.
Between the two, this process reads every outcome into the BuildReport (OUT/build_report.json),
as the plain build's stages fill it: the same clips ok or skipped with the same reasons and
warnings, and the same examples in the same order (tests/test_build_beam.py). Two jobs because a
TFDS Beam split must exist when the pipeline is built, and the clips that end up ok (so the splits)
are known only after extraction.

Resuming: a clip is cached under settings-hashed folders once it is done (atomically), and the
extraction skips a cached clip, so a rerun after a failure (a killed job, a lost worker) does not
redo finished clips; nor does Beam's retry of a bundle. On a cluster every path (--videos,
--annotations, --data_dir, a local --text_encoder) must be the same shared POSIX file system on
the launching machine and on every worker (NFS, Filestore, Lustre, a gcsfuse mount; gs:// URLs
are not read), and the workers need this package and its pinned stack installed (a container
image, or --beam_options setup_file=./setup.py). --workers N with --runner direct means
direct_num_workers=N in multi-processing mode; with other runners the runner decides.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import shutil
import uuid
from typing import Any, Callable

from gems_jax.data import spec as spec_lib
from preprocessing import extract, pipeline
from preprocessing import text as text_lib
from preprocessing.report import BuildReport

RUNNERS = {"direct": "DirectRunner", "dataflow": "DataflowRunner", "flink": "FlinkRunner",
           "spark": "SparkRunner"}
BEAM_VERSION = "2.77.0"
INSTALL = (f"pip install -e '.[beam]' && pip install --no-deps apache-beam=={BEAM_VERSION} "
           f"(./run.sh setup does both)")
STAGE_ORDER = {"media": 0, "check": 1, "text": 2}  # Per clip: media outcome, then its check.


def add_flags(parser: argparse.ArgumentParser) -> None:
  """--runner and --beam_options (build.py's parser)."""
  g = parser.add_argument_group("Apache Beam (the 'beam' extra; see preprocessing/beam_build.py)")
  g.add_argument("--runner", choices=["plain", *RUNNERS], default="plain",
                 help="plain: this machine (worker processes, --workers); direct, dataflow, "
                      "flink, spark: an Apache Beam pipeline on that runner")
  g.add_argument("--beam_options", default="",
                 help="Beam pipeline options as comma-separated key=value (TFDS's "
                      "--beam_pipeline_options form), e.g. direct_num_workers=2,"
                      "direct_running_mode=multi_processing or project=P,region=R,"
                      "temp_location=gs://B/tmp")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Usage errors of the Beam flags, and a missing Apache Beam (exit status 2)."""
  if args.runner == "plain":
    if args.beam_options:
      parser.error("--beam_options needs a Beam runner (--runner direct|dataflow|flink|spark)")
    return
  if args.from_features:
    parser.error("--from_features is a fast import on one machine; it does not take --runner")
  if args.num_shards != 1:
    parser.error("--runner spreads the clips over the runner's workers itself; it does not "
                 "take --num_shards")
  try:
    import_beam()
  except ImportError as e:
    parser.error(f"--runner {args.runner} needs Apache Beam ({e}): install the 'beam' extra: "
                 f"{INSTALL}")


def import_beam():
  """apache_beam, without the warning its import logs about absent Google Cloud clients."""
  previous = logging.root.manager.disable
  logging.disable(logging.WARNING)
  try:
    import apache_beam
  finally:
    logging.disable(previous)
  return apache_beam


def pipeline_flags(runner: str, beam_options: str, workers: int = 1) -> list[str]:
  """Beam pipeline flags of --runner and --beam_options ('a=1,b=2' -> ['--a=1', '--b=2'])."""
  flags = [f"--runner={RUNNERS[runner]}"] + [
      "--" + option.strip().lstrip("-") for option in beam_options.split(",") if option.strip()]
  if runner == "direct" and workers > 1 and not any(
      f.startswith("--direct_num_workers") for f in flags):
    flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
  return flags


def stages(args: argparse.Namespace):
  """The stages of build.build_from_videos: the module `pipeline` (the plain build) or, with a
  Beam runner, a `BeamStages` with the same three functions."""
  if args.runner == "plain":
    return pipeline
  return BeamStages(pipeline_flags(args.runner, args.beam_options, args.workers))


class BeamStages:
  """`pipeline.run_text_stage`, `run_media_stage` and `write_stage` as Beam jobs.

  The first two only note their inputs (the text batches are made here, as the plain build makes
  them); `write_stage` runs the extraction job, reads its outcomes into the report, then runs the
  writing job.
  """

  def __init__(self, flags: list[str]):
    self.flags = flags
    self._text: dict[str, Any] = {}
    self._media: dict[str, Any] = {}

  def run_text_stage(self, clip_ids: list[str], descriptions: dict[str, str],
                     work: pipeline.WorkDirs, settings: text_lib.TextSettings, device: str,
                     report: BuildReport) -> int:
    del report  # Filled from the outcomes by write_stage.
    dim = text_lib.encoder_dim(settings.encoder)
    pending = pipeline.pending_texts(clip_ids, descriptions, work)
    self._text = dict(batches=pipeline.text_batches(pending, settings.batch_size),
                      text_settings=settings, text_dim=dim, device=device,
                      needs_encoder=any(d.strip() for _, d in pending))
    return dim

  def run_media_stage(self, jobs: list[tuple[str, pathlib.Path]], work: pipeline.WorkDirs,
                      config: extract.ExtractConfig, report: BuildReport, *, device: str = "cpu",
                      workers: int = 1, torch_threads: int = 1, detect_batch: int = 1,
                      clip_timeout: float | None = pipeline.CLIP_TIMEOUT) -> None:
    del report, workers, device  # The outcomes fill the report; the runner has the workers.
    self._media = dict(jobs=[(c, str(p)) for c, p in jobs], work=work, config=config,
                       torch_threads=torch_threads, detect_batch=detect_batch,
                       clip_timeout=clip_timeout, needs_extractor=any(
                           not work.media_file(c).exists() for c, _ in jobs))

  def write_stage(self, data_dir, spec: spec_lib.DatasetSpec, report: BuildReport,
                  load_example: Callable[[str], tuple[dict[str, Any], dict[str, Any]]],
                  skip_faceless: bool = False) -> pathlib.Path | None:
    from preprocessing import beam_transforms
    beam = import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions
    media, text = dict(self._media), dict(self._text)
    run_dir = media["work"].media.parent / f"beam-{uuid.uuid4().hex[:12]}"
    run_dir.mkdir(parents=True)
    try:
      _write_jsonl(run_dir / "text_batches.jsonl", text.pop("batches"))
      _write_jsonl(run_dir / "media_jobs.jsonl", media.pop("jobs"))
      inputs = beam_transforms.ExtractInputs(
          run_dir=run_dir, spec=spec, load_example=load_example, skip_faceless=skip_faceless,
          **media, **text)
      with beam.Pipeline(options=PipelineOptions(self.flags)) as p:
        beam_transforms.extract_clips(p, inputs)
      record_outcomes(report, run_dir)
    finally:
      shutil.rmtree(run_dir, ignore_errors=True)
    return pipeline.write_ok_clips(data_dir, spec, report, load_example, beam_options=self.flags)


def _write_jsonl(path: pathlib.Path, rows: list) -> None:
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def record_outcomes(report: BuildReport, run_dir: pathlib.Path) -> None:
  """Reads the extraction job's outcomes and dead letters into `report`, as the plain build's
  stages record them (`pipeline.record_media`, `pipeline.record_check`)."""
  records = [json.loads(line) for pattern in ("outcomes-*.jsonl", "dead_letter-*.jsonl")
             for path in sorted(run_dir.glob(pattern)) for line in path.read_text().splitlines()]
  for r in sorted(records, key=lambda r: (STAGE_ORDER[r["stage"]], r.get("clip_id", ""))):
    if r["stage"] == "media":
      pipeline.record_media(report, r["clip_id"], r.get("stats"), r.get("reason"))
    elif r["stage"] == "check":
      pipeline.record_check(report, r["clip_id"], pipeline.ClipCheck(
          r["fields"], r["warnings"], r["reason"]))
    else:
      report.text_encoded += r["encoded"]
