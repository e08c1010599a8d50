"""The stages of a dataset build from raw clips: text, media (multi-process), write.

    work = WorkDirs.create(data_dir, extract_config, text_settings)  # ExtractConfig, TextSettings
    dim = run_text_stage(clips, descriptions, work, text_settings, device, report)
    run_media_stage(jobs, work, extract_config, report, device=..., workers=..., clip_timeout=120)
    write_stage(data_dir, spec, report, load_example)      # -> TFDS ArrayRecord dataset

The media stage extracts each clip's faces, whole frames and audio (whichever the ExtractConfig
asks for) in one killable worker job. Caches live in `<data_dir>/_work/media-<hash>/<clip_id>.npz`
and `_work/text-<hash>/<clip_id>.npz`, where the hash covers every setting that changes the cached
data (every ExtractConfig field: kind, faces, whole frames, audio, the automatic labeller when one
runs; encoder, pooling and max length), so a rerun with the same settings skips finished clips
and a rerun with other settings never mixes old and new data. Labels are not cached: they are joined at write time, so a
fixed annotation file needs no re-extraction. Each clip's outcome goes into the `BuildReport`;
no per-clip problem stops the build.

The per-clip pieces of these stages (`encode_text_batch`, `_extract_one`, `record_media`,
`check_example`, `record_check`, `write_ok_clips`) are also what the Beam build runs
(preprocessing/beam_build.py, beam_transforms.py), so both give the same examples and report.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from tqdm import tqdm

from gems_jax.data import npz_records
from gems_jax.data import spec as spec_lib
from gems_jax.data import validation
from gems_jax.data import tfds_writer
from preprocessing import extract, text as text_lib, video, workers as workers_lib
from preprocessing.report import BuildReport

CLIP_TIMEOUT = 120.0  # Seconds one clip's extraction may take (a 1080p clip takes a few).


def _hash(settings: Mapping[str, Any]) -> str:
  return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


@dataclasses.dataclass(frozen=True)
class WorkDirs:
  media: pathlib.Path
  text: pathlib.Path

  @classmethod
  def create(cls, data_dir: str | os.PathLike, config: extract.ExtractConfig,
             text: text_lib.TextSettings) -> WorkDirs:
    root = pathlib.Path(data_dir) / "_work"
    media_settings, text_settings = config.cache_key(), text.cache_key()
    dirs = cls(root / f"media-{_hash(media_settings)}", root / f"text-{_hash(text_settings)}")
    for folder, settings in ((dirs.media, media_settings), (dirs.text, text_settings)):
      folder.mkdir(parents=True, exist_ok=True)
      (folder / "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True))
    return dirs

  def media_file(self, clip_id: str) -> pathlib.Path:
    return self.media / f"{clip_id}.npz"

  def text_file(self, clip_id: str) -> pathlib.Path:
    return self.text / f"{clip_id}.npz"


def discover_videos(folder: str | os.PathLike, clip_ids: Iterable[str]
                    ) -> tuple[dict[str, pathlib.Path], list[str]]:
  """clip_id -> video file under `folder` (recursive), and warnings about duplicates.

  A file counts when its suffix is a video suffix or its stem is an annotated clip id (so a
  damaged clip with an odd name is still reported rather than silently ignored).
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"--videos: {folder} is not a folder")
  wanted = set(clip_ids)
  found: dict[str, pathlib.Path] = {}
  warnings = []
  for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
    if path.suffix.lower() not in video.VIDEO_SUFFIXES and path.stem not in wanted:
      continue
    if path.stem in found:
      warnings.append(f"clip {path.stem!r}: several files, using {found[path.stem]}, "
                      f"ignoring {path}")
      continue
    found[path.stem] = path
  return found, warnings


def pending_texts(clip_ids: list[str], descriptions: Mapping[str, str], work: WorkDirs
                  ) -> list[tuple[str, str]]:
  """(clip_id, description) of the clips whose text cache is missing, stale or unreadable."""
  pending = []
  for clip_id in clip_ids:
    description = descriptions.get(clip_id, "")
    path = work.text_file(clip_id)
    if path.exists():
      try:
        if npz_records.load(path)["description"] == description:
          continue
      except ValueError:
        pass  # Unreadable: recompute.
    pending.append((clip_id, description))
  return pending


def text_batches(pending: list[tuple[str, str]], batch_size: int) -> list[list[tuple[str, str]]]:
  """`pending` in encoder calls of `batch_size` clips (the batches never change the data)."""
  chunk = max(1, batch_size)
  return [pending[start:start + chunk] for start in range(0, len(pending), chunk)]


