"""Builds the GEMS TFDS dataset (ArrayRecord) from raw clips or from the authors' features.

From raw clips (decode, MTCNN faces, crops, tracks, whole frames, audio, text embeddings, labels):
    python -m preprocessing.build --videos DIR --annotations FILE [FILE ...] \
        [--descriptions FILE_OR_DIR] [--individual FILE] [--labels labels.json] --data_dir OUT \
        [--workers N --clip_timeout 120] [--num_frames 16 --max_faces 8 --face_size 224 ...]
        [--whole_frames 0 --whole_frame_size 224 --whole_frame_resize squash]
        [--audio | --noaudio] [--audio_max_seconds 10]
        [--text_encoder PATH_OR_ID --text_pooling mean|cls --text_max_length 128]
        [--individual_labels none|fer_mini_xception|fer_big_xception [--fer_mapping neutral=none]]
In privacy mode (kind 'privacy': whole frames, audio, text and clip labels; the face detector
never runs, and nothing per person is stored):
    python -m preprocessing.build --privacy --videos DIR --annotations FILE --data_dir OUT \
        [--whole_frames 5 --noaudio ...]
From the authors' precomputed features (<root>/<split>/face_features, text_latent{1,2,3}):
    python -m preprocessing.build --from_features ROOT --data_dir OUT [--num_frames 96]

--individual_labels runs a pretrained facial-expression network (FER2013 weights: research-only
data) on every face crop: each detected face without a human emotion label (--individual) gets its
label (individual_emotion), flagged individual_emotion_auto, and every face its probabilities
(individual_emotion_probs); see gems_jax/data/face_labels.py for the FER -> ours mapping.

Output: OUT/<name>/<version>/ (TFDS ArrayRecord + gems_meta.json, read by
gems_jax.data.input_pipeline) and OUT/build_report.json (every clip ok or skipped with the reason;
see preprocessing/report.py). Per-clip caches in OUT/_work make a rerun skip finished clips.
gems_meta.json's `extract_config` holds the extraction (kind, faces, whole frames, audio) and text
settings, so that `python -m preprocessing.extract --extract_config` (the predict tool) repeats
them on a new clip.

Many machines: run with --num_shards N --shard_index i (same OUT on a shared file system, or copy
the OUT/_work folders together); a sharded run only extracts its part of the clips (sorted clip
ids i, i + N, ...) into the cache and writes OUT/build_report.shard-<i>-of-<N>.json. Then one
unsharded run with the same flags finds every clip cached and writes the dataset.

Exit status: 0 when a dataset (or a shard's cache) was written, 1 when no clip was usable, 2 on
a usage error (bad flag, unreadable annotation file, split leak).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any

import numpy as np

from gems_jax.data import face_labels, npz_records
from gems_jax.data import spec as spec_lib
from preprocessing import audio, extract, features_import, frames, individual, labels, pipeline
from preprocessing import beam_build
from preprocessing import text as text_lib
from preprocessing.report import BuildReport

PRIVACY_WHOLE_FRAMES = 5  # --whole_frames with --privacy: the authors' 5 frames (frames.py).
PRIVACY_HELP = (
    "build kind 'privacy': whole frames, audio, descriptions/text embeddings and clip labels, and "
    "nothing per person (no face crop, box, landmark, track id or per-face label; --individual "
    "and --individual_labels are refused). The face detector does not run at all. Blurring is "
    "not offered: the whole frames show the scene as filmed, faces included (blurring would need "
    "the detector); use "
    "--whole_frames 0 for a dataset of audio and text only")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  source = parser.add_argument_group("inputs")
  source.add_argument("--videos", help="folder of clips <clip_id>.<ext> (searched recursively)")
  source.add_argument("--annotations", nargs="+", help="annotation CSV(s): ours or labels.csv")
  source.add_argument("--descriptions", help="JSONL {clip_id, description} or folder of .txt")
  source.add_argument("--individual", help="per-frame individual annotations CSV")
  source.add_argument("--labels", help="labels.json (default: next to the annotations)")
  source.add_argument("--split", choices=labels.SPLITS,
                      help="split of an authors' labels.csv that is not in a <split>/ folder")
  source.add_argument("--from_features", help="root of the authors' precomputed-feature layout")
  out = parser.add_argument_group("output")
  out.add_argument("--data_dir", required=True)
  out.add_argument("--name", default="gems", help="TFDS dataset name")
  out.add_argument("--version", default="1.0.0")
  out.add_argument("--workers", type=int, default=1, help="processes extracting clips")
  out.add_argument("--clip_timeout", type=float, default=pipeline.CLIP_TIMEOUT,
                   help="seconds one clip's extraction (decoding + faces) may take; a clip that "
                        "takes longer (a hung decoder) is killed and skipped. 0: no limit")
  out.add_argument("--num_shards", type=int, default=1)
  out.add_argument("--shard_index", type=int, default=0)
  out.add_argument("--skip_faceless", action="store_true",
                   help="skip clips without any detected face (default: keep them)")
  out.add_argument("--require_descriptions", action="store_true",
                   help="skip clips without a description (default: keep, text_mask False)")
  _add_extraction_flags(parser)
  extract.add_runtime_flags(parser)
  beam_build.add_flags(parser)
  args = parser.parse_args(argv)
  if args.from_features:
    if args.videos or args.annotations:
      parser.error("--from_features reads its own labels.csv; do not combine with --videos or "
                   "--annotations")
    if args.num_shards != 1:
      parser.error("--from_features is a fast import; it does not take --num_shards")
  elif not (args.videos and args.annotations):
    parser.error("need --videos and --annotations (or --from_features ROOT)")
  if args.clip_timeout < 0:
    parser.error(f"--clip_timeout must be >= 0 (0: no limit), got {args.clip_timeout}")
  _check_media_flags(parser, args)
  beam_build.check_args(parser, args)
  files = [("annotations", path) for path in args.annotations or []] + [
      ("individual", args.individual), ("labels", args.labels)]
  for flag, path in files:  # Checked before any work starts.
    if path and not os.path.isfile(path):
      parser.error(f"--{flag} {path}: " + ("is a folder, not a file" if os.path.isdir(path)
                                           else "no such file"))
  if not 0 <= args.shard_index < args.num_shards:
    parser.error(f"need 0 <= --shard_index < --num_shards, got {args.shard_index}, "
                 f"{args.num_shards}")
  return args


def _check_media_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Checks --privacy, --whole_frames and --audio_max_seconds and fills the --whole_frames
  default (0, with --privacy PRIVACY_WHOLE_FRAMES)."""
  labeller = args.individual_labels != face_labels.NONE
  if args.from_features and (args.privacy or args.whole_frames or labeller):
    parser.error("--from_features imports face features without frames, audio or face crops; it "
                 "does not take --privacy, --whole_frames or --individual_labels")
  if args.fer_mapping and not labeller:
    parser.error("--fer_mapping needs --individual_labels fer_mini_xception|fer_big_xception")
  if args.privacy:
    for flag, value in (("individual", args.individual), ("individual_labels", labeller),
                        ("skip_faceless", args.skip_faceless)):
      if value:
        parser.error(f"--{flag} is refused with --privacy: a privacy dataset holds no face and "
                     f"no per-face label, and the face detector does not run")
  if args.whole_frames is None:
    args.whole_frames = PRIVACY_WHOLE_FRAMES if args.privacy else 0
  if args.whole_frames < 0 or args.audio_max_seconds <= 0:
    parser.error(f"need --whole_frames >= 0 and --audio_max_seconds > 0, got {args.whole_frames} "
                 f"and {args.audio_max_seconds}")
  if args.privacy and not (args.whole_frames or args.audio):
    parser.error("--privacy with --whole_frames 0 and --noaudio would keep no media: a privacy "
                 "dataset needs whole frames or audio")


