r"""The audio CNN's training pass in Flax against the same network in PyTorch, same CPU, same run.

  ./run.sh bench audio_cnn [--frames 20,160] [--runs 3] [--threads 2] [--json OUT.json]

Why: with the ViT frozen, the audio-visual train step (benchmarks.av_train) is almost all audio CNN
(gems_jax.models.audio_cnn: 12 valid 3x3 convolutions, 32 to 512 channels, on 5 log-mel frames of
128 x 128 per clip). This program gives that step a peer: the same network written in PyTorch from
the paper's description (`torch_cnn`), with the same random weights (`cnn_params`), on the same
inputs [n, 128, 128]; n = 20 and 160 audio frames are batches of 4 and 32 clips.

Rows, each timed in alternation (one PyTorch run, one Flax run, repeated, medians reported, so that
load from other processes hits both alike):
  forward        the CNN's features [n, 1024] (PyTorch under torch.inference_mode)
  train          forward + backward: the gradient of sum(features^2) w.r.t. every weight
                 (PyTorch: zero_grad, forward, backward; Flax: an AOT-compiled jax.jit of jax.grad)
  conv fwd / input grad / filter grad
                 the heaviest convolution alone (block 1's 64 -> 64 channels on 124 x 124) and its
                 two gradients (torch.nn.grad.conv2d_input / conv2d_weight; jax.vjp of
                 lax.conv_general_dilated), which shows where a difference in `train` comes from.
GFLOP/s use FLOPs counted by torch.utils.flop_counter on the PyTorch side (2 per multiply-add).
Parity, printed first: max |flax - torch| of the features and of the first kernel's gradient,
relative to the largest value; and both float32 gradients against PyTorch's in float64 on the first
4 frames, which tells a Flax error from what float32 loses in the deep ReLU stack. The JSON adds
the provenance (UTC time, command, git, machine, load).
"""
import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.stages import git_info, machine_info
from gems_jax.models import audio_cnn

F64_FRAMES = 4  # Frames of the float64 check (the first of each case's input).
HEAVY_CONV = dict(side=124, channels_in=64, channels_out=64)  # Block 1's last convolution.


def torch_cnn(channels, pool_size=(1, 2)) -> nn.Sequential:
  """The audio CNN in PyTorch, from the paper's facts (not from any code): per block, [Conv2d 3x3
  valid + ReLU] per width, then MaxPool2d(2, 2); AdaptiveAvgPool2d(pool_size), Flatten."""
  layers, c_in = [], 1
  for block in channels:
    for c in block:
      layers += [nn.Conv2d(c_in, c, 3), nn.ReLU()]
      c_in = c
    layers.append(nn.MaxPool2d(2, 2))
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool_size), nn.Flatten())


def cnn_params(sequential: nn.Sequential, channels) -> dict:
  """`torch_cnn`'s weights as `audio_cnn.AudioCNN` params (OIHW kernels -> HWIO)."""
  convs = [m for m in sequential if isinstance(m, nn.Conv2d)]
  names = [f"conv{i}_{k}" for i, block in enumerate(channels) for k in range(len(block))]
  return {name: {"kernel": jnp.asarray(c.weight.detach().permute(2, 3, 1, 0).numpy()),
                 "bias": jnp.asarray(c.bias.detach().numpy())}
          for name, c in zip(names, convs, strict=True)}


