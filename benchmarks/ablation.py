r"""Does the temporal block earn its place? S3Attention, dense attention, AutoCorrelation + S3 and pooling
only, trained on the same synthetic world with the same seeds.

  ./run.sh bench ablation [--workdir runs/ablation] [--seeds 0,1,2] [--num_clips 200] [--world_seed 0]
      [--json docs/benchmarks/ablation.json] [--png docs/benchmarks/ablation.png] [--fresh]
  (= python -m benchmarks.ablation; on a shared machine run it under `nice`)

Data and face encoder are the demo's (gems_jax/demo.py `build_data`, `face_stage`: the same settings,
reused when present in --workdir, so `--workdir runs/demo` reuses a demo's world and stage-1 encoder).
The face embeddings are cached once (under <workdir>/ablation). Every run trains the demo's stage-2
config (`demo.stage2_config`) with only the temporal block changed, into
<workdir>/ablation/<variant>/seed<k> (reused when finished):
  s3           fusion.attention='s3' (the paper's model, the demo's)
  dense        fusion.attention='dense' (dense softmax self-attention)
  autocorr_s3  fusion.autocorrelation=True: an Autoformer AutoCorrelation block before S3
  pooling      fusion.attention='none': the frame tokens go straight to the masked mean
Per run, on the test split: group emotion, category and situation accuracy, valence and arousal CCC
(report/test/metrics.json), and the temporal head, trajectory accuracy: over the test clips whose crowd
rises or falls (raw/planted.csv), the fraction whose predicted arousal lies on the side of the clip's
whole-clip mean arousal that its trajectory sets (above for rising, below for falling; rule 4 of
docs/synthetic_world.md puts the label there in 98 % and 95 % of clips). Both orders of a clip give the
same mean token, so the pooling model can only be right by chance there (about 0.5).
Prints a table of mean ± sd over the seeds (sample sd), writes the JSON (every run, the table, provenance:
commit, machine, UTC time, command) and a PNG of the table as bars with sd error bars.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time

import jax
from matplotlib.figure import Figure
import numpy as np

from gems_jax import demo
from gems_jax.evaluation import report

VARIANTS = {  # name: (label, fusion overrides)
    "s3": ("S3Attention (paper)", {"attention": "s3"}),
    "dense": ("dense attention", {"attention": "dense"}),
    "autocorr_s3": ("AutoCorrelation + S3", {"attention": "s3", "autocorrelation": True}),
    "pooling": ("pooling only", {"attention": "none"}),
}
COLUMNS = {  # key in a run's metrics: column title
    "group_emotion/accuracy": "group emotion acc", "group_category/accuracy": "category acc",
    "situation/accuracy": "situation acc", "valence/ccc": "valence CCC", "arousal/ccc": "arousal CCC",
    "trajectory/accuracy": "trajectory acc (temporal)",
}


def read_planted(path: str) -> dict[str, dict]:
  """raw/planted.csv of the synthetic world: {clip_id: row}."""
  with open(path, newline="") as f:
    return {row["clip_id"]: row for row in csv.DictReader(f)}


def trajectory_accuracy(predictions: list[dict], planted: dict[str, dict]) -> float | None:
  """Fraction of the rising or falling clips among `predictions` (predictions.jsonl records) whose
  predicted arousal is above (rising) or below (falling) their whole-clip mean arousal; None if none."""
  hits = []
  for record in predictions:
    facts = planted[record["clip_id"]]
    if facts["trajectory"] in ("rising", "falling"):
      above = record["arousal"]["predicted"] > float(facts["whole_clip_arousal"])
      hits.append(above == (facts["trajectory"] == "rising"))
  return float(np.mean(hits)) if hits else None


def run_metrics(metrics: dict, predictions: list[dict], planted: dict[str, dict]) -> dict[str, float | None]:
  """The COLUMNS of one run from its test metrics.json and predictions.jsonl."""
  headline = report.headline(metrics)
  out = {key: headline.get(key) for key in COLUMNS if key in headline}
  out["trajectory/accuracy"] = trajectory_accuracy(predictions, planted)
  return out


def format_table(summary: dict[str, dict]) -> str:
  """Markdown: one row per variant, mean ± sd over seeds per column; `summary` maps a variant name to
  `report.spread` of its runs."""
  lines = ["| variant | " + " | ".join(COLUMNS.values()) + " | seeds |",
           "|---|" + "---|" * (len(COLUMNS) + 1)]
  for name, spread in summary.items():
    cells = []
    for key in COLUMNS:
      s = spread.get(key, {"n": 0})
      cells.append("-" if not s["n"] else f"{s['mean']:.3f} ± {s['sd']:.3f}")
    n = max((s["n"] for s in spread.values()), default=0)
    lines.append(f"| {VARIANTS[name][0]} | " + " | ".join(cells) + f" | {n} |")
  return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict], path: str, title: str) -> None:
  """Grouped bars: one group per column, one bar per variant, sd error bars; chance for the trajectory."""
  fig = Figure(figsize=(12, 4.5))
  ax = fig.subplots()
  width = 0.8 / len(summary)
  x = np.arange(len(COLUMNS))
  lowest = 0.0
  for k, (name, spread) in enumerate(summary.items()):
    means = np.array([spread.get(key, {}).get("mean") for key in COLUMNS], np.float64)  # None -> nan
    sds = np.nan_to_num(np.array([spread.get(key, {}).get("sd") for key in COLUMNS], np.float64))
    lowest = min(lowest, np.nanmin(means - sds, initial=0.0))
    ax.bar(x + (k - (len(summary) - 1) / 2) * width, means, width, yerr=sds, capsize=3,
           label=VARIANTS[name][0])
  t = list(COLUMNS).index("trajectory/accuracy")
  ax.hlines(0.5, t - 0.45, t + 0.45, colors="black", linestyles="dashed", label="chance (trajectory)")
  ax.axhline(0.0, color="gray", linewidth=0.5)
  ax.set_xticks(x, list(COLUMNS.values()))
  ax.set_ylim(lowest - 0.05, 1.05)  # CCC can be negative.
  ax.set_title(title)
  ax.legend(fontsize=8, ncol=3)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _train_variants(args, data: str, faces_run: str, root: str) -> tuple[dict, dict]:
  """Trains (or reuses) every variant x seed on the embeddings cached once; returns (metrics per variant,
  wall seconds per run)."""
  from gems_jax.training import embedding_cache
  base = demo.stage2_config(data, faces_run, args.seeds[0])
  cached = embedding_cache.prepare_input(base, root).input.data_dir  # Encode the faces once for all runs.
  planted = read_planted(os.path.join(args.workdir, "raw", "planted.csv"))
  results, seconds = {}, {}
  for name, (label, fusion) in VARIANTS.items():
    results[name] = []
    for seed in args.seeds:
      config = demo.stage2_config(data, faces_run, seed)
      config.input.data_dir = cached
      config.model.fusion.update(fusion)
      run_dir = os.path.join(root, name, f"seed{seed}")
      start = time.time()
      demo.train_once(config, run_dir, f"{label}, seed {seed}")
      seconds[f"{name}/seed{seed}"] = round(time.time() - start, 1)
      test = os.path.join(run_dir, "report", "test")
      with open(os.path.join(test, "metrics.json")) as f:
        metrics = json.load(f)
      with open(os.path.join(test, "predictions.jsonl")) as f:
        predictions = [json.loads(line) for line in f]
      results[name].append({"seed": seed, **run_metrics(metrics, predictions, planted)})
  return results, seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/ablation", help="data, encoder and runs (demo layout)")
  parser.add_argument("--seeds", default="0,1,2", help="stage-2 training seeds, comma-separated")
  parser.add_argument("--num_clips", type=int, default=200)
  parser.add_argument("--world_seed", type=int, default=0, help="synthetic world and stage-1 seed")
  parser.add_argument("--json", default="docs/benchmarks/ablation.json")
  parser.add_argument("--png", default="docs/benchmarks/ablation.png")
  parser.add_argument("--fresh", action="store_true", help="delete --workdir first")
  args = parser.parse_args(argv)
  args.seeds = [int(s) for s in args.seeds.split(",")]
  args.workdir = os.path.abspath(args.workdir)
  if args.fresh and os.path.exists(args.workdir):
    shutil.rmtree(args.workdir)
  # Runs that differ only in their seed compile the same programs: keep them on disk for the next run.
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "ablation", "jax_cache"))
  provenance = report.provenance(world_seed=args.world_seed, num_clips=args.num_clips, seeds=args.seeds)
  start = time.time()
  data = demo.build_data(args.workdir, args.num_clips, args.world_seed)
  if not os.path.exists(os.path.join(args.workdir, "raw", "planted.csv")):
    raise SystemExit(f"{args.workdir}/raw has no planted.csv: it was made by an older synthetic world "
                     "(before the temporal rule); rerun with --fresh")
  faces_run = demo.face_stage(data, args.workdir, args.world_seed)
  prepared = time.time() - start
  results, seconds = _train_variants(args, data, faces_run, os.path.join(args.workdir, "ablation"))
  summary = {name: report.spread([{k: v for k, v in run.items() if k != "seed"} for run in runs])
             for name, runs in results.items()}
  table = format_table(summary)
  wall = time.time() - start
  print(table)
  print(f"wall time {wall:.0f} s: data and stage 1 {prepared:.0f} s, "
        f"stage-2 runs {sum(seconds.values()):.0f} s")
  for path in (args.json, args.png):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(report.to_jsonable({"provenance": provenance, "wall_seconds": round(wall),
                                  "data_and_stage1_seconds": round(prepared), "run_seconds": seconds,
                                  "columns": COLUMNS, "runs": results, "summary": summary, "table": table}),
              f, indent=1)
  plot(summary, args.png, f"Test split, {len(args.seeds)} seeds per variant, mean ± sd "
       f"({provenance['utc']}, commit {(provenance['commit'] or '?')[:7]})")
  print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
  main()