def encode_text_batch(batch: list[tuple[str, str]], encoder: text_lib.TextEncoder | None,
                      dim: int, work: WorkDirs) -> int:
  """Encodes one batch of (clip_id, description) and caches each clip's text parts (zeros for a
  clip without description; `encoder` may be None when no clip of the build has one); returns
  how many descriptions it encoded."""
  parts = [text_lib.split_description(d) for _, d in batch]
  if encoder is not None and any(d.strip() for _, d in batch):
    embedding, mask = encoder.encode_parts(parts)
  else:
    embedding = np.zeros((len(batch), len(text_lib.PART_NAMES), dim), np.float32)
    mask = np.zeros((len(batch), len(text_lib.PART_NAMES)), bool)
  for i, (clip_id, description) in enumerate(batch):
    npz_records.save(work.text_file(clip_id), {"description": description,
                                               "text_embedding": embedding[i],
                                               "text_mask": mask[i]})
  return sum(1 for _, d in batch if d.strip())


def run_text_stage(clip_ids: list[str], descriptions: Mapping[str, str], work: WorkDirs,
                   settings: text_lib.TextSettings, device: str, report: BuildReport) -> int:
  """Encodes the descriptions of clips whose text cache is missing or stale; returns D."""
  dim = text_lib.encoder_dim(settings.encoder)
  pending = pending_texts(clip_ids, descriptions, work)
  with_text = any(d.strip() for _, d in pending)
  encoder = (text_lib.TextEncoder(settings.encoder, settings.pooling, settings.max_length,
                                  settings.batch_size, device) if with_text else None)
  for batch in tqdm(text_batches(pending, settings.batch_size), desc="text", unit="batch",
                    disable=not with_text):
    report.text_encoded += encode_text_batch(batch, encoder, dim, work)
  return dim


_WORKER: dict[str, Any] = {}


def clip_stats(media: Mapping[str, Any]) -> dict[str, Any]:
  """The report fields of one clip's media record: faces found, whole frames, audio."""
  stats: dict[str, Any] = {}
  if "face_mask" in media:
    mask = media["face_mask"]
    stats.update(faces=int(mask.sum()), steps=int(media["step_mask"].sum()),
                 steps_with_faces=int(mask.any(axis=1).sum()))
  if "whole_frame_mask" in media:
    stats["whole_frames"] = int(media["whole_frame_mask"].sum())
  if "has_audio" in media:
    stats.update(has_audio=bool(media["has_audio"]), audio_length=int(media["audio_length"]))
  return stats


def audio_warning(media: Mapping[str, Any]) -> str:
  """The report's warning for a clip kept without audio, e.g. 'truncated audio: kept without
  audio (the packets end at ...)', named by the reader's reason; '' when there is none."""
  if "has_audio" not in media or media["has_audio"]:
    return ""
  kind, _, detail = str(media["audio_reason"]).partition(": ")
  return f"{kind}: kept without audio" + (f" ({detail})" if detail else "")


def _init_worker(config: extract.ExtractConfig, device: str, torch_threads: int,
                 decode_threads: int, detect_batch: int) -> None:
  """Per process: torch threads and one ClipExtractor (MTCNN loaded once; none for 'privacy')."""
  import torch
  torch.set_num_threads(torch_threads)
  _WORKER["extractor"] = extract.ClipExtractor(config, device, decode_threads=decode_threads,
                                               detect_batch=detect_batch)


def _extract_one(clip_id: str, path: str, out_path: str) -> tuple[str, dict | None, str | None]:
  """(clip_id, stats, None) after caching the clip's media, or (clip_id, None, reason)."""
  start = time.perf_counter()
  try:
    record = _WORKER["extractor"].extract(path)
  except video.VideoError as e:
    return clip_id, None, f"bad video: {e}"
  except Exception as e:  # Any other failure of one clip must not stop the build.
    return clip_id, None, f"extraction failed: {type(e).__name__}: {e}"
  for statistic in ("num_faces", "steps_with_faces"):  # clip_stats counts them from the record.
    record.pop(statistic, None)
  npz_records.save(out_path, record)
  return clip_id, {**clip_stats(record), "seconds": round(time.perf_counter() - start, 3)}, None


def record_media(report: BuildReport, clip_id: str, stats: dict | None, reason: str | None
                 ) -> None:
  """Records one clip's media outcome: skipped with `reason`, extracted with `stats`, or found in
  the cache (both None)."""
  if reason is not None:
    report.skip(clip_id, reason)
  elif stats is None:
    report.entry(clip_id)["source"] = "cache"
  else:
    report.entry(clip_id).update(stats, source="extracted")


