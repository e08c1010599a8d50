"""The paper-size benchmark's bookkeeping, on fake numbers (the heavy stages are not run)."""
import json
import sys

import pytest

from benchmarks import paper
from benchmarks import paper_report
from benchmarks import stages


def _stage(name, wall, rss, status="ok", notes="", error=None):
  return stages.StageResult(name, ["python", "-m", name], status=status, wall_s=wall,
                           cpu_s=1.5 * wall, peak_rss_gib=rss, notes=notes, error=error)


def _fake_run():
  stages = [_stage("synthetic", 20.0, 0.5), _stage("build", 60.0, 2.0),
            _stage("stage1", 300.0, 9.5), _stage("stage2", 250.0, 6.0),
            _stage("timm", 30.0, 1.5, notes="5.00 images/s"),
            _stage("eval_best", 40.0, 3.0), _stage("eval_latest", 41.0, 3.0),
            _stage("predict", 70.0, 4.0)]
  cache = paper_report.cache_figures(
      {"num_images": 600, "encode_seconds": 150.0, "source": "x"}, 250.0)
  timm = {"images_per_s": 5.0, "batch": 16}
  ratio = paper_report.speed_ratio(cache["faces_per_s"], timm["images_per_s"])
  return stages, cache, timm, ratio


def test_cache_figures_and_the_ratio_to_timm():
  _, cache, _, ratio = _fake_run()
  assert cache["ok"] and cache["faces_per_s"] == pytest.approx(4.0)
  assert cache["stage2_rest_s"] == pytest.approx(100.0)
  assert ratio == {"ratio": pytest.approx(0.8), "goal": 0.9, "met": False}
  assert paper_report.speed_ratio(4.6, 5.0)["met"] is True
  assert paper_report.speed_ratio(None, 5.0) == {"ratio": None, "goal": 0.9, "met": None}


def test_cache_figures_say_what_is_missing():
  assert not paper_report.cache_figures(None, 10.0)["ok"]
  missing = paper_report.cache_figures({"source": "x", "num_images": 3}, 10.0)
  assert not missing["ok"] and "encode_seconds" in missing["problem"]


def test_table_rows_totals_and_verdict():
  stages, cache, timm, ratio = _fake_run()
  table = paper_report.format_table(stages, cache, timm, ratio)
  lines = table.splitlines()
  assert lines[0] == "| stage | wall s | cpu s | peak RSS GiB | notes |"
  assert "| stage1 | 300.0 | 450.0 | 9.50 |" in table
  assert "| - of which face cache | 150.0 | - | - | 600 faces, 4.00 faces/s" in table
  assert "| - of which the rest | 100.0 |" in table
  # Sub-rows are not counted twice in the totals.
  assert "| **total** | 811.0 | 1,216.5 | 9.50 | 8 of 8 stages ok |" in table
  assert "ratio 0.80, goal >= 0.9: NOT met" in table


def test_report_json_and_failures():
  stages, cache, timm, ratio = _fake_run()
  stages[7] = _stage("predict", 12.0, 1.0, status="failed",
                     error="exit status 1\nTraceback (most recent call last):\nValueError: boom")
  report = paper_report.assemble_report(
      command=["python", "-m", "benchmarks.paper"], settings={"clips": 8},
      machine={"cpu_model": "fake", "cores": 2}, git={"commit": "abc"},
      stages=stages, cache=cache, timm=timm, ratio=ratio, problems=[],
      date_utc="2026-12-04 00:00:00 UTC")
  again = json.loads(json.dumps(report))  # JSON-ready.
  assert again["stages"][2]["name"] == "stage1" and again["stages"][2]["wall_s"] == 300.0
  assert again["cache_vs_timm"]["ratio"] == pytest.approx(0.8)
  assert again["total_wall_s"] == pytest.approx(753.0)
  assert again["failures"] == ["stage predict failed: exit status 1\nTraceback (most recent call "
                               "last):\nValueError: boom"]
  assert "**FAILED**" in again["table"] and "7 of 8 stages ok" in again["table"]


def test_stderr_tail_keeps_the_last_traceback():
  log = "\n".join(["I0 noise"] * 100 + ["Traceback (most recent call last):", '  File "a.py"',
                                         "RuntimeError: first"] + ["I1 more"] * 3 +
                  ["Traceback (most recent call last):", '  File "b.py"', "MemoryError"])
  assert stages.stderr_tail(log) == 'Traceback (most recent call last):\n  File "b.py"\nMemoryError'
  assert stages.stderr_tail("a\nb\nc", max_lines=2) == "b\nc"


def test_commands_keep_the_paper_sizes():
  args = paper.parse_args(["--clips", "8"])
  cmds = paper.commands(paper.Paths("/w"), args, n_train=40, text_encoder="/enc", video="/v.mp4")
  build = cmds["build"]
  for flag, value in (("--num_frames", "16"), ("--max_faces", "8"), ("--face_size", "224")):
    assert build[build.index(flag) + 1] == value
  stage2 = " ".join(cmds["stage2"])
  assert "configs/gems.py" in stage2 and "--config.model.face_encoder.checkpoint=/w/stage1_faces" in stage2
  # No override of the model or batch sizes: configs/gems.py's own (paper) values are used.
  assert not any(a.startswith(("--config.model.fusion", "--config.input.batch_size",
                               "--config.input.num_steps", "--config.model.face_encoder.name"))
                 for a in cmds["stage1"] + cmds["stage2"])
  # 40 train clips at batch 32 = 2 steps per epoch: 3 steps need 2 epochs.
  assert "--config.train.num_epochs=2" in cmds["stage1"]
  assert cmds["eval_latest"][-2:] == ["--mode=eval", "--checkpoint=latest"]
  assert paper.epochs_for(3, 5) == 3 and paper.epochs_for(3, 100) == 1


def test_run_stage_measures_the_process_tree_and_reports_failures(tmp_path):
  pytest.importorskip("psutil")
  # The child holds 50 MiB while its grandchild holds 300 MiB: the sampled tree sum sees both at
  # once; wait4's ru_maxrss is the larger of the two processes' own peaks (Linux folds the peaks of
  # the descendants a process has reaped into its own rusage), not their sum.
  grandchild = "import time; b = bytearray(300 << 20); time.sleep(1.5)"
  child = ("import subprocess, sys; a = bytearray(50 << 20); "
           f"subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)")
  ok = stages.run_stage("tree", [sys.executable, "-c", child], log_dir=str(tmp_path), poll_s=0.05)
  assert ok.status == "ok" and ok.returncode == 0 and ok.wall_s > 1.0
  assert ok.child_maxrss_gib > 0.29
  assert ok.tree_peak_rss_gib > 0.34
  assert ok.peak_rss_gib == max(ok.tree_peak_rss_gib, ok.child_maxrss_gib)

  bad = stages.run_stage("bad", [sys.executable, "-c", "print('x'); raise ValueError('boom')"],
                        log_dir=str(tmp_path), poll_s=0.05)
  assert bad.status == "failed" and bad.returncode == 1
  assert bad.error.startswith("exit status 1\nTraceback") and bad.error.endswith("ValueError: boom")
  assert open(bad.stdout_log).read() == "x\n"
  assert stages.failure_messages([ok, bad]) == [f"stage bad failed: {bad.error}"]

  slow = stages.run_stage("slow", [sys.executable, "-c", "import time; time.sleep(30)"],
                         log_dir=str(tmp_path), poll_s=0.05, timeout_s=0.5)
  assert slow.status == "failed" and slow.error.startswith("timed out after")
