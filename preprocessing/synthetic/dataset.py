"""A whole synthetic VGAF-GEMS set: sources, splits, balanced labels, and the files of the data contract.

`generate(out_dir, num_clips, seed, ...)` writes
  <out>/videos/<clip_id>.mp4   H.264 (PyAV), `fps` frames per second, `frames_per_clip` frames, and an AAC
                               mono 16 kHz track as long as the video (none with `sound=None`)
  <out>/annotations.csv        clip_id,split,group_emotion,group_category,valence,arousal,
                               situational_emotion,situation[,audio_category,audio_agrees,audio_led]
                               (the last three with sound; the dataset builder ignores them)
  <out>/labels.json            class names and value ranges
  <out>/individual.csv         clip_id,frame,x1,y1,x2,y2,emotion,valence,arousal (visible person-frames only)
  <out>/descriptions.jsonl     {"clip_id": ..., "description": ...}
  <out>/planted.csv            clip_id,trajectory,arc_emotion,whole_clip_arousal,described_situation: what
                               the world planted and no model input states (for analysis, not for training)
Clips are cut from source videos, 2-3 clips per source, with VGAF-like ids `<source>_<clip>`. A source has
one situation and one venue; the situation is balanced over sources (every situation once before any
repeats), and the clip's dominant expression and its trajectory (rules.TRAJECTORIES) are balanced over clips
the same way, independently of the situation and of each other. A random mislead_fraction of the clips
(rounded to whole clips) get a description of another situation. Splits are drawn per source (no source in
two splits), about 70/15/15 % of sources, spread over the situations. With sound (`AudioFormat`), exactly
num_clips - round(agreement * num_clips) clips plant another category's event than their group category
(the two others in turn), and round(led_fraction * num_clips) clips are audio-led (world.py; their sound
categories balanced; they agree); both sets are drawn from the seed (seed, 4). Everything is a function of
`seed`: clip i uses the seeds (seed, 2, i) for its picture and (seed, 3, i) for its sound, so the files are
the same for any number of worker processes.
"""
import csv
import dataclasses
import json
import multiprocessing
import os
import pathlib

import av
import numpy as np

from preprocessing.synthetic import audio, faces, rules, scenes, world

ANNOTATION_COLUMNS = ("clip_id", "split", "group_emotion", "group_category", "valence", "arousal",
                      "situational_emotion", "situation")
INDIVIDUAL_COLUMNS = ("clip_id", "frame", "x1", "y1", "x2", "y2", "emotion", "valence", "arousal")
AUDIO_COLUMNS = ("audio_category", "audio_agrees", "audio_led")   # annotations.csv, with sound
PLANTED_COLUMNS = ("clip_id", "trajectory", "arc_emotion", "whole_clip_arousal", "described_situation")
SPLITS = ("train", "val", "test")
EVAL_FRACTION = 0.15          # of sources, for each of val and test
CLIPS_PER_SOURCE = (2, 3)
_GOLDEN = (np.sqrt(5) - 1) / 2


@dataclasses.dataclass(frozen=True)
class VideoFormat:
  width: int = 640
  height: int = 360
  frames_per_clip: int = 40
  fps: int = 10
  crf: int = 20


@dataclasses.dataclass(frozen=True)
class AudioFormat:
  """The clips' sound: the fraction of clips whose sound plants their group category (the others plant
  another category's), and the fraction of audio-led clips (faces all 'none'; they always agree)."""
  agreement: float = 1.0
  led_fraction: float = 0.0


