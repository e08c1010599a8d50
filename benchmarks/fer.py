r"""Cost of the pretrained FER classifiers per face against MTCNN per frame, and of pseudo-labelling
(build --individual_labels) as a share of the face build per clip, on the real clip (CPU).

  python -m benchmarks.fer [--json OUT.json] [--repeats 5] [--num_frames 16]
      [--detect_max_side 960] [--threads 1] [--video PATH]
  (or ./run.sh bench fer)

The clip's T sampled frames are decoded once and their faces cropped as the build does
(preprocessing.extract: 224-px crops of the top-K faces). Rows (median of --repeats timed passes
after one warm-up pass, interleaved in one process):
  * MTCNN: `detect` on each frame's detection view (--detect_max_side), one frame per call, as
    the build runs it — seconds per frame;
  * each FER model (preprocessing/fer.py) on all the clip's crops, one face per call (batch 1) and
    all faces in one `predict` call (which runs them 16 at a time) — seconds per face, including
    grey + resize from the 224-px RGB crop. `x MTCNN frame` = seconds per face x faces per frame /
    MTCNN seconds per frame: what labelling every kept face adds to detection;
  * the face build of one clip: `ClipExtractor.extract` (decode, MTCNN, crops, JPEG, tracks) without
    a labeller, and with each labeller (what `preprocessing.build --individual_labels` runs per
    clip) — seconds per clip; `share of face build` = (with - without) / without;
  * each model labelling one clip's faces as extract.py can: grey 64 x 64 per frame, then the
    network per face, per frame, per clip in chunks of FerClassifier.batch_size (what the build
    does), or per clip in one call — seconds per clip; share = seconds / the build without
    labeller.
"""
import argparse
import dataclasses
import io
import json
import os
import pathlib
import statistics
import time

import numpy as np
import torch
from PIL import Image

from gems_jax.data import face_labels
from preprocessing import extract, fer, video

