"""S3Attention vs dense attention throughput over sequence length, one process per measurement.

    python -m benchmarks.attention --lengths 96,256,1024,4096,8192,16384 --batch 1 \
        --json attention.json --png attention.png

Methods (what each timing includes: see `attention_worker`): `s3` (the S3Attention block, JAX),
`dense_xla` (qkv + jax.nn.dot_product_attention, JAX, queries chunked for long N) and `torch_sdpa`
(qkv + torch scaled_dot_product_attention on the same CPU, an outside peer). Modes: `fwd` (eval
forward) and `fwdbwd` (train-mode forward + gradients of sum(out) w.r.t. input and parameters).

Reported: median time, tokens/s, peak RSS and XLA temp memory per (method, N, mode); the scaling
exponent per method and mode (least-squares slope of log t on log N over 1K <= N <= 16K); the 8K
speed-up of S3 over each peer; the goals (S3 exponent <= 1.15, S3 >= 10x faster than dense_xla at
8K). `--paper` adds the S3Attention paper's Table 4 shape (LRA text: batch 32, d_model 64, 2 heads,
N = 1K..4K), reported as steps/s of the block's forward+backward. `--rounds R` repeats the whole
sweep R times and reports, per configuration, the median over rounds of each round's median: on a
shared or virtual machine whose speed drifts over minutes, the rounds spread every method over the
same slow and fast periods.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

METHODS = ("s3", "dense_xla", "torch_sdpa")
MODES = ("fwd", "fwdbwd")
FIT_RANGE = (1024, 16384)
PAPER_LENGTHS = (1024, 2048, 3072, 4096)


def run_worker(method: str, n: int, mode: str, args, batch: int, d_model: int, heads: int,
               repeats: int) -> dict:
  """Runs one measurement in a child process; failures become records with the reason."""
  cmd = [sys.executable, "-m", "benchmarks.attention_worker", "--method", method,
         "--n", str(n), "--mode", mode, "--batch", str(batch), "--d_model", str(d_model),
         "--heads", str(heads), "--repeats", str(repeats), "--dense_chunk", str(args.dense_chunk),
         "--max_temp_gib", str(args.max_temp_gib)]
  base = {"method": method, "n": n, "mode": mode, "batch": batch, "d_model": d_model,
          "heads": heads, "loadavg_before": os.getloadavg()[0]}
  start = time.perf_counter()
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
  except subprocess.TimeoutExpired:
    return {**base, "status": "failed", "reason": f"timeout after {args.timeout} s"}
  wall = time.perf_counter() - start
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode != 0 or not lines:
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {**base, "status": "failed", "reason": f"exit {done.returncode}: {' | '.join(tail)}"}
  return {**base, **json.loads(lines[-1]), "process_wall_s": wall}


def merge_rounds(records: list[dict]) -> list[dict]:
  """One record per configuration from the records of several rounds (in first-seen order).

  Time: `median_s` is the median over rounds of the per-round medians (kept in `round_medians_s`),
  `min_s` the fastest run of any round; `times_s` holds every run. Memory: the largest peak over
  rounds. A configuration that failed in every round keeps its first failure record; failed rounds
  of a configuration that also succeeded are counted in `failed_rounds`.
  """
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    key = (r["method"], r["n"], r["mode"], r["batch"], r["d_model"], r["heads"])
    groups.setdefault(key, []).append(r)
  merged = []
  for group in groups.values():
    ok = [r for r in group if r.get("status") == "ok"]
    if not ok:
      merged.append(group[0])
      continue
    medians = [r["median_s"] for r in ok]
    median = float(np.median(medians))
    merged.append({**ok[0], "round_medians_s": medians, "median_s": median,
                   "min_s": min(r["min_s"] for r in ok),
                   "times_s": [t for r in ok for t in r["times_s"]],
                   "tokens_per_s": ok[0]["batch"] * ok[0]["n"] / median,
                   "peak_rss_mib": max(r["peak_rss_mib"] for r in ok),
                   "failed_rounds": len(group) - len(ok)})
  return merged


def scaling_exponent(records: list[dict], method: str, mode: str,
                     stat: str = "median_s") -> float | None:
  """Slope of log(time) on log(N) over FIT_RANGE (time = the `stat` of the timed runs); None with
  fewer than 2 points."""
  points = [(r["n"], r[stat]) for r in records
            if r["method"] == method and r["mode"] == mode and r.get("status") == "ok"
            and FIT_RANGE[0] <= r["n"] <= FIT_RANGE[1]]
  if len(points) < 2:
    return None
  n, t = np.log(np.array(points, float)).T
  return float(np.polyfit(n, t, 1)[0])


def _median(records: list[dict], method: str, n: int, mode: str) -> float | None:
  for r in records:
    if (r["method"], r["n"], r["mode"]) == (method, n, mode) and r.get("status") == "ok":
      return r["median_s"]
  return None


def summarise(records: list[dict], methods: list[str], modes: list[str]) -> dict:
  exponents = {m: {mode: scaling_exponent(records, m, mode) for mode in modes} for m in methods}
  # The fastest run is less sensitive to other jobs on a shared machine than the median.
  exponents_min = {m: {mode: scaling_exponent(records, m, mode, "min_s") for mode in modes}
                   for m in methods}
  speedup_8k = {}
  for peer in methods:
    if peer == "s3":
      continue
    for mode in modes:
      s3, other = _median(records, "s3", 8192, mode), _median(records, peer, 8192, mode)
      speedup_8k[f"{peer}/{mode}"] = other / s3 if s3 and other else None
  goals = {
      f"s3_exponent_{mode}<=1.15": (None if exponents.get("s3", {}).get(mode) is None
                                    else exponents["s3"][mode] <= 1.15) for mode in modes}
  goals.update({f"s3_8k_speedup_vs_dense_xla_{mode}>=10": (
      None if speedup_8k.get(f"dense_xla/{mode}") is None
      else speedup_8k[f"dense_xla/{mode}"] >= 10) for mode in modes})
  return {"exponents": exponents, "exponents_of_min": exponents_min, "speedup_8k": speedup_8k,
          "goals": goals}


def format_table(records: list[dict]) -> str:
  head = (f"{'method':<11}{'shape':<15}{'N':>6} {'mode':<7}{'median ms':>11}{'tok/s':>10}"
          f"{'peak RSS MiB':>13}{'XLA temp GiB':>13}{'load':>6}  note")
  rows = [head, "-" * len(head)]
  for r in records:
    shape = f"B{r['batch']} C{r['d_model']} H{r['heads']}"
    if r.get("status") == "ok":
      temp = r.get("xla_temp_gib")
      rows.append(f"{r['method']:<11}{shape:<15}{r['n']:>6} {r['mode']:<7}"
                  f"{1e3 * r['median_s']:>11.1f}{r['tokens_per_s']:>10.0f}"
                  f"{r['peak_rss_mib']:>13.0f}{'' if temp is None else f'{temp:.3f}':>13}"
                  f"{r['loadavg_before']:>6.1f}")
    else:
      rows.append(f"{r['method']:<11}{shape:<15}{r['n']:>6} {r['mode']:<7}"
                  f"{'-':>11}{'-':>10}{'-':>13}{'-':>13}{r['loadavg_before']:>6.1f}  "
                  f"{r['status']}: {r.get('reason', '')}")
  return "\n".join(rows)


def plot(records: list[dict], methods: list[str], modes: list[str], summary: dict,
         path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
  for ax, mode in zip(axes[0], modes):
    for method in methods:
      pts = sorted((r["n"], r["median_s"]) for r in records if r["method"] == method
                   and r["mode"] == mode and r.get("status") == "ok")
      if not pts:
        continue
      slope = summary["exponents"][method][mode]
      label = method if slope is None else f"{method} (slope {slope:.2f} on 1K-16K)"
      ax.loglog(*zip(*pts), marker="o", label=label)
    lengths = sorted({r["n"] for r in records})
    ax.set_xticks(lengths, [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.minorticks_off()
    ax.set(title=f"{mode}: time per batch vs sequence length", xlabel="N (tokens)",
           ylabel="median seconds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="96,256,1024,4096,8192,16384")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--repeats", type=int, default=5, help="timed runs (3 when a run > 2 s)")
  parser.add_argument("--dense_chunk", type=int, default=2048,
                      help="dense_xla query chunk when N exceeds it (0 = never chunk)")
  parser.add_argument("--max_temp_gib", type=float, default=12.0,
                      help="skip a JAX configuration whose XLA temp memory exceeds this")
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
  parser.add_argument("--paper", action=argparse.BooleanOptionalAction, default=True,
                      help="also run the paper's LRA-text shape (batch 32, C 64, 2 heads, 1K-4K)")
  parser.add_argument("--quick", action="store_true",
                      help="lengths 256,1024,4096, 3 repeats, paper shape at 1K and 2K only")
  parser.add_argument("--rounds", type=int, default=1,
                      help="repeat the sweep; report the median over rounds of each round's median")
  parser.add_argument("--json", dest="json_path", default=None)
  parser.add_argument("--png", default=None)
  args = parser.parse_args(argv)
  lengths = [256, 1024, 4096] if args.quick else [int(v) for v in args.lengths.split(",")]
  repeats = 3 if args.quick else args.repeats
  methods = [m for m in args.methods.split(",") if m]
  modes = [m for m in args.modes.split(",") if m]
  if args.rounds < 1:
    raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
  for value, allowed in ((methods, METHODS), (modes, MODES)):
    unknown = set(value) - set(allowed)
    if unknown:
      raise SystemExit(f"unknown value(s) {sorted(unknown)}; expected from {allowed}")

  records, paper = [], []
  # (N, batch, d_model, heads, where the records go): the main sweep, then the paper's shape.
  sweep = [(n, args.batch, args.d_model, args.heads, records) for n in lengths]
  if args.paper:
    sweep += [(n, 32, 64, 2, paper) for n in (PAPER_LENGTHS[:2] if args.quick else PAPER_LENGTHS)]
  for _ in range(args.rounds):
    for n, batch, d_model, heads, out in sweep:
      for method in methods:
        for mode in modes:
          out.append(run_worker(method, n, mode, args, batch, d_model, heads, repeats))
          print(format_table(out[-1:]).splitlines()[-1], flush=True)
  records, paper = merge_rounds(records), merge_rounds(paper)

  summary = summarise(records, methods, modes)
  print("\n" + format_table(records + paper))
  print("\nscaling exponent (slope of log t on log N, 1K..16K; median run / fastest run):")
  for method in methods:
    print(f"  {method:<11}" + "  ".join(
        f"{mode} {'-' if e is None else f'{e:.3f}'} / "
        f"{'-' if e_min is None else f'{e_min:.3f}'}"
        for (mode, e), e_min in zip(summary["exponents"][method].items(),
                                    summary["exponents_of_min"][method].values())))
  print("S3 speed-up at N=8192:", {k: None if v is None else round(v, 2)
                                   for k, v in summary["speedup_8k"].items()})
  print("goals:", summary["goals"])
  for r in paper:
    if r.get("status") == "ok" and r["mode"] == "fwdbwd":
      print(f"  paper shape {r['method']:<11} N={r['n']:>5}: {1 / r['median_s']:.2f} steps/s "
            f"(fwd+bwd of one block), peak RSS {r['peak_rss_mib']:.0f} MiB")
  if args.json_path:
    config = {k: v for k, v in vars(args).items() if k not in ("json_path", "png")}
    with open(args.json_path, "w") as f:
      json.dump({"config": {**config, "lengths": lengths, "repeats": repeats},
                 "records": records, "paper_records": paper, **summary,
                 "cpu_count": os.cpu_count()}, f, indent=1)
  if args.png:
    plot(records, methods, modes, summary, args.png)


if __name__ == "__main__":
  main()
