"""A Flax vision model's forward pass timed against its timm (PyTorch) peer on the same CPU, same run.

Used by benchmarks.swin and benchmarks.vit, which say only which model they build and how they check
parity. The method: both models carry the same random weights (timm `pretrained=False`, converted to
Flax); for each batch size and dtype the timm and Flax forward passes on the same random images
(NCHW [B, 3, S, S] for timm, NHWC [B, S, S, 3] for Flax) are timed in alternation (one timm run, one
Flax run, repeated), so that load from other processes hits both alike, and the medians reported.
Flax runs an AOT-compiled `jax.jit` (compile time reported separately) with `block_until_ready`;
timm runs in eval mode under `torch.inference_mode()` with `torch.set_num_threads(--threads)`, and
its bfloat16 row uses `torch.autocast("cpu", torch.bfloat16)` (Flax: `dtype=bfloat16` compute with
float32 parameters). Achieved FLOP/s use FLOPs counted once by `torch.utils.flop_counter` on timm's
model (2 per multiply-add) and are set against this machine's matmul peak, measured in the same run
with `jnp.dot` and `torch.matmul` on square fp32 matrices.

The last column is the Linux CPU pressure (PSI "some avg10") at the start/end of the timed runs: the
share of time some task waited for a CPU; near 0 means nothing else competed with the benchmark.

`--keep-heap` raises glibc's mmap threshold for the whole process (both frameworks): by default every
buffer over 32 MiB (XLA's per-call temporaries, torch's activations) is a fresh mmap that is
page-faulted on every call, which costs both frameworks noticeable time at batch >= 8.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch


def keep_heap() -> None:
  """Serve large allocations from the (kept) heap instead of fresh page-faulted mmaps (glibc)."""
  libc = ctypes.CDLL("libc.so.6")
  m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
  for option, value in ((m_mmap_threshold, 1 << 30), (m_trim_threshold, 1 << 34),
                        (m_top_pad, 1 << 28)):
    if libc.mallopt(option, value) != 1:
      raise RuntimeError(f"mallopt({option}, {value}) failed")


def cpu_pressure() -> float | None:
  """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in %."""
  try:
    with open("/proc/pressure/cpu") as f:
      return float(f.readline().split()[1].split("=")[1])
  except (OSError, IndexError, ValueError):
    return None


def _median_time(run, runs: int) -> float:
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak(sizes=(2048, 4096), runs: int = 5) -> dict[str, float]:
  """Median GFLOP/s of square fp32 matmuls (2 n^3 FLOP) for jnp.dot (jit) and torch.matmul."""
  peaks = {}
  for n in sizes:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    dot = jax.jit(jnp.dot).lower(a, a).compile()
    ja = jnp.asarray(a)
    jax.block_until_ready(dot(ja, ja))
    peaks[f"jax_{n}"] = 2 * n**3 / _median_time(lambda: jax.block_until_ready(dot(ja, ja)), runs) / 1e9
    ta = torch.from_numpy(a)
    torch.matmul(ta, ta)
    peaks[f"torch_{n}"] = 2 * n**3 / _median_time(lambda: torch.matmul(ta, ta), runs) / 1e9
  return peaks


def counted_flops_per_image(model: torch.nn.Module, img_size: int) -> float:
  """FLOPs (2 per multiply-add) of one [1, 3, img_size, img_size] forward pass of a torch model."""
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  counter = FlopCounterMode(display=False)
  with torch.inference_mode(), counter:
    model(torch.zeros(1, 3, img_size, img_size))
  return float(counter.get_total_flops())


def bench_case(timm_model, flax_module, variables, batch: int, dtype: str, runs: int,
               warmup: int) -> dict:
  """Alternating timm / Flax timings of one (batch, dtype) case on images [batch, 3|., S, S|3]."""
  img = flax_module.img_size
  x = np.random.default_rng(batch).standard_normal((batch, 3, img, img), dtype=np.float32)
  x_torch, x_jax = torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))
  module = flax_module.clone(dtype=jnp.dtype(dtype))
  start = time.perf_counter()
  forward = jax.jit(module.apply).lower(variables, x_jax).compile()
  compile_s = time.perf_counter() - start
  flops_xla = (forward.cost_analysis() or {}).get("flops", float("nan"))
  autocast = torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16")

  def run_timm():
    with torch.inference_mode(), autocast:
      timm_model(x_torch)

  def run_flax():
    jax.block_until_ready(forward(variables, x_jax))

  for _ in range(warmup):
    run_timm()
    run_flax()
  pressure_start = cpu_pressure()
  timm_times, flax_times = [], []
  for _ in range(runs):
    timm_times.append(_median_time(run_timm, 1))
    flax_times.append(_median_time(run_flax, 1))
  timm_s, flax_s = statistics.median(timm_times), statistics.median(flax_times)
  return {"batch": batch, "dtype": dtype, "timm_s": timm_s, "flax_s": flax_s,
          "timm_img_s": batch / timm_s, "flax_img_s": batch / flax_s, "ratio": timm_s / flax_s,
          "flax_compile_s": compile_s, "xla_flops_per_image": flops_xla / batch,
          "cpu_pressure_avg10": (pressure_start, cpu_pressure()),
          "timm_times": timm_times, "flax_times": flax_times}


def parse_args(description: str, argv, *, model: str, batches: str, dtypes: str,
               runs: int) -> argparse.Namespace:
  """The common command line (defaults per benchmark); applies --keep-heap and --threads and
  records the start (`started` UTC, `load_start`)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--model", default=model)
  parser.add_argument("--batches", default=batches)
  parser.add_argument("--dtypes", default=dtypes)
  parser.add_argument("--runs", type=int, default=runs, help="timed runs per case (median)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--keep-heap", action="store_true",
                      help="raise glibc's mmap threshold to 1 GiB for both frameworks "
                           "(benchmarks.peer_timing)")
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args(argv)
  if args.keep_heap:
    keep_heap()
  torch.set_num_threads(args.threads)
  args.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  args.load_start = os.getloadavg()
  return args


