r"""Preprocessing throughput on the real clip: the per-clip stage against the bare detector, and
what audio, whole frames and the privacy build cost.

  python -m benchmarks.preprocess [--json OUT.json] [--repeats 5] [--num_frames 16]
      [--detect_max_side 960] [--threads 1] [--video PATH] [--text_encoder PATH_OR_ID]
      [--whole_frames 5 --audio_max_seconds 10]
  (or ./run.sh bench preprocess)

Rows (median of --repeats, interleaved in one process after one warm-up pass each):
  * bare detector: `MTCNN.detect` on the clip's T sampled frames, already decoded and resized to
    the detection view (--detect_max_side), one frame per call — the peer of the stage;
  * stage: what the face build (--noaudio) does per clip: demux + decode (PyAV), detection view,
    MTCNN, top-K, crops from the full frame, JPEG, tracking, text encoding of a 3-part
    description, and writing the clip's cache files;
  * stage, no prefetch: the same with decoding in the main thread (shows what the overlap buys);
  * bare detector, batched: all T views in one MTCNN call (why the stage detects one by one);
  * audio: `read_audio` on the clip's plan: demux, AAC decode, downmix and resample to 16 kHz;
  * whole frames: `read_whole_frames`: plan, decode of the T_v sampled frames, squash to 224 x 224,
    JPEG;
  * stage + audio: the face build's default (audio on); goal <= 1.05 x stage;
  * privacy stage: the --privacy build (T_v whole frames + audio + text + cache files, no
    detector); goal <= 0.25 x stage.
Ratios: to the bare detector (stage goal <= 1.25) and to the stage. The text encoder defaults to a
random RoBERTa of RoBERTa-base size (768-d, 12 layers): the default encoder's cost, without its
weights.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import tempfile
import time

import torch

from gems_jax.data import npz_records
from preprocessing import audio, extract, frames, text, video
from preprocessing.random_text_encoder import write_random_roberta

MEDIA_DIR = pathlib.Path(os.environ.get(
    "GEMS_TEST_MEDIA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
DESCRIPTION = ("A crowd of people walks towards the camera under a stone arcade in the evening; "
               "some talk, some look at their phones. Background: the colonnade of an opera house "
               "in a city square, shop windows and street lamps. Event: the audience leaves a "
               "performance and heads home, relaxed and chatting.")


def bare_detector(extractor, frames, batch: int = 1) -> tuple[float, int]:
  start = time.perf_counter()
  faces = 0
  for first in range(0, len(frames), batch):
    for _, scores in extractor.detector.detect_many(frames[first:first + batch]):
      faces += int((scores >= extractor.config.min_face_prob).sum())
  return time.perf_counter() - start, faces


def stage(extractor, encoder, path, out_dir) -> tuple[float, int]:
  start = time.perf_counter()
  record = extractor.extract(path)
  faces = record.pop("num_faces", 0)
  record.pop("steps_with_faces", None)
  embedding, mask = encoder.encode_parts([text.split_description(DESCRIPTION)])
  npz_records.save(out_dir / "faces.npz", record)
  npz_records.save(out_dir / "text.npz", {"description": DESCRIPTION,
                                          "text_embedding": embedding[0], "text_mask": mask[0]})
  return time.perf_counter() - start, faces


def timed(function) -> tuple[float, int]:
  """(seconds, 0 faces) of one call."""
  start = time.perf_counter()
  function()
  return time.perf_counter() - start, 0


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--video", default=str(MEDIA_DIR / "crowd_4s.mp4"))
  parser.add_argument("--num_frames", type=int, default=16)
  parser.add_argument("--detect_max_side", type=int, default=960)
  parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--text_encoder", default="",
                      help="encoder folder/id (default: random RoBERTa-base-sized, written to tmp)")
  parser.add_argument("--whole_frames", type=int, default=5, help="T_v of the privacy stage")
  parser.add_argument("--audio_max_seconds", type=float, default=audio.MAX_SECONDS)
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    encoder_path = args.text_encoder or write_random_roberta(
        scratch / "roberta", [DESCRIPTION] * 20, vocab_size=2000)
    encoder = text.TextEncoder(encoder_path, max_length=128)
    config = extract.ExtractConfig(num_frames=args.num_frames, detect_max_side=args.detect_max_side)
    samples = round(args.audio_max_seconds * audio.SAMPLE_RATE)
    prefetching = extract.ClipExtractor(config)
    sequential = extract.ClipExtractor(config, prefetch=False)
    with_audio = extract.ClipExtractor(dataclasses.replace(config, audio_samples=samples))
    private = extract.ClipExtractor(dataclasses.replace(
        config, kind="privacy", num_whole_frames=args.whole_frames, audio_samples=samples))
    plan = video.plan_sampling(args.video, args.num_frames)
    views = [video.detection_view(image, args.detect_max_side)[0]
             for _, _, image in video.iter_sampled_frames(args.video, plan)]
    runs = {"bare detector": lambda: bare_detector(prefetching, views),
            "stage": lambda: stage(prefetching, encoder, args.video, scratch),
            "stage, no prefetch": lambda: stage(sequential, encoder, args.video, scratch),
            "bare detector, batched": lambda: bare_detector(prefetching, views, len(views)),
            "audio": lambda: timed(lambda: audio.read_audio(args.video, plan,
                                                            num_samples=samples)),
            f"whole frames ({args.whole_frames})": lambda: timed(
                lambda: frames.read_whole_frames(args.video, args.whole_frames)),
            "stage + audio": lambda: stage(with_audio, encoder, args.video, scratch),
            "privacy stage": lambda: stage(private, encoder, args.video, scratch)}
    times = {name: [] for name in runs}
    faces = {}
    for repeat in range(args.repeats + 1):  # Repeat 0 is the warm-up.
      for name, run in runs.items():
        seconds, faces[name] = run()
        if repeat:
          times[name].append(seconds)
  bare = statistics.median(times["bare detector"])
  face_stage = statistics.median(times["stage"])
  rows = []
  for name, values in times.items():
    median = statistics.median(values)
    rows.append({"name": name, "seconds_per_clip": round(median, 4),
                 "min": round(min(values), 4), "max": round(max(values), 4),
                 "clips_per_s": round(1 / median, 3), "faces_per_s": round(faces[name] / median, 2),
                 "faces_per_clip": faces[name], "ratio_to_bare_detector": round(median / bare, 3),
                 "ratio_to_stage": round(median / face_stage, 3)})
  result = {"video": args.video, "num_frames": args.num_frames,
            "detect_max_side": args.detect_max_side, "torch_threads": args.threads,
            "whole_frames": args.whole_frames, "audio_samples": samples,
            "text_encoder": args.text_encoder or "random RoBERTa-base size (768-d, 12 layers)",
            "repeats": args.repeats, "cpu_count": os.cpu_count(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "rows": rows}
  print(f"{'':22s} {'s/clip':>8s} {'clips/s':>8s} {'faces/s':>8s} {'faces':>6s} {'x bare':>7s} "
        f"{'x stage':>8s}")
  for row in rows:
    print(f"{row['name']:22s} {row['seconds_per_clip']:8.3f} {row['clips_per_s']:8.3f} "
          f"{row['faces_per_s']:8.1f} {row['faces_per_clip']:6d} "
          f"{row['ratio_to_bare_detector']:7.3f} {row['ratio_to_stage']:8.3f}")
  print(f"T={args.num_frames}, T_v={args.whole_frames}, audio {samples} samples, detection view "
        f"{args.detect_max_side} px, torch threads "
        f"{args.threads}, load average {result['loadavg_before'][0]} -> "
        f"{result['loadavg_after'][0]} on {os.cpu_count()} CPUs")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
