r"""Cost of the pretrained FER classifiers per face against MTCNN per frame, on the real clip (CPU).

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
    MTCNN seconds per frame: what labelling every kept face adds to detection.
"""
import argparse
import io
import json
import os
import pathlib
import statistics
import time

import numpy as np
import torch
from PIL import Image

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
  classifiers = {model: fer.FerClassifier(model) for model in sorted(fer.MODELS)}
  runs = {"MTCNN detect": (lambda: time_mtcnn(extractor, frames), len(frames), "frame")}
  for model, classifier in classifiers.items():
    for batch in (1, len(crops)):
      runs[f"{model}, {'1 face' if batch == 1 else 'all faces'}/call"] = (
          lambda c=classifier, b=batch: time_fer(c, crops, b), len(crops), "face")
  times = {name: [] for name in runs}
  for repeat in range(args.repeats + 1):  # Repeat 0 is the warm-up.
    for name, (run, _, _) in runs.items():
      seconds = run()
      if repeat:
        times[name].append(seconds)
  faces_per_frame = len(crops) / len(frames)
  mtcnn_per_frame = statistics.median(times["MTCNN detect"]) / len(frames)
  rows = []
  for name, (_, count, unit) in runs.items():
    per_item = statistics.median(times[name]) / count
    per_frame = per_item * (faces_per_frame if unit == "face" else 1.0)
    rows.append({"name": name, "unit": unit, "ms_per_unit": round(1000 * per_item, 3),
                 "min_ms": round(1000 * min(times[name]) / count, 3),
                 "max_ms": round(1000 * max(times[name]) / count, 3),
                 "ratio_to_mtcnn_frame": round(per_frame / mtcnn_per_frame, 4)})
  result = {"video": args.video, "num_frames": len(frames), "faces": len(crops),
            "faces_per_frame": round(faces_per_frame, 2), "crop_size": config.face_size,
            "detect_max_side": args.detect_max_side, "torch_threads": args.threads,
            "repeats": args.repeats, "cpu_count": os.cpu_count(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "rows": rows}
  print(f"{'':30s} {'ms':>9s} {'per':>6s} {'x MTCNN frame':>14s}")
  for row in rows:
    print(f"{row['name']:30s} {row['ms_per_unit']:9.3f} {row['unit']:>6s} "
          f"{row['ratio_to_mtcnn_frame']:14.4f}")
  print(f"{len(crops)} faces in {len(frames)} frames ({faces_per_frame:.2f} per frame), "
        f"{config.face_size}-px crops, detection view {args.detect_max_side} px, torch threads "
        f"{args.threads}, load average {result['loadavg_before'][0]} -> "
        f"{result['loadavg_after'][0]} on {os.cpu_count()} CPUs")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
