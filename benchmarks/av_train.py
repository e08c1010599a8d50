r"""Train-step throughput of the privacy audio-visual model (Augusma et al. 2023) at the paper's shapes.

  python -m benchmarks.av_train [--batches 4,32] [--remat-chunk 5] [--json OUT.json]   (./run.sh bench av_train)
  python -m benchmarks.av_train --quick --json /tmp/av_quick.json    # tiny shapes, a smoke test (~1 min)

Shapes (configs/privacy_av.py, fusion mode, fp32): CLIP ViT-L/14 at 224 px, T_v = 5 whole frames per
clip, 5 log-mel audio frames of 128 mel bands x 128 STFT frames (log-mel computed in the step from
int16 audio: 5 s real in the build's 10 s window), the audio CNN, temporal block, cross-attention
fusion; the paper's optimiser (SGD 1e-5, momentum 0.9); batch 4 (the paper's) and 32 clips.
Cases, each measured in its own process (benchmarks/av_train_worker.py says what is timed):
  * frozen ViT: the frame embeddings are cached once (video_encoder.frozen='all'), so the step reads
    `whole_frame_embedding` [b, 5, 1024] and has no ViT. Its one-off cost, the cache's encoder on
    chunks of `input.frame_cache_chunk` frames, is measured once ('embed') and reported per clip;
    'clips/s 1st epoch' adds it to the step (later epochs read the cache).
  * unfrozen ViT: the step runs ViT-L/14 forward and backward on the b x 5 frames, as is
    (remat off) and with the ViT in rematerialised chunks of `--remat-chunk` frames
    (video_encoder.remat_chunk: one more forward pass, a fraction of the memory).
Reported per case: compile time (ahead-of-time, separate), the first (untimed) step, the median
step in ms and clips/s, the peak RSS of the case's process (benchmarks.stages: the polled process-tree
RSS and the kernel's ru_maxrss), XLA's buffer sizes. A case that XLA says cannot fit in the memory
available is not run and is printed as skipped with the estimate; a case that dies (e.g. the OOM
killer) is printed as failed with the reason. The JSON adds the provenance: UTC time, command, git
commit (and changed files), machine, load average and CPU pressure before and after.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile

from benchmarks import av_train_worker
from benchmarks import stages
from benchmarks.peer_timing import cpu_pressure

WORKER = "benchmarks.av_train_worker"


def cases(args) -> list[dict]:
  """The worker invocations of a run: name, label and worker arguments."""
  out = [{"name": "embed", "label": "one-off frame embedding", "argv": ["--case", "embed"]}]
  for vit in ("frozen", "unfrozen"):
    for batch in (int(b) for b in args.batches.split(",")):
      chunks = (0, args.remat_chunk) if vit == "unfrozen" and args.remat_chunk else (0,)
      for chunk in chunks:
        label = ("frozen ViT, cached embeddings" if vit == "frozen" else "unfrozen ViT"
                 + (f", remat chunks of {chunk}" if chunk else ", no remat"))
        out.append({"name": f"{vit}_b{batch}" + (f"_remat{chunk}" if chunk else ""), "label": label,
                    "argv": ["--case", "step", "--vit", vit, "--batch", str(batch),
                             "--remat-chunk", str(chunk)]})
  return out


def run_case(case: dict, args, log_dir: str) -> dict:
  """Runs one worker as a measured stage; its JSON record plus the process's peak RSS."""
  common = ["--repeats", str(args.repeats), "--max-seconds", str(args.max_seconds),
            "--mem-fraction", str(args.mem_fraction), "--devices", str(args.devices)]
  common += ["--quick"] * args.quick + ["--compile-only"] * args.compile_only
  result = stages.run_stage(case["name"], [sys.executable, "-m", WORKER, *case["argv"], *common],
                            log_dir=log_dir, timeout_s=args.timeout)
  record = {"name": case["name"], "label": case["label"], "peak_rss_gib": result.peak_rss_gib,
            "process_wall_s": result.wall_s, "stdout_log": result.stdout_log,
            "stderr_log": result.stderr_log}
  with open(result.stdout_log) as f:
    lines = [line for line in f if line.startswith("{")]
  if result.status != "ok" or not lines:
    reason = (result.error or "no result printed").splitlines()
    return {**record, "status": "failed", "reason": reason[0], "error": result.error}
  return {**record, **json.loads(lines[-1])}


def first_epoch(rows: list[dict]) -> None:
  """Adds to the frozen rows the clips/s of an epoch that also builds the embedding cache."""
  embed = next((r for r in rows if r["name"] == "embed" and r["status"] == "ok"), None)
  for r in rows:
    if embed and r.get("vit") == "frozen" and r["status"] == "ok":
      r["first_epoch_clips_per_s"] = 1.0 / (1.0 / r["clips_per_s"] + embed["s_per_clip"])