def run_media_stage(jobs: list[tuple[str, pathlib.Path]], work: WorkDirs,
                    config: extract.ExtractConfig, report: BuildReport, *, device: str = "cpu",
                    workers: int = 1, torch_threads: int = 1, detect_batch: int = 1,
                    clip_timeout: float | None = CLIP_TIMEOUT) -> None:
  """Extracts the media (faces, whole frames, audio) of every job (clip_id, video path) whose
  cache file is missing.

  Clips run in `workers` (at least one) spawned processes that this one can kill
  (preprocessing/workers.py), each with `torch_threads` torch threads and an equal share of the
  cores for FFmpeg's decoder threads. A clip whose extraction takes longer than `clip_timeout`
  seconds (a hung decoder; None or 0: no limit) or whose worker dies is skipped with the reason.
  """
  todo = []
  for clip_id, path in jobs:
    if work.media_file(clip_id).exists():
      record_media(report, clip_id, None, None)
    else:
      todo.append((clip_id, str(path), str(work.media_file(clip_id))))
  workers = max(1, workers)
  decode_threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
  initargs = (config, device, torch_threads, decode_threads, detect_batch)
  progress = tqdm(total=len(todo), desc="media", unit="clip", disable=not todo)
  for job, result, failure in workers_lib.run_jobs(todo, _extract_one, _init_worker, initargs,
                                                   workers=workers, timeout=clip_timeout):
    if failure is None:
      record_media(report, *result)
    else:
      report.skip(job[0], failure)
    progress.update()
  progress.close()


@dataclasses.dataclass
class ClipCheck:
  """What checking one clip's example adds to its report entry (`record_check`)."""
  fields: dict[str, Any]  # Report fields of the example (faces, steps, ...).
  warnings: list[str]
  reason: str | None = None  # Why it is skipped, or None: it stays ok.


def check_example(clip_id: str, load_example: Callable[[str], tuple[dict, dict]],
                  spec: spec_lib.DatasetSpec, skip_faceless: bool = False) -> ClipCheck:
  """Loads and validates one ok clip's example (see `write_stage`)."""
  check = ClipCheck({}, [])
  try:
    example, info = load_example(clip_id)
    check.warnings.extend(info.pop("warnings", []))
    check.fields.update(info)
    if info.get("faces") == 0:
      if skip_faceless:
        check.reason = "no faces: no face detected in any sampled step (--skip_faceless)"
        return check
      check.warnings.append("no faces: none detected in any sampled step (kept: context and "
                            "text)")
    validation.validate_example(example, spec)
  except (ValueError, KeyError, OSError) as e:  # E.g. a cache file damaged after it was written.
    check.reason = f"invalid example: {type(e).__name__}: {e}"
  return check


def record_check(report: BuildReport, clip_id: str, check: ClipCheck) -> None:
  entry = report.entry(clip_id)
  entry["warnings"].extend(check.warnings)
  entry.update(check.fields)
  if check.reason is not None:
    report.skip(clip_id, check.reason)


def write_stage(data_dir: str | os.PathLike, spec: spec_lib.DatasetSpec, report: BuildReport,
                load_example: Callable[[str], tuple[dict[str, Any], dict[str, Any]]],
                skip_faceless: bool = False) -> pathlib.Path | None:
  """Validates every ok clip's example, then writes the dataset of the ok ones.

  load_example(clip_id) -> (example, report fields). A clip whose example cannot be loaded or
  fails `validate_example` (or has no face while `skip_faceless`) turns into skipped.
  """
  for clip_id in tqdm(report.ok_clips(), desc="check", unit="clip"):
    record_check(report, clip_id, check_example(clip_id, load_example, spec, skip_faceless))
  return write_ok_clips(data_dir, spec, report, load_example)


def write_ok_clips(data_dir: str | os.PathLike, spec: spec_lib.DatasetSpec, report: BuildReport,
                   load_example: Callable[[str], tuple[dict[str, Any], dict[str, Any]]],
                   beam_options: list[str] | None = None) -> pathlib.Path | None:
  """Writes the dataset of the report's ok clips (each split in clip-id order); with
  `beam_options` (Beam pipeline flags) in a Beam pipeline (`tfds_writer.write_dataset_beam`)."""
  splits = {split: report.ok_clips(split) for split in report.split_counts()}
  if not splits:
    report.warnings.append("no clip is ok: no dataset written")
    return None
  if beam_options is None:
    generators = {split: (load_example(c)[0] for c in clips) for split, clips in splits.items()}
    path = tfds_writer.write_dataset(data_dir, spec, generators, overwrite=True)
  else:
    path = tfds_writer.write_dataset_beam(data_dir, spec, splits, _ExampleOnly(load_example),
                                          beam_options, overwrite=True)
  report.dataset = str(path)
  return path


@dataclasses.dataclass(frozen=True)
class _ExampleOnly:
  """load_example without the report fields (a picklable callable for Beam workers)."""
  load_example: Callable[[str], tuple[dict[str, Any], dict[str, Any]]]

  def __call__(self, clip_id: str) -> dict[str, Any]:
    return self.load_example(clip_id)[0]