def _frame_size(text: str) -> tuple[int, int]:
  """'224' -> (224, 224); '180x320' -> (180, 320), i.e. HxW."""
  try:
    sizes = tuple(int(v) for v in text.lower().split("x"))
  except ValueError:
    sizes = ()
  if len(sizes) not in (1, 2) or min(sizes) < 1:
    raise argparse.ArgumentTypeError(f"expected a size such as 224 or HxW such as 180x320, got "
                                     f"{text!r}")
  return sizes * 2 if len(sizes) == 1 else sizes


def _add_extraction_flags(parser: argparse.ArgumentParser) -> None:
  """The settings that change the extracted data (they become the dataset's extract_config)."""
  d = extract.ExtractConfig()
  g = parser.add_argument_group("faces")
  g.add_argument("--num_frames", type=int, default=None,
                 help=f"T sampled steps per clip (default {d.num_frames}; with --from_features: "
                      f"the most steps of any clip)")
  g.add_argument("--fps", type=float, default=None,
                 help="sample at this rate (the authors: 1) and pad/truncate to T, instead of "
                      "T uniform steps")
  g.add_argument("--max_faces", type=int, default=d.max_faces, help="K face slots per step")
  g.add_argument("--face_size", type=int, default=d.face_size, help="S, crop side in pixels")
  g.add_argument("--face_margin", type=float, default=d.face_margin)
  g.add_argument("--jpeg_quality", type=int, default=d.jpeg_quality)
  g.add_argument("--detect_max_side", type=int, default=d.detect_max_side,
                 help="detect on a view with this longer side (crops stay full resolution)")
  g.add_argument("--min_face_size", type=int, default=d.min_face_size)
  g.add_argument("--min_face_prob", type=float, default=d.min_face_prob)
  g.add_argument("--individual_labels", choices=face_labels.CHOICES, default=d.individual_labels,
                 help="label every detected face without a human emotion label (--individual "
                      "always wins) with this pretrained FER2013 network (research-only data); "
                      "stores individual_emotion_probs and individual_emotion_auto too")
  g.add_argument("--fer_mapping", default="",
                 help="changes to the FER class -> emotion name mapping (default angry=anger,"
                      "disgust=disgust,fear=fear,happy=joy,sad=sadness,surprise=surprise,"
                      "neutral=none): 'fer=ours,...' or a JSON file")
  m = parser.add_argument_group("privacy, whole frames and audio")
  m.add_argument("--privacy", action="store_true", help=PRIVACY_HELP)
  m.add_argument("--whole_frames", type=int, default=None,
                 help=f"T_v whole frames per clip, sampled as the faces' steps (--fps applies) "
                      f"(default 0; {PRIVACY_WHOLE_FRAMES} with --privacy)")
  m.add_argument("--whole_frame_size", type=_frame_size, default="224",
                 help="whole-frame size: S for S x S, or HxW")
  m.add_argument("--whole_frame_resize", choices=frames.RESIZE_MODES, default="squash",
                 help="squash: stretch the frame to the size (the authors'); letterbox: keep the "
                      "aspect on black bars")
  m.add_argument("--audio", dest="audio", action="store_true", default=True,
                 help=f"store the clip's sound: int16 mono {audio.SAMPLE_RATE} Hz from its first "
                      f"frame; a clip without usable audio is kept with has_audio False and a "
                      f"warning")
  m.add_argument("--noaudio", dest="audio", action="store_false", default=argparse.SUPPRESS,
                 help="store no audio")
  m.add_argument("--audio_max_seconds", type=float, default=audio.MAX_SECONDS,
                 help=f"stored samples per clip: this x {audio.SAMPLE_RATE} (longer clips are "
                      f"cut, shorter ones zero-padded; the real length is in audio_length)")
  t = parser.add_argument_group("text")
  t.add_argument("--text_encoder", default="roberta-base",
                 help="local Hugging Face folder, 'pkg:<module>' or a hub id")
  t.add_argument("--text_pooling", choices=text_lib.POOLINGS, default="mean")
  t.add_argument("--text_max_length", type=int, default=128)
  t.add_argument("--text_batch_size", type=int, default=32,
                 help="descriptions per encoder call (never changes the data)")