def alternate(runs: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
  """Seconds of each callable in `runs`, called in turn `repeats` times after `warmup` rounds."""
  for _ in range(warmup):
    for run in runs.values():
      run()
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return times


def counted_flops(fn) -> float:
  counter = FlopCounterMode(display=False)
  with counter:
    fn()
  return float(counter.get_total_flops())


def first_kernel_grad_torch(ref: nn.Sequential, x: np.ndarray, dtype) -> np.ndarray:
  """d sum(features^2) / d (first kernel), HWIO, of a `dtype` copy of `ref` on x [n, S, S]."""
  model = copy.deepcopy(ref).to(dtype)
  (model(torch.from_numpy(x[:, None]).to(dtype)) ** 2).sum().backward()
  return model[0].weight.grad.permute(2, 3, 1, 0).double().numpy()


def float64_judge(ref: nn.Sequential, module, x: np.ndarray) -> dict:
  """How far each float32 first-kernel gradient is from PyTorch's in float64, on x [n, S, S]:
  tells a Flax error from what float32 itself loses in the deep ReLU stack."""
  params = {"params": cnn_params(ref, module.channels)}
  loss = lambda p, x: jnp.sum(module.apply(p, x) ** 2)  # noqa: E731
  flax = np.asarray(jax.jit(jax.grad(loss))(params, jnp.asarray(x))["params"]["conv0_0"]["kernel"])
  exact = first_kernel_grad_torch(ref, x, torch.float64)
  rel = lambda got: float(np.abs(got - exact).max() / np.abs(exact).max())  # noqa: E731
  return {"float64_frames": len(x), "flax_grad_vs_float64": rel(flax),
          "torch_grad_vs_float64": rel(first_kernel_grad_torch(ref, x, torch.float32))}


def network_cases(frames: int, channels, side: int, repeats: int) -> tuple[list[dict], dict]:
  """The 'forward' and 'train' rows for [frames, side, side] inputs, and the parity figures."""
  torch.manual_seed(0)
  ref = torch_cnn(channels)
  module = audio_cnn.AudioCNN(tuple(map(tuple, channels)))
  params = {"params": cnn_params(ref, channels)}
  x = np.random.default_rng(frames).standard_normal((frames, side, side), dtype=np.float32)
  x_torch, x_jax = torch.from_numpy(x[:, None]), jnp.asarray(x)
  forward = jax.jit(module.apply).lower(params, x_jax).compile()
  loss = lambda p, x: jnp.sum(module.apply(p, x) ** 2)  # noqa: E731
  train = jax.jit(jax.grad(loss)).lower(params, x_jax).compile()

  def torch_forward():
    with torch.inference_mode():
      return ref(x_torch)

  def torch_train():
    ref.zero_grad()
    (ref(x_torch) ** 2).sum().backward()

  features = np.asarray(forward(params, x_jax))
  grads = train(params, x_jax)
  torch_train()
  want_grad = ref[0].weight.grad.permute(2, 3, 1, 0).numpy()
  want = torch_forward().numpy()
  rel = lambda got, ref: float(np.abs(got - ref).max() / np.abs(ref).max())  # noqa: E731
  first_kernel_grad = np.asarray(grads["params"]["conv0_0"]["kernel"])
  parity = {"frames": frames, "features_rel": rel(features, want),
            "first_kernel_grad_rel": rel(first_kernel_grad, want_grad),
            **float64_judge(ref, module, x[:F64_FRAMES])}
  flops = {"forward": counted_flops(torch_forward), "train": counted_flops(torch_train)}
  runs = {"forward": (torch_forward, lambda: jax.block_until_ready(forward(params, x_jax))),
          "train": (torch_train, lambda: jax.block_until_ready(train(params, x_jax)))}
  return [_row(name, frames, flops[name], *pair, repeats) for name, pair in runs.items()], parity


def conv_cases(frames: int, side: int, c_in: int, c_out: int, repeats: int) -> list[dict]:
  """One 3x3 valid convolution [frames, c_in, side, side] -> c_out: forward and both gradients."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((frames, c_in, side, side), dtype=np.float32)
  w = 0.05 * rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32)
  g = rng.standard_normal((frames, c_out, side - 2, side - 2), dtype=np.float32)
  xt, wt, gt = map(torch.from_numpy, (x, w, g))
  xj, wj, gj = (jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(w.transpose(2, 3, 1, 0)),
                jnp.asarray(g.transpose(0, 2, 3, 1)))
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  jax_fns = {"conv fwd": (lambda x, w, g: conv(x, w)),
             "conv input grad": (lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
             "conv filter grad": (lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])}
  torch_fns = {"conv fwd": lambda: torch.nn.functional.conv2d(xt, wt),
               "conv input grad": lambda: torch.nn.grad.conv2d_input(xt.shape, wt, gt),
               "conv filter grad": lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, gt)}
  flops = 2.0 * frames * (side - 2) ** 2 * c_in * c_out * 9
  rows = []
  for name, fn in jax_fns.items():
    compiled = jax.jit(fn).lower(xj, wj, gj).compile()
    with torch.inference_mode():
      rows.append(_row(name, frames, flops, torch_fns[name],
                       lambda c=compiled: jax.block_until_ready(c(xj, wj, gj)), repeats))
  return rows


def _row(name: str, frames: int, flops: float, torch_run, flax_run, repeats: int) -> dict:
  times = alternate({"torch": torch_run, "flax": flax_run}, repeats)
  t, f = statistics.median(times["torch"]), statistics.median(times["flax"])
  return {"case": name, "frames": frames, "torch_s": t, "flax_s": f, "flax_speed_vs_torch": t / f,
          "torch_gflops": flops / t / 1e9, "flax_gflops": flops / f / 1e9,
          "torch_times": times["torch"], "flax_times": times["flax"]}


def format_table(rows: list[dict]) -> str:
  lines = ["| case | frames | PyTorch ms | Flax ms | Flax speed vs PyTorch | PyTorch GFLOP/s | "
           "Flax GFLOP/s |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['case']} | {r['frames']} | {1e3 * r['torch_s']:,.1f} | "
                 f"{1e3 * r['flax_s']:,.1f} | {r['flax_speed_vs_torch']:.2f}x | "
                 f"{r['torch_gflops']:.0f} | {r['flax_gflops']:.0f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", default="20,160", help="audio frames per call (5 per clip)")
  parser.add_argument("--runs", type=int, default=3, help="timed runs per case (median)")
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--quick", action="store_true", help="thin channels, 32 x 32 frames (tests)")
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  load_start = os.getloadavg()
  channels = ((4, 8), (8, 8)) if args.quick else audio_cnn.PAPER_CHANNELS
  side = 32 if args.quick else 128
  heavy = dict(side=16, channels_in=8, channels_out=8) if args.quick else HEAVY_CONV
  rows, parities = [], []
  for frames in (int(n) for n in args.frames.split(",")):
    network_rows, parity = network_cases(frames, channels, side, args.runs)
    parities.append(parity)
    print(f"{frames} frames: features max |flax - torch| / max = {parity['features_rel']:.1e}, "
          f"first kernel gradient {parity['first_kernel_grad_rel']:.1e}; against float64 PyTorch "
          f"on {parity['float64_frames']} frames: Flax {parity['flax_grad_vs_float64']:.1e}, "
          f"PyTorch float32 {parity['torch_grad_vs_float64']:.1e}", flush=True)
    rows += network_rows + conv_cases(frames, heavy["side"], heavy["channels_in"],
                                      heavy["channels_out"], args.runs)
  table = format_table(rows)
  load_end = os.getloadavg()
  print(table + f"\nload average at start {load_start}, at end {load_end}; torch threads "
        f"{args.threads}; heavy conv: {heavy}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"benchmark": "audio_cnn", "date_utc": started,
                 "command": ["python", "-m", "benchmarks.audio_cnn",
                             *(sys.argv[1:] if argv is None else argv)],
                 "git": git_info(), "machine": machine_info(), "torch_threads": args.threads,
                 "channels": channels, "frame_side": side, "heavy_conv": heavy,
                 "load_avg_start": load_start, "load_avg_end": load_end, "parity": parities,
                 "rows": rows, "table": table}, f, indent=2)


if __name__ == "__main__":
  main()
