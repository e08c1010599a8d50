"""The stages of a dataset build from raw clips: text, media (multi-process), write.

    work = WorkDirs.create(data_dir, extract_config, text_settings)  # ExtractConfig, TextSettings
    dim = run_text_stage(clips, descriptions, work, text_settings, device, report)
    run_media_stage(jobs, work, extract_config, report, device=..., workers=..., clip_timeout=120)
    write_stage(data_dir, spec, report, load_example)      # -> TFDS ArrayRecord dataset

The media stage extracts each clip's faces, whole frames and audio (whichever the ExtractConfig
asks for) in one killable worker job. Caches live in `<data_dir>/_work/media-<hash>/<clip_id>.npz`
and `_work/text-<hash>/<clip_id>.npz`, where the hash covers every setting that changes the cached
data (every ExtractConfig field: kind, faces, whole frames, audio; encoder, pooling and max
length), so a rerun with the same settings skips finished clips and a rerun with other settings
never mixes old and new data. Labels are not cached: they are joined at write time, so a
fixed annotation file needs no re-extraction. Each clip's outcome goes into the `BuildReport`;
no per-clip problem stops the build.
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
    media_settings, text_settings = dataclasses.asdict(config), text.cache_key()
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


def run_text_stage(clip_ids: list[str], descriptions: Mapping[str, str], work: WorkDirs,
                   settings: text_lib.TextSettings, device: str, report: BuildReport) -> int:
  """Encodes the descriptions of clips whose text cache is missing or stale; returns D."""
  dim = text_lib.encoder_dim(settings.encoder)
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
  with_text = [(c, d) for c, d in pending if d.strip()]
  encoder = (text_lib.TextEncoder(settings.encoder, settings.pooling, settings.max_length,
                                  settings.batch_size, device) if with_text else None)
  chunk = max(1, settings.batch_size)
  for start in tqdm(range(0, len(pending), chunk), desc="text", unit="batch",
                    disable=not with_text):
    batch = pending[start:start + chunk]
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
    report.text_encoded += sum(1 for _, d in batch if d.strip())
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


def _record(report: BuildReport, clip_id: str, stats: dict | None, reason: str | None) -> None:
  if reason is not None:
    report.skip(clip_id, reason)
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
      report.entry(clip_id)["source"] = "cache"
    else:
      todo.append((clip_id, str(path), str(work.media_file(clip_id))))
  workers = max(1, workers)
  decode_threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
  initargs = (config, device, torch_threads, decode_threads, detect_batch)
  progress = tqdm(total=len(todo), desc="media", unit="clip", disable=not todo)
  for job, result, failure in workers_lib.run_jobs(todo, _extract_one, _init_worker, initargs,
                                                   workers=workers, timeout=clip_timeout):
    if failure is None:
      _record(report, *result)
    else:
      report.skip(job[0], failure)
    progress.update()
  progress.close()


def write_stage(data_dir: str | os.PathLike, spec: spec_lib.DatasetSpec, report: BuildReport,
                load_example: Callable[[str], tuple[dict[str, Any], dict[str, Any]]],
                skip_faceless: bool = False) -> pathlib.Path | None:
  """Validates every ok clip's example, then writes the dataset of the ok ones.

  load_example(clip_id) -> (example, report fields). A clip whose example cannot be loaded or
  fails `validate_example` (or has no face while `skip_faceless`) turns into skipped.
  """
  for clip_id in tqdm(report.ok_clips(), desc="check", unit="clip"):
    try:
      example, info = load_example(clip_id)
      entry = report.entry(clip_id)
      entry["warnings"].extend(info.pop("warnings", []))
      entry.update(info)
      if info.get("faces") == 0:
        if skip_faceless:
          report.skip(clip_id, "no faces: no face detected in any sampled step (--skip_faceless)")
          continue
        report.warn(clip_id, "no faces: none detected in any sampled step (kept: context and "
                             "text)")
      validation.validate_example(example, spec)
    except (ValueError, KeyError, OSError) as e:  # E.g. a cache file damaged after it was written.
      report.skip(clip_id, f"invalid example: {type(e).__name__}: {e}")
  splits = {split: report.ok_clips(split) for split in report.split_counts()}
  if not splits:
    report.warnings.append("no clip is ok: no dataset written")
    return None
  generators = {split: (load_example(c)[0] for c in clips) for split, clips in splits.items()}
  path = tfds_writer.write_dataset(data_dir, spec, generators, overwrite=True)
  report.dataset = str(path)
  return path
