"""The paper-size smoke run's bookkeeping: the face cache's figures, its ratio to timm, the
Markdown table and the JSON report (benchmarks.paper runs the stages; this file only reads results).
"""
from __future__ import annotations

import dataclasses

from benchmarks.stages import StageResult, failure_messages

GOAL_RATIO = 0.9  # Cache faces/s against timm images/s.
# The paper's sizes (configs/gems.py defaults), printed in the JSON; the commands leave them as is.
PAPER_SIZES = dict(face_encoder="swin_base_patch4_window7_224", face_size=224, num_frames=16,
                   max_faces=8, d_model=512, num_heads=8, num_layers=2, num_steps=96, batch_size=32)


def cache_figures(info: dict | None, stage2_wall_s: float | None) -> dict:
  """num_images (faces), encode_seconds, faces/s from cache_info.json; what is missing is said."""
  if info is None:
    return {"ok": False, "problem": "no face_cache/cache_info.json in the stage-2 workdir"}
  missing = [k for k in ("num_images", "encode_seconds") if info.get(k) is None]
  if missing:
    return {"ok": False, "info": info,
            "problem": f"cache_info.json has no {' / '.join(missing)} (keys: {sorted(info)})"}
  faces, seconds = int(info["num_images"]), float(info["encode_seconds"])
  out = {"ok": True, "num_faces": faces, "encode_seconds": seconds,
         "faces_per_s": faces / seconds if seconds > 0 else None, "info": info}
  if stage2_wall_s is not None:
    out["stage2_rest_s"] = stage2_wall_s - seconds  # Start-up, training, evaluation, checkpoints.
  return out


def speed_ratio(cache_faces_per_s: float | None, timm_images_per_s: float | None,
                goal: float = GOAL_RATIO) -> dict:
  """cache faces/s / timm images/s and whether it meets the goal (None when either is missing)."""
  if not cache_faces_per_s or not timm_images_per_s:
    return {"ratio": None, "goal": goal, "met": None}
  ratio = cache_faces_per_s / timm_images_per_s
  return {"ratio": ratio, "goal": goal, "met": ratio >= goal}


def _fmt(x: float | None, digits: int = 1) -> str:
  return "-" if x is None else f"{x:,.{digits}f}"


def format_table(stages: list[StageResult], cache: dict, timm: dict | None, ratio: dict) -> str:
  """Markdown table: stage, wall s, peak RSS GiB, notes (+ the cache's rows and the ratio)."""
  rows = ["| stage | wall s | cpu s | peak RSS GiB | notes |", "|---|---|---|---|---|"]
  for s in stages:
    notes = s.notes if s.status == "ok" else f"**{s.status.upper()}** {s.notes}".strip()
    if s.status == "failed" and s.error:
      notes += " " + s.error.splitlines()[0]
    rows.append(f"| {s.name} | {_fmt(s.wall_s)} | {_fmt(s.cpu_s)} | {_fmt(s.peak_rss_gib, 2)} | "
                f"{notes.strip()} |")
    if s.name == "stage2" and s.status == "ok":
      if cache.get("ok"):
        rows.append(f"| - of which face cache | {_fmt(cache['encode_seconds'])} | - | - | "
                    f"{cache['num_faces']:,} faces, {_fmt(cache['faces_per_s'], 2)} faces/s "
                    f"(cache_info.json encode_seconds) |")
        if cache.get("stage2_rest_s") is not None:
          rows.append(f"| - of which the rest | {_fmt(cache['stage2_rest_s'])} | - | - | start-up, "
                      f"compilation, training, evaluation, checkpoints |")
      else:
        rows.append(f"| - of which face cache | - | - | - | {cache.get('problem', 'not measured')} |")
  total = sum(s.wall_s for s in stages if s.wall_s is not None)
  cpu = sum(s.cpu_s for s in stages if s.cpu_s is not None)
  peak = max((s.peak_rss_gib or 0 for s in stages), default=0)
  rows.append(f"| **total** | {_fmt(total)} | {_fmt(cpu)} | {_fmt(peak, 2)} | "
              f"{sum(s.status == 'ok' for s in stages)} of {len(stages)} stages ok |")
  lines = rows + [""]
  timm_rate = timm.get("images_per_s") if timm else None
  verdict = {True: "met", False: "NOT met", None: "not measured"}[ratio.get("met")]
  lines.append(f"Face cache {_fmt(cache.get('faces_per_s'), 2)} faces/s vs timm Swin-B "
               f"{_fmt(timm_rate, 2)} images/s (batch {timm.get('batch', '-') if timm else '-'}): "
               f"ratio {_fmt(ratio.get('ratio'), 2)}, goal >= {ratio['goal']}: {verdict}")
  return "\n".join(lines)


def assemble_report(*, command: list[str], settings: dict, machine: dict, git: dict,
                    stages: list[StageResult], cache: dict, timm: dict | None, ratio: dict,
                    problems: list[str], date_utc: str) -> dict:
  """Everything of one run as a JSON-ready dict."""
  return {
      "benchmark": "paper", "date_utc": date_utc, "command": command, "settings": settings,
      "paper_sizes": PAPER_SIZES, "machine": machine, "git": git,
      "stages": [dataclasses.asdict(s) for s in stages],
      "total_wall_s": sum(s.wall_s for s in stages if s.wall_s is not None),
      "face_cache": cache, "timm": timm, "cache_vs_timm": ratio,
      "failures": failure_messages(stages), "problems": problems,
      "table": format_table(stages, cache, timm, ratio)}