def timm_and_flax(name: str, convert, **kwargs):
  """(timm model in eval mode, Flax module, variables): timm's `name` with random weights (seed 0)
  and its conversion by `convert(name, state_dict, **kwargs)`."""
  import timm  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  timm_model = timm.create_model(name, pretrained=False, **kwargs).eval()
  module, variables = convert(name, timm_model.state_dict(), **kwargs)
  return timm_model, module, variables


def compare(args: argparse.Namespace, timm_model, module, variables, flops: float) -> dict:
  """Measures the matmul peak, times every (dtype, batch) case of `args`, prints the table; returns
  {'matmul_peak_gflops', 'rows', 'load_avg_end'}."""
  peaks = matmul_peak()
  print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
  jax_peak, torch_peak = peaks["jax_4096"], peaks["torch_4096"]
  rows = []
  header = (f"{'batch':>5} {'dtype':>8} | {'timm img/s':>10} {'flax img/s':>10} {'flax/timm':>9} | "
            f"{'flax GF/s':>9} {'%jax pk':>7} {'%torch pk':>9} {'timm GF/s':>9} | {'compile s':>9} "
            f"{'cpu PSI %':>11}")
  print(header + "\n" + "-" * len(header))
  for dtype in args.dtypes.split(","):
    for batch in (int(b) for b in args.batches.split(",")):
      row = bench_case(timm_model, module, variables, batch, dtype, args.runs, args.warmup)
      row["flax_gflops"] = row["flax_img_s"] * flops / 1e9
      row["timm_gflops"] = row["timm_img_s"] * flops / 1e9
      rows.append(row)
      print(f"{batch:>5} {dtype:>8} | {row['timm_img_s']:>10.2f} {row['flax_img_s']:>10.2f} "
            f"{row['ratio']:>9.2f} | {row['flax_gflops']:>9.0f} "
            f"{100 * row['flax_gflops'] / jax_peak:>6.0f}% {100 * row['flax_gflops'] / torch_peak:>8.0f}% "
            f"{row['timm_gflops']:>9.0f} | {row['flax_compile_s']:>9.1f} "
            f"{'/'.join(f'{p:.0f}' for p in row['cpu_pressure_avg10'] if p is not None):>11}",
            flush=True)
  load_end = os.getloadavg()
  print(f"load average (1/5/15 min) at start {args.load_start}, at end {load_end}; "
        f"keep_heap={args.keep_heap}")
  return {"matmul_peak_gflops": peaks, "rows": rows, "load_avg_end": load_end}
