r"""The plain build against the Beam build (DirectRunner) on synthetic clips: wall time, CPU time,
peak memory, and Beam's overhead per clip.

  python -m benchmarks.beam [--num_clips 20 --seed 0 --frames_per_clip 40 --width 640 --height 360]
      [--num_frames 16] [--workers 2] [--text_encoder PATH] [--json OUT.json]
  (or ./run.sh bench beam)

Each run is one `python -m preprocessing.build` process (benchmarks/stages.py measures it) on the
same synthetic clips (preprocessing.make_synthetic, with faces, sound, descriptions and individual
labels) into a fresh --data_dir, then a second time on that data_dir (every clip cached: what the
two Beam jobs cost when there is nothing to extract):
  * plain, N workers: `--workers N` (worker processes of preprocessing/workers.py);
  * beam direct, N workers: `--runner direct --workers N` = DirectRunner with direct_num_workers=N
    in multi-processing mode;
  * plain, 1 worker and beam direct, in process: the same with one extracting process.
Overhead per clip = (beam wall - plain wall) / clips, for the same number of workers; the cached
reruns show the fixed part (starting the runner and its workers, two jobs, the writer). Every Beam
dataset is checked against the plain one: the same examples, feature by feature.
The text encoder defaults to a random RoBERTa of RoBERTa-base size (768-d, 12 layers), as in
benchmarks/preprocess.py.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

from benchmarks import stages
from gems_jax.data import tfds_writer
from preprocessing import make_synthetic
from preprocessing.random_text_encoder import write_random_roberta

CORPUS = ["A crowd gathers in a square. Background: a market. Event: a street festival."] * 20


def _runs(workers: int) -> dict[str, list[str]]:
  return {f"plain, {workers} workers": ["--workers", str(workers)],
          f"beam direct, {workers} workers": ["--runner", "direct", "--workers", str(workers)],
          "plain, 1 worker": ["--workers", "1"],
          "beam direct, in process": ["--runner", "direct"]}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_clips", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--frames_per_clip", type=int, default=40)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--height", type=int, default=360)
  parser.add_argument("--num_frames", type=int, default=16)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--text_encoder", default="",
                      help="encoder folder/id (default: random RoBERTa-base-sized, written to tmp)")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  load_before = os.getloadavg()
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    make_synthetic.main(["--out", str(scratch / "raw"), "--num_clips", str(args.num_clips),
                         "--seed", str(args.seed), "--frames_per_clip", str(args.frames_per_clip),
                         "--width", str(args.width), "--height", str(args.height),
                         "--workers", str(args.workers)])
    encoder = args.text_encoder or write_random_roberta(scratch / "roberta", CORPUS,
                                                        vocab_size=2000)
    raw = scratch / "raw"
    common = [sys.executable, "-m", "preprocessing.build", "--videos", str(raw / "videos"),
              "--annotations", str(raw / "annotations.csv"), "--descriptions",
              str(raw / "descriptions.jsonl"), "--individual", str(raw / "individual.csv"),
              "--text_encoder", str(encoder), "--num_frames", str(args.num_frames)]
    reference = None
    for index, (name, flags) in enumerate(_runs(args.workers).items()):
      data_dir = scratch / f"out{index}"
      for attempt in ("fresh", "cached"):
        result = stages.run_stage(f"{index}-{attempt}", common + ["--data_dir", str(data_dir)]
                                  + flags, log_dir=str(scratch / "logs"))
        if result.status != "ok":
          raise RuntimeError(f"{name} ({attempt}) failed: {result.error}")
        report = json.loads((data_dir / "build_report.json").read_text())
        rows.append({"name": name, "run": attempt, "wall_s": round(result.wall_s, 2),
                     "cpu_s": round(result.cpu_s, 2), "peak_rss_gib": round(
                         result.peak_rss_gib, 2), "ok": report["counts"]["ok"],
                     "extracted": report["counts"]["extracted"]})
      features = tfds_writer.serialized_features(data_dir / "gems" / "1.0.0")
      reference = reference or features
      rows[-1]["same_examples_as_plain"] = rows[-2]["same_examples_as_plain"] = (
          features == reference)
  wall = {(r["name"], r["run"]): r["wall_s"] for r in rows}
  names = list(_runs(args.workers))
  overhead = {
      f"{args.workers} workers": round((wall[names[1], "fresh"] - wall[names[0], "fresh"])
                                       / args.num_clips, 3),
      "1 worker": round((wall[names[3], "fresh"] - wall[names[2], "fresh"]) / args.num_clips, 3)}
  result = {"num_clips": args.num_clips, "video": f"{args.width}x{args.height}, "
            f"{args.frames_per_clip} frames", "num_frames": args.num_frames,
            "workers": args.workers, "text_encoder": args.text_encoder or
            "random RoBERTa-base size (768-d, 12 layers)", "rows": rows,
            "overhead_s_per_clip": overhead, "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "machine": stages.machine_info(), "git": stages.git_info()}
  print(f"{'':26s} {'run':>6s} {'wall s':>7s} {'s/clip':>7s} {'cpu s':>7s} {'RSS GiB':>8s} "
        f"{'ok':>3s} {'same':>5s}")
  for r in rows:
    print(f"{r['name']:26s} {r['run']:>6s} {r['wall_s']:7.1f} {r['wall_s'] / args.num_clips:7.2f} "
          f"{r['cpu_s']:7.1f} {r['peak_rss_gib']:8.2f} {r['ok']:3d} "
          f"{str(r['same_examples_as_plain']):>5s}")
  print(f"Beam overhead per clip (fresh builds): {overhead}; load average "
        f"{result['loadavg_before'][0]} -> {result['loadavg_after'][0]} on {os.cpu_count()} CPUs")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
  if not all(r["same_examples_as_plain"] for r in rows):
    raise SystemExit("a Beam build wrote other examples than the plain build")
  return result


if __name__ == "__main__":
  main()