def plan_audio(num_clips: int, seed: int, sound: AudioFormat) -> list:
  """(audio_offset, audio_led category or None) per clip, as world.ClipSpec takes them: exactly
  num_clips - round(agreement * num_clips) clips with offset 1 or 2 (balanced), round(led_fraction *
  num_clips) other clips audio-led with balanced categories, the rest (0, None)."""
  for name in ("agreement", "led_fraction"):
    if not 0.0 <= getattr(sound, name) <= 1.0:
      raise ValueError(f"audio {name} must be in [0, 1], got {getattr(sound, name)}")
  disagree = num_clips - round(sound.agreement * num_clips)
  led = round(sound.led_fraction * num_clips)
  if disagree + led > num_clips:
    raise ValueError(f"{disagree} disagreeing and {led} audio-led clips (they agree) exceed "
                     f"{num_clips} clips: lower the audio-led fraction or raise the agreement")
  rng = np.random.default_rng([seed, 4])
  order = rng.permutation(num_clips)
  plan = [(0, None)] * num_clips
  for clip, category in zip(order[:led], _balanced(led, len(rules.GROUP_CATEGORIES), rng)):
    plan[clip] = (0, int(category))
  for clip, offset in zip(order[led:led + disagree], _balanced(disagree, 2, rng) + 1):
    plan[clip] = (int(offset), None)
  return plan