def table(rows: list[dict]) -> list[str]:
  """The printed table: one line per step case, then the embedding and any skip or failure."""
  head = (f"{'case':<38}{'batch':>6}{'compile s':>10}{'1st s':>8}{'ms/step':>10}{'clips/s':>9}"
          f"{'1st ep':>8}{'RSS GiB':>9}{'XLA tmp':>8}  status")
  lines = [head, "-" * len(head)]
  fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
  for r in rows:
    if r["name"] == "embed":
      continue
    xla = r.get("xla_memory_gib", {}).get("temp")
    lines.append(f"{r['label']:<38}{fmt(r.get('batch'), 'd'):>6}{fmt(r.get('compile_s'), '.1f'):>10}"
                 f"{fmt(r.get('first_step_s'), '.1f'):>8}{fmt(r.get('step_ms'), '.0f'):>10}"
                 f"{fmt(r.get('clips_per_s'), '.2f'):>9}"
                 f"{fmt(r.get('first_epoch_clips_per_s'), '.2f'):>8}"
                 f"{fmt(r.get('peak_rss_gib'), '.1f'):>9}{fmt(xla, '.1f'):>8}  {r['status']}")
  for r in rows:
    if r["name"] == "embed" and r["status"] == "ok":
      lines.append(f"one-off frame embedding (frozen ViT, cache chunks of {r['chunk_frames']} "
                   f"frames): {r['ms_per_frame']:.0f} ms/frame = {r['s_per_clip']:.2f} s per clip "
                   f"of {r['frames_per_clip']} frames; compile {r['compile_s']:.1f} s, peak RSS "
                   f"{fmt(r['peak_rss_gib'], '.1f')} GiB")
    if r["status"] != "ok":
      lines.append(f"{r['status']}: {r['label']}" + (f" b{r['batch']}" if "batch" in r else "")
                   + f": {r['reason']}")
  return lines


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", default=None, help="comma-separated clips per step (4,32)")
  parser.add_argument("--remat-chunk", type=int, default=None,
                      help="also time the unfrozen ViT in remat chunks of this many frames (5; 0: no)")
  parser.add_argument("--repeats", type=int, default=3, help="timed steps per case (median)")
  parser.add_argument("--max-seconds", type=float, default=900.0,
                      help="stop timing a case after this long (at least one timed step)")
  parser.add_argument("--mem-fraction", type=float, default=0.9,
                      help="share of the available memory a step may need (XLA's estimate)")
  parser.add_argument("--timeout", type=float, default=None, help="seconds per case process")
  parser.add_argument("--devices", type=int, default=0, help="first N devices (0: all)")
  parser.add_argument("--only", default="", help="comma-separated case names (e.g. embed,frozen_b4)")
  parser.add_argument("--compile-only", action="store_true",
                      help="compile each step and report XLA's memory estimate; run nothing")
  parser.add_argument("--quick", action="store_true", help="tiny shapes (configs runlocal)")
  parser.add_argument("--log-dir", default=None, help="worker logs (default: a temporary folder)")
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args(argv)
  args.batches = args.batches or ("2" if args.quick else "4,32")
  args.remat_chunk = (5 if args.remat_chunk is None else args.remat_chunk)
  log_dir = args.log_dir or tempfile.mkdtemp(prefix="av_train_")

  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  load_start, pressure_start = os.getloadavg(), cpu_pressure()
  wanted = set(filter(None, args.only.split(",")))
  rows = []
  for case in cases(args):
    if wanted and case["name"] not in wanted:
      continue
    rows.append(run_case(case, args, log_dir))
    print(f"  {case['name']}: {rows[-1]['status']}", file=sys.stderr, flush=True)
  first_epoch(rows)
  load_end, pressure_end = os.getloadavg(), cpu_pressure()
  shapes = av_train_worker.shapes(args.quick)
  print(f"audio-visual train step ({shapes['mode']}, {shapes['dtype']}, {shapes['optimizer']['name']})"
        f": {shapes['video_encoder']}{' (tiny: runlocal)' if args.quick else ''} at "
        f"{shapes['frame_size']} px x {shapes['frames_per_clip']} frames + {shapes['audio_frames']} "
        f"audio frames of {' x '.join(map(str, shapes['audio_frame_shape']))} per clip; logs in "
        f"{log_dir}")
  print("\n".join(table(rows)))
  print(f"load average (1/5/15 min) at start {load_start}, at end {load_end}; CPU pressure "
        f"(PSI some avg10, %) {pressure_start} -> {pressure_end}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"benchmark": "av_train", "date_utc": started,
                 "command": ["python", "-m", "benchmarks.av_train",
                             *(sys.argv[1:] if argv is None else argv)],
                 "git": stages.git_info(), "machine": stages.machine_info(), "quick": args.quick,
                 "shapes": shapes, "repeats": args.repeats, "remat_chunk": args.remat_chunk,
                 "load_avg_start": load_start, "load_avg_end": load_end,
                 "cpu_pressure_start": pressure_start, "cpu_pressure_end": pressure_end,
                 "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