def _extract_config(args: argparse.Namespace) -> extract.ExtractConfig:
  return extract.ExtractConfig(
      num_frames=args.num_frames or extract.ExtractConfig.num_frames, sample_fps=args.fps,
      max_faces=args.max_faces, face_size=args.face_size, face_margin=args.face_margin,
      jpeg_quality=args.jpeg_quality, detect_max_side=args.detect_max_side,
      min_face_size=args.min_face_size, min_face_prob=args.min_face_prob,
      kind="privacy" if args.privacy else "faces", num_whole_frames=args.whole_frames,
      whole_frame_size=args.whole_frame_size, whole_frame_resize=args.whole_frame_resize,
      audio_samples=round(args.audio_max_seconds * audio.SAMPLE_RATE) if args.audio else 0,
      audio_rate=audio.SAMPLE_RATE, individual_labels=args.individual_labels)


def _text_settings(args: argparse.Namespace) -> text_lib.TextSettings:
  return text_lib.TextSettings(text_lib.absolute_encoder_path(args.text_encoder),
                               args.text_pooling, args.text_max_length, args.text_batch_size)


def _report_path(args: argparse.Namespace) -> pathlib.Path:
  name = ("build_report.json" if args.num_shards == 1 else
          f"build_report.shard-{args.shard_index:05d}-of-{args.num_shards:05d}.json")
  return pathlib.Path(args.data_dir) / name


