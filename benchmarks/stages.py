"""Programs run as measured stages: wall time, peak memory of the process tree, CPU time, the
tail of a failure, and the provenance (machine, code) a benchmark report carries.

    result = run_stage("build", [sys.executable, "-m", "preprocessing.build", ...], log_dir=...)

Peak RSS is the larger of (a) the summed RSS of the child and its descendants, sampled with psutil
every `poll_s` seconds (it can miss a shorter spike and counts shared pages once per process), and
(b) `ru_maxrss` of the rusage `os.wait4` returns for the child (on Linux the largest peak of any ONE
process among the child and its reaped descendants, including the forked child before exec, i.e.
the launcher's pages).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import signal
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024 ** 3


# --------------------------------------------------------------------------------------------
# Running one stage: wall time, peak RSS of the process tree, the child's own rusage.

@dataclasses.dataclass
class StageResult:
  name: str
  command: list[str]
  status: str = "skipped"  # ok | failed | skipped
  wall_s: float | None = None
  peak_rss_gib: float | None = None  # max(tree_peak_rss_gib, child_maxrss_gib)
  tree_peak_rss_gib: float | None = None  # polled sum over the child and its descendants
  child_maxrss_gib: float | None = None  # os.wait4 ru_maxrss: max over the child and its reaped descendants
  cpu_s: float | None = None  # user + system time of the child and its reaped descendants
  returncode: int | None = None
  notes: str = ""
  error: str | None = None  # tail of stderr (from the last traceback) when failed
  stdout_log: str | None = None
  stderr_log: str | None = None
  extra: dict = dataclasses.field(default_factory=dict)


def _tree_rss_bytes(pid: int) -> int:
  """Summed RSS of a process and its descendants right now (0 when psutil is missing)."""
  try:
    import psutil
  except ImportError:
    return 0
  try:
    root = psutil.Process(pid)
    procs = [root] + root.children(recursive=True)
  except psutil.Error:
    return 0
  total = 0
  for p in procs:
    try:
      total += p.memory_info().rss
    except psutil.Error:
      pass  # Exited between listing and reading.
  return total


def stderr_tail(text: str, max_lines: int = 40) -> str:
  """The last traceback of a log (up to max_lines), or its last lines when it has none."""
  lines = text.rstrip().splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
  if starts:
    tail = lines[starts[-1]:]
    if len(tail) > max_lines:
      tail = tail[:5] + ["  ..."] + tail[-(max_lines - 6):]
    return "\n".join(tail)
  return "\n".join(lines[-max_lines:])


def run_stage(name: str, command: list[str], *, log_dir: str, cwd: str = REPO,
              timeout_s: float | None = None, poll_s: float = 0.2) -> StageResult:
  """Runs `command`, logs its output to <log_dir>/<name>.{stdout,stderr}, measures it."""
  os.makedirs(log_dir, exist_ok=True)
  result = StageResult(name, list(command), stdout_log=os.path.join(log_dir, f"{name}.stdout"),
                       stderr_log=os.path.join(log_dir, f"{name}.stderr"))
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  tree_peak, timed_out = 0, False
  with open(result.stdout_log, "w") as out, open(result.stderr_log, "w") as err:
    start = time.perf_counter()
    # Own session: a timed-out stage is killed with all of its descendants (and only those).
    proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd, env=env,
                            start_new_session=True)
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      tree_peak = max(tree_peak, _tree_rss_bytes(proc.pid))
      if timeout_s is not None and time.perf_counter() - start > timeout_s and not timed_out:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
      time.sleep(poll_s)
    wall = time.perf_counter() - start
  proc.returncode = os.waitstatus_to_exitcode(status)  # Reaped here, not by Popen.
  result.returncode = proc.returncode
  result.wall_s = wall
  result.tree_peak_rss_gib = tree_peak / GIB if tree_peak else None
  result.child_maxrss_gib = usage.ru_maxrss * 1024 / GIB  # KiB on Linux.
  result.peak_rss_gib = max(result.child_maxrss_gib, result.tree_peak_rss_gib or 0.0)
  result.cpu_s = usage.ru_utime + usage.ru_stime
  if proc.returncode == 0 and not timed_out:
    result.status = "ok"
    return result
  result.status = "failed"
  with open(result.stderr_log, errors="replace") as f:
    tail = stderr_tail(f.read())
  if timed_out:
    reason = f"timed out after {timeout_s:.0f} s (process group killed)"
  elif proc.returncode < 0:
    sig = signal.Signals(-proc.returncode).name
    reason = f"killed by {sig}" + (" (the kernel's OOM killer sends SIGKILL)" if sig == "SIGKILL" else "")
  else:
    reason = f"exit status {proc.returncode}"
  result.error = f"{reason}\n{tail}".rstrip()
  return result


def skipped(name: str, command: list[str], why: str) -> StageResult:
  return StageResult(name, list(command), status="skipped", notes=why)


def failure_messages(stages: list[StageResult]) -> list[str]:
  return [f"stage {s.name} failed: {s.error}" for s in stages if s.status == "failed"]


# --------------------------------------------------------------------------------------------
# The machine, the code.

def machine_info() -> dict:
  model = None
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
  except OSError:
    pass
  mem = None
  try:
    with open("/proc/meminfo") as f:
      kib = next(int(l.split()[1]) for l in f if l.startswith("MemTotal"))
      mem = round(kib / 1024 ** 2, 1)
  except (OSError, StopIteration):
    pass
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "torch", "timm", "numpy", "psutil"):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      versions[pkg] = None
  return {"cpu_model": model, "cores": os.cpu_count(),
          "cores_usable": len(os.sched_getaffinity(0)), "mem_total_gib": mem,
          "platform": platform.platform(), "python": platform.python_version(),
          "niceness": os.nice(0), "versions": versions,
          "env": {k: v for k, v in os.environ.items()
                  if k.startswith(("JAX_", "XLA_", "OMP_", "MKL_", "OPENBLAS_"))}}


def git_info() -> dict:
  """The commit and the (first 60) changed paths of the checkout (gems_jax's report provenance)."""
  from gems_jax.evaluation import report  # Here: the stage runner itself imports no gems_jax.
  state = report.git_state()
  changed = state["uncommitted"] or []
  return {"commit": state["commit"], "dirty": bool(changed), "changed": changed[:60]}