def _balanced(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
  """n labels in [0, classes): concatenated random permutations, so counts differ by at most one."""
  reps = -(-n // classes)
  return np.concatenate([np.zeros(0, np.int64)] + [rng.permutation(classes) for _ in range(reps)])[:n]


def assign_splits(source_situations: np.ndarray, rng: np.random.Generator) -> list:
  """Split name per source. With S >= 3 sources, val and test get max(1, round(EVAL_FRACTION * S)) sources
  each; sources are ordered by situation, and the eval ones are picked by a golden-ratio sequence over that
  order, so every split sees a spread of situations."""
  s = len(source_situations)
  if s < 3:
    return ["train"] * s
  order = np.lexsort((rng.permutation(s), source_situations))          # by situation, ties at random
  key = np.empty(s)
  key[order] = (np.arange(s) * _GOLDEN + rng.uniform()) % 1.0
  n_eval = max(1, round(EVAL_FRACTION * s))
  ranked = np.argsort(key, kind="stable")
  splits = ["train"] * s
  for rank, src in enumerate(ranked[:2 * n_eval]):
    splits[src] = "test" if rank < n_eval else "val"
  return splits


def plan_dataset(num_clips: int, seed: int, video: VideoFormat,
                 mislead_fraction: float = rules.MISLEAD_FRACTION,
                 sound: AudioFormat | None = AudioFormat()):
  """(ClipSpec, split) per clip, in clip order; silent clips with `sound=None`. An audio-led clip is
  planned as a steady one showing 'none' (its dominant expression and trajectory, drawn balanced over
  all clips, are replaced), so with no audio-led clip the pictures are those of a silent world."""
  if num_clips < 1:
    raise ValueError(f"num_clips must be >= 1, got {num_clips}")
  rng = np.random.default_rng([seed, 0])
  sizes = []
  while sum(sizes) < num_clips:
    sizes.append(int(rng.choice(CLIPS_PER_SOURCE)))
  sizes[-1] -= sum(sizes) - num_clips
  situations = _balanced(len(sizes), len(scenes.SITUATIONS), rng)
  splits = assign_splits(situations, rng)
  dominant = _balanced(num_clips, len(faces.EMOTIONS), rng)
  trajectories = _balanced(num_clips, len(rules.TRAJECTORIES), rng)
  misleading = set(rng.permutation(num_clips)[:round(mislead_fraction * num_clips)].tolist())
  wrong = rng.integers(1, len(scenes.SITUATIONS), num_clips)   # described = (drawn + wrong) mod 10
  sounds = [(0, None)] * num_clips if sound is None else plan_audio(num_clips, seed, sound)
  plan, index = [], 0
  for src, size in enumerate(sizes):
    venue = int(np.random.SeedSequence([seed, 1, src]).generate_state(1)[0])
    for clip in range(size):
      described = (int(situations[src] + wrong[index]) % len(scenes.SITUATIONS) if index in misleading
                   else None)
      offset, led = sounds[index]
      spec = world.ClipSpec(f"{src + 1}_{clip + 1}", int(situations[src]), int(dominant[index]), venue,
                            (seed, 2, index), video.width, video.height, video.frames_per_clip,
                            rules.TRAJECTORIES[trajectories[index]], described, video.fps,
                            None if sound is None else (seed, 3, index), offset, led)
      if led is not None:
        spec = dataclasses.replace(spec, dominant_emotion=faces.EMOTIONS.index("none"),
                                   trajectory="steady")
      plan.append((spec, splits[src]))
      index += 1
  return plan


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] RGB -> uint8 [3H/2, W] planar YUV 4:2:0 (BT.601, limited range; PyAV's layout).

  Done in NumPy rather than by libswscale inside PyAV: identical frames gave different mp4 bytes through
  swscale (seen on an AMD EPYC host). That was probably x264's mbtree over-read (see `x264_options`), not
  swscale, but this conversion stays: it is tested and keeps the bytes as they were.
  """
  h, w, _ = frame.shape
  rgb = frame.astype(np.float32)
  y = 16 + rgb @ np.array([65.481, 128.553, 24.966], np.float32) / 255
  # Mean of each 2x2 block, as four strided adds (a 5-D .mean() is several times slower here).
  quads = (rgb[0::2, 0::2] + rgb[0::2, 1::2] + rgb[1::2, 0::2] + rgb[1::2, 1::2]) * 0.25
  u = 128 + quads @ np.array([-37.797, -74.203, 112.0], np.float32) / 255
  v = 128 + quads @ np.array([112.0, -93.786, -18.214], np.float32) / 255
  planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8).reshape(-1, w) for p in (y, u, v)]
  return np.concatenate(planes)


def x264_options(width: int, crf: int) -> dict:
  """libx264 options of `write_mp4`: the veryfast preset at `crf`, with macroblock-tree rate control (mbtree)
  off unless the width in 16-px macroblocks, rounded up, is a multiple of 8 (640 px = 40 keeps it).

  Why: x264's AVX-512 mbtree_propagate_list works on 8 macroblocks at a time, so on a row of another length
  it reads past the row's end, at the last row into memory x264 never wrote, and what it finds there
  changes the bitstream. The mp4 bytes and decoded frames then depended on what the process had freed
  before (other clips encoded first, the worker count, imports); seen on an AMD EPYC at 320x180. With
  mbtree off that code does not run; it is kept where it is safe because without it a 640x360 clip is
  60 % larger, and so the default-size bytes stay as they were. See docs/synthetic_world.md.
  """
  options = {"crf": str(crf), "preset": "veryfast"}
  if -(-width // 16) % 8:
    options["mbtree"] = "0"
  return options


def write_mp4(path: pathlib.Path, frames: np.ndarray, fps: int, crf: int = 20) -> None:
  """uint8 [T, H, W, 3] RGB frames -> H.264 mp4 (yuv420p). Reproducible: one encoder thread, and the
  options of `x264_options` so no leftover memory leaks into the bitstream.

  H must be a multiple of 4 and W even (the 4:2:0 planes in PyAV's [3H/2, W] layout)."""
  _, height, width, _ = frames.shape
  if height % 4 or width % 2:
    raise ValueError(f"{path}: frame size {width}x{height}; width must be even and height a multiple of 4")
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=fps, options=x264_options(width, crf))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.thread_count = 1
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")))
    container.mux(stream.encode())


def _clip_rows(result: world.ClipResult, split: str):
  """(annotation row, individual rows, description record, planted row) of one clip."""
  lab, spec = result.labels, result.spec
  annotation = [spec.clip_id, split, lab.group_emotion, lab.group_category, f"{lab.valence:.4f}",
                f"{lab.arousal:.4f}", ";".join(str(i) for i in lab.situational_emotion), lab.situation]
  if result.sound is not None:
    annotation += [result.sound_category, int(result.sound_category == lab.group_category),
                   int(spec.audio_led is not None)]
  individual = []
  for t in range(spec.num_frames):
    for p in np.flatnonzero(result.visible[:, t]):
      x1, y1, x2, y2 = result.boxes[p, t]
      individual.append([spec.clip_id, t, f"{x1:.1f}", f"{y1:.1f}", f"{x2:.1f}", f"{y2:.1f}",
                         int(result.expressions[p, t]), f"{lab.individual_valence[p, t]:.4f}",
                         f"{lab.individual_arousal[p, t]:.4f}"])
  described = spec.situation if spec.described_situation is None else spec.described_situation
  arc = faces.EMOTIONS[result.arc_emotion] if result.arc_emotion >= 0 else ""
  planted = [spec.clip_id, spec.trajectory, arc, f"{lab.whole_clip_arousal:.4f}", described]
  return annotation, individual, {"clip_id": spec.clip_id, "description": result.description}, planted


def _make_and_write(job):
  spec, split, video_dir, video = job
  result = world.make_clip(spec)
  path = pathlib.Path(video_dir) / f"{spec.clip_id}.mp4"
  write_mp4(path, result.frames, video.fps, video.crf)
  if result.sound is not None:
    audio.add_audio_track(path, result.sound)
  return _clip_rows(result, split)


def labels_metadata() -> dict:
  """The labels.json content of the synthetic set."""
  return {"emotion": list(faces.EMOTIONS), "group_category": list(rules.GROUP_CATEGORIES),
          "situational_emotion": list(rules.SITUATIONAL_EMOTIONS), "situation": list(scenes.SITUATIONS),
          "valence_range": list(rules.VALENCE_RANGE), "arousal_range": list(rules.AROUSAL_RANGE)}


def generate(out_dir, num_clips: int, seed: int, video: VideoFormat = VideoFormat(),
             workers: int | None = None, mislead_fraction: float = rules.MISLEAD_FRACTION,
             sound: AudioFormat | None = AudioFormat()) -> dict:
  """Writes the synthetic set to `out_dir` (see the module docstring; a silent one with `sound=None`);
  returns a summary dict."""
  out = pathlib.Path(out_dir)
  video_dir = out / "videos"
  video_dir.mkdir(parents=True, exist_ok=True)
  plan = plan_dataset(num_clips, seed, video, mislead_fraction, sound)
  jobs = [(spec, split, str(video_dir), video) for spec, split in plan]
  workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
  # Always in fresh 'spawn' processes, even for one worker: libx264's output depended on what else the
  # calling process had loaded (after `import torch`, one clip of 3 encoded to other bytes). The cause was
  # most likely x264 reading leftover memory (see `x264_options`), but a clean interpreter costs little.
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    rows = pool.map(_make_and_write, jobs, chunksize=1)
  with open(out / "annotations.csv", "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(ANNOTATION_COLUMNS + (() if sound is None else AUDIO_COLUMNS))
    writer.writerows(r[0] for r in rows)
  with open(out / "individual.csv", "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(INDIVIDUAL_COLUMNS)
    for r in rows:
      writer.writerows(r[1])
  with open(out / "planted.csv", "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(PLANTED_COLUMNS)
    writer.writerows(r[3] for r in rows)
  with open(out / "descriptions.jsonl", "w") as f:
    for r in rows:
      f.write(json.dumps(r[2]) + "\n")
  with open(out / "labels.json", "w") as f:
    json.dump(labels_metadata(), f, indent=1)
    f.write("\n")
  summary = {
      "clips": len(rows),
      "sources": len({spec.clip_id.rsplit("_", 1)[0] for spec, _ in plan}),
      "splits": {s: sum(split == s for _, split in plan) for s in SPLITS},
      "group_emotion": np.bincount([r[0][2] for r in rows], minlength=len(faces.EMOTIONS)).tolist(),
      "group_category": np.bincount([r[0][3] for r in rows], minlength=len(rules.GROUP_CATEGORIES)).tolist(),
      "situation": np.bincount([r[0][7] for r in rows], minlength=len(scenes.SITUATIONS)).tolist(),
      "trajectory": {t: sum(r[3][1] == t for r in rows) for t in rules.TRAJECTORIES},
      "misleading_descriptions": sum(r[3][4] != r[0][7] for r in rows),
      "individual_rows": sum(len(r[1]) for r in rows),
  }
  if sound is not None:
    summary["audio_category"] = np.bincount([r[0][8] for r in rows],
                                            minlength=len(rules.GROUP_CATEGORIES)).tolist()
    summary["audio_disagreeing"] = sum(not r[0][9] for r in rows)
    summary["audio_led"] = sum(r[0][10] for r in rows)
  return summary