def _label_fill(t: int, k: int) -> dict[str, np.ndarray]:
  return {"individual_emotion": np.full((t, k), -1, np.int32),
          "individual_valence": np.full((t, k), np.nan, np.float32),
          "individual_arousal": np.full((t, k), np.nan, np.float32)}


def _video_example(clip_id: str, label: labels.ClipLabels, space: labels.LabelSpace,
                   work: pipeline.WorkDirs, people: list[individual.PersonLabel],
                   fer_matrix: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """The contract example of one extracted clip and its report fields. fer_matrix float32 [7, V]
  (face_labels.mapping_matrix) when an automatic labeller ran (--individual_labels)."""
  media = npz_records.load(work.media_file(clip_id))
  fer_probs = media.pop("face_fer_probs", None)  # Cached FER classes: mapped below.
  text = npz_records.load(work.text_file(clip_id))
  info: dict[str, Any] = {**pipeline.clip_stats(media), "warnings": []}
  if warning := pipeline.audio_warning(media):
    info["warnings"].append(warning)
  media.pop("audio_reason", None)  # In the report, not in the example.
  example = {"clip_id": clip_id, "source_video": labels.source_video(clip_id),
             "description": text["description"], "text_embedding": text["text_embedding"],
             "text_mask": text["text_mask"], **media, **label.example_fields(space)}
  if "face_mask" in media:  # Kind 'faces': per-face labels, from --individual when given.
    example.update(_label_fill(*media["face_mask"].shape))
    if people:
      emotion, valence, arousal, note = individual.assign_individual_labels(
          people, media["frame_index"], media["face_boxes"], media["face_mask"])
      example.update(individual_emotion=emotion, individual_valence=valence,
                     individual_arousal=arousal)
      labelled = (emotion >= 0) | ~np.isnan(valence) | ~np.isnan(arousal)
      info["individual_labels"] = int(labelled.sum())
      if note:
        info["warnings"].append(f"unmatched individual annotations: {note}")
    if fer_matrix is not None:
      if fer_probs is None:
        raise ValueError("the media cache holds no face_fer_probs (--individual_labels)")
      emotion, probs, auto = individual.add_automatic_labels(
          example["individual_emotion"], fer_probs, media["face_mask"], fer_matrix)
      example.update(individual_emotion=emotion, individual_emotion_probs=probs,
                     individual_emotion_auto=auto)
    info["face_labels"] = individual.label_counts(
        example["individual_emotion"], example.get("individual_emotion_auto"), media["face_mask"])
  return example, info


def build_from_videos(args: argparse.Namespace, report: BuildReport) -> int:
  space = (labels.LabelSpace.from_file(args.labels) if args.labels
           else labels.LabelSpace.beside(args.annotations[0]))
  annotations = labels.read_annotations(args.annotations, space, args.split)
  labels.check_split_leaks({c: l.split for c, l in annotations.labels.items()})
  known = set(annotations.labels) | set(annotations.errors)
  videos, warnings = pipeline.discover_videos(args.videos, known)
  report.warnings.extend(warnings)
  all_clips = sorted(known | set(videos))
  mine = all_clips[args.shard_index::args.num_shards]
  descriptions = {}
  if args.descriptions:
    descriptions = text_lib.read_descriptions(args.descriptions)
    stray = sorted(set(descriptions) - set(all_clips))
    if stray:
      report.warnings.append(f"{len(stray)} description(s) for unknown clip ids: {stray[:10]}")
  jobs = []
  for clip_id in mine:
    label = annotations.labels.get(clip_id)
    split = label.split if label else None
    if clip_id in annotations.errors:
      report.skip(clip_id, annotations.errors[clip_id])
    elif label is None:
      report.skip(clip_id, f"unknown clip id: {videos[clip_id]} is not in the annotations")
    elif clip_id not in videos:
      report.skip(clip_id, f"no video file: none named {clip_id}.* under {args.videos}", split)
    elif not descriptions.get(clip_id, "").strip() and args.require_descriptions:
      report.skip(clip_id, "no description: none given and --require_descriptions is set", split)
    else:
      report.entry(clip_id, split)
      if not descriptions.get(clip_id, "").strip():
        report.warn(clip_id, "no description: text parts are zero, text_mask False")
      jobs.append((clip_id, videos[clip_id]))
  config, text_settings = _extract_config(args), _text_settings(args)
  mapping, fer_matrix = {}, None
  if config.individual_labels != face_labels.NONE:  # Checked before any work.
    mapping = face_labels.parse_mapping(args.fer_mapping)
    fer_matrix = face_labels.mapping_matrix(mapping, space.emotion_names)
  work = pipeline.WorkDirs.create(args.data_dir, config, text_settings)
  stages = beam_build.stages(args)  # The plain build's, or Beam jobs with --runner.
  text_dim = stages.run_text_stage([c for c, _ in jobs], descriptions, work, text_settings,
                                   args.device, report)
  stages.run_media_stage(jobs, work, config, report, device=args.device, workers=args.workers,
                         torch_threads=args.torch_threads, detect_batch=args.detect_batch,
                         clip_timeout=args.clip_timeout)
  if args.num_shards > 1:
    return 0
  people, problems = ({}, {})
  if args.individual:
    people, problems = individual.read_individual_annotations(args.individual, space)
  for clip_id, messages in problems.items():
    if clip_id in report.clips:
      report.clips[clip_id]["warnings"].extend(f"individual annotation dropped: {m}"
                                               for m in messages)
  spec = spec_lib.DatasetSpec(
      name=args.name, version=args.version, num_frames=config.num_frames,
      max_faces=config.max_faces, text_dim=text_dim, storage="crops",
      face_size=config.face_size, kind=config.kind, num_whole_frames=config.num_whole_frames,
      whole_frame_size=config.whole_frame_size, audio_samples=config.audio_samples,
      audio_rate=config.audio_rate, individual_labels=config.individual_labels,
      individual_label_mapping=mapping,
      extract_config=extract.make_extract_config(config, text_settings), **space.spec_fields())
  path = stages.write_stage(
      args.data_dir, spec, report,
      lambda c: _video_example(c, annotations.labels[c], space, work, people.get(c, []),
                               fer_matrix),
      skip_faceless=args.skip_faceless)
  return 0 if path else 1


def _features_example(clip_id: str, label: labels.ClipLabels, space: labels.LabelSpace,
                      layout: dict[str, features_import.SplitLayout], split: str, t: int,
                      dims: tuple[int, int]) -> tuple[dict[str, Any], dict[str, Any]]:
  record = features_import.load_clip_features(layout[split], clip_id, t, *dims)
  found = record.pop("num_steps_found")
  info: dict[str, Any] = {"steps": int(record["step_mask"].sum()), "faces": int(
      record["face_mask"].sum()), "warnings": []}
  if found > t:
    info["warnings"].append(f"extra steps: {found} step files, kept the first {t} (--num_frames)")
  missing = [features_import.TEXT_FOLDERS[i] for i, ok in enumerate(record["text_mask"]) if not ok]
  if missing:
    info["warnings"].append(f"no {', '.join(missing)} file: zero part, text_mask False")
  example = {"clip_id": clip_id, "source_video": labels.source_video(clip_id), "description": "",
             **record, **_label_fill(t, 1), **label.example_fields(space)}
  return example, info


def build_from_features(args: argparse.Namespace, report: BuildReport) -> int:
  layout = features_import.scan_layout(args.from_features)
  labels_file = pathlib.Path(args.labels or pathlib.Path(args.from_features) / "labels.json")
  space = labels.LabelSpace.from_file(labels_file) if labels_file.exists() else labels.LabelSpace()
  annotations = labels.read_annotations(
      [s.labels_csv for s in layout.values() if s.labels_csv], space)
  labels.check_split_leaks({c: l.split for c, l in annotations.labels.items()})
  t = args.num_frames or features_import.count_steps(layout)
  dims = features_import.layout_dims(layout)
  folder_split = {c: s for s, split in layout.items() for c in split.face_dirs}
  for clip_id in sorted(set(folder_split) | set(annotations.labels) | set(annotations.errors)):
    label = annotations.labels.get(clip_id)
    if clip_id in annotations.errors:
      report.skip(clip_id, annotations.errors[clip_id], folder_split.get(clip_id))
    elif label is None:
      report.skip(clip_id, "unknown clip id: not in any labels.csv", folder_split.get(clip_id))
    elif clip_id not in folder_split:
      report.skip(clip_id, f"no features: no face_features folder in {label.split}/", label.split)
    elif folder_split[clip_id] != label.split:
      report.skip(clip_id, f"split mismatch: labelled {label.split} but its features are under "
                           f"{folder_split[clip_id]}/", label.split)
    else:
      report.entry(clip_id, label.split)["source"] = "import"
  spec = spec_lib.DatasetSpec(
      name=args.name, version=args.version, num_frames=t, max_faces=1, text_dim=dims[1],
      storage="embeddings", embed_dim=dims[0], **space.spec_fields())
  path = pipeline.write_stage(
      args.data_dir, spec, report,
      lambda c: _features_example(c, annotations.labels[c], space, layout,
                                  annotations.labels[c].split, t, dims))
  return 0 if path else 1


def main(argv: list[str] | None = None) -> int:
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  args = parse_args(argv)
  settings = {k: v for k, v in vars(args).items()}
  if not args.from_features:
    settings["extract_config"] = extract.make_extract_config(_extract_config(args),
                                                             _text_settings(args))
  report = BuildReport(sys.argv[:1] + (argv if argv is not None else sys.argv[1:]), settings)
  try:
    if args.from_features:
      status = build_from_features(args, report)
    else:
      status = build_from_videos(args, report)
  except (ValueError, FileNotFoundError) as e:  # Bad inputs as a whole: a clear message.
    print(f"error: {e}", file=sys.stderr)
    return 2
  path = report.save(_report_path(args))
  print(report.summary())
  print(f"report: {path}" + (f"\ndataset: {report.dataset}" if report.dataset else ""))
  return status


if __name__ == "__main__":
  sys.exit(main())