MEDIA_DIR = pathlib.Path(os.environ.get(
    "GEMS_TEST_MEDIA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def time_mtcnn(extractor, frames) -> float:
  start = time.perf_counter()
  for frame in frames:
    extractor.detector.detect(frame)
  return time.perf_counter() - start


def time_fer(classifier, crops, batch: int) -> float:
  start = time.perf_counter()
  for first in range(0, len(crops), batch):
    classifier.predict(crops[first:first + batch])
  return time.perf_counter() - start


def time_extract(extractor, path) -> float:
  start = time.perf_counter()
  extractor.extract(path)
  return time.perf_counter() - start


LABELLING = ("one face per call", "one frame per call", "clip in chunks", "clip in one call")


def time_labelling(classifier, frame_crops, mode: str) -> float:
  """Seconds to label one clip's faces (frame_crops: uint8 [n_t, S, S, 3] per frame with faces):
  grey 64 x 64 per frame as extract.py makes it, then the network as `mode` (LABELLING) says."""
  start = time.perf_counter()
  inputs = [fer.to_model_input(crops) for crops in frame_crops]
  with torch.inference_mode():
    if mode == "one frame per call":
      for x in inputs:
        classifier.net(x)
    else:
      x = torch.cat(inputs)
      chunk = {"one face per call": 1, "clip in chunks": classifier.batch_size,
               "clip in one call": len(x)}[mode]
      for first in range(0, len(x), chunk):
        classifier.net(x[first:first + chunk])
  return time.perf_counter() - start


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--video", default=str(MEDIA_DIR / "crowd_4s.mp4"))
  parser.add_argument("--num_frames", type=int, default=16)
  parser.add_argument("--detect_max_side", type=int, default=960)
  parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  load_before = os.getloadavg()
  config = extract.ExtractConfig(num_frames=args.num_frames, detect_max_side=args.detect_max_side)
  extractor = extract.ClipExtractor(config)
  record = extractor.extract(args.video)
  mask = record["face_mask"]
  crops = np.stack([np.asarray(Image.open(io.BytesIO(record["faces"][t, k])).convert("RGB"))
                    for t, k in zip(*np.nonzero(mask))])
  plan = video.plan_sampling(args.video, args.num_frames)
  frames = [video.detection_view(image, args.detect_max_side)[0]
            for _, _, image in video.iter_sampled_frames(args.video, plan)]
  frame_crops = [crops[np.flatnonzero(np.nonzero(mask)[0] == t)] for t in range(len(mask))
                 if mask[t].any()]
  classifiers = {model: fer.FerClassifier(model) for model in sorted(fer.MODELS)}
  runs = {"MTCNN detect": (lambda: time_mtcnn(extractor, frames), len(frames), "frame")}
  for model, classifier in classifiers.items():
    for batch in (1, len(crops)):
      runs[f"{model}, {'1 face' if batch == 1 else 'all faces'}/call"] = (
          lambda c=classifier, b=batch: time_fer(c, crops, b), len(crops), "face")
  build = "face build (extract, no labeller)"
  runs[build] = (lambda: time_extract(extractor, args.video), 1, "clip")
  for labeller, spec in face_labels.LABELLERS.items():
    labelled = extract.ClipExtractor(dataclasses.replace(config, individual_labels=labeller))
    runs[f"face build with {labeller}"] = (
        lambda e=labelled: time_extract(e, args.video), 1, "clip")
    for mode in LABELLING:
      runs[f"{spec.model} labelling, {mode}"] = (
          lambda c=classifiers[spec.model], m=mode: time_labelling(c, frame_crops, m), 1, "clip")
  times = {name: [] for name in runs}
  for repeat in range(args.repeats + 1):  # Repeat 0 is the warm-up.
    for name, (run, _, _) in runs.items():
      seconds = run()
      if repeat:
        times[name].append(seconds)
  faces_per_frame = len(crops) / len(frames)
  mtcnn_per_frame = statistics.median(times["MTCNN detect"]) / len(frames)
  build_per_clip = statistics.median(times[build])
  rows = []
  for name, (_, count, unit) in runs.items():
    per_item = statistics.median(times[name]) / count
    row = {"name": name, "unit": unit, "ms_per_unit": round(1000 * per_item, 3),
           "min_ms": round(1000 * min(times[name]) / count, 3),
           "max_ms": round(1000 * max(times[name]) / count, 3)}
    if unit == "clip":  # The labeller's extra time per clip over the face build without one.
      extra = per_item - build_per_clip if name.startswith("face build with") else per_item
      row["share_of_face_build"] = round(extra / build_per_clip, 4) if name != build else 0.0
    else:
      per_frame = per_item * (faces_per_frame if unit == "face" else 1.0)
      row["ratio_to_mtcnn_frame"] = round(per_frame / mtcnn_per_frame, 4)
    rows.append(row)
  result = {"video": args.video, "num_frames": len(frames), "faces": len(crops),
            "faces_per_frame": round(faces_per_frame, 2), "crop_size": config.face_size,
            "detect_max_side": args.detect_max_side, "torch_threads": args.threads,
            "repeats": args.repeats, "cpu_count": os.cpu_count(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "rows": rows}
  print(f"{'':42s} {'ms':>9s} {'per':>6s} {'x MTCNN frame':>14s} {'share of face build':>20s}")
  for row in rows:
    ratio, share = row.get("ratio_to_mtcnn_frame"), row.get("share_of_face_build")
    print(f"{row['name']:42s} {row['ms_per_unit']:9.3f} {row['unit']:>6s} "
          f"{'' if ratio is None else f'{ratio:.4f}':>14s} "
          f"{'' if share is None else f'{100 * share:.1f} %':>20s}")
  print(f"{len(crops)} faces in {len(frames)} frames ({faces_per_frame:.2f} per frame), "
        f"{config.face_size}-px crops, detection view {args.detect_max_side} px, torch threads "
        f"{args.threads}, load average {result['loadavg_before'][0]} -> "
        f"{result['loadavg_after'][0]} on {os.cpu_count()} CPUs")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
