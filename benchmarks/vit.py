"""Throughput of the Flax ViT forward pass against timm's PyTorch ViT on the same CPU, same run.

  python -m benchmarks.vit --batches 8,32 --dtypes float32 --runs 3 --json OUT.json

The default model is the CLIP image tower ViT-L/14 (`vit_large_patch14_clip_224`, 224 px, 257 tokens)
as a feature extractor (`num_classes=0`: the class token after the final LayerNorm, [B, 1024]). Both
models carry the same random weights (timm `pretrained=False`, converted with
`gems_jax.tools.convert_vit`); a parity line gives the max |flax - timm| of the pooled features and of
all tokens at full size, on a batch of 2. The timing method is the Swin benchmark's (`benchmarks.swin`):
timm and Flax runs alternate (so load from other processes hits both alike), medians are reported,
Flax runs an AOT-compiled `jax.jit`, timm runs in eval mode under `torch.inference_mode()` with
`--threads` threads; FLOPs are counted once on timm's model, and the matmul peak is measured in the
same run. The JSON adds the provenance: UTC time, command, git commit (and changed files), machine.
"""
import argparse
import datetime
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.stages import git_info, machine_info
from benchmarks.swin import bench_case, counted_flops_per_image, keep_heap, matmul_peak
from gems_jax.tools.convert_vit import convert_timm_state_dict


def parity(timm_model, module, variables, batch: int = 2) -> dict[str, float]:
  """Max |flax - timm| of the pooled features and of the final tokens on a random batch."""
  img = module.img_size
  x = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(0))
  with torch.inference_mode():
    tokens = timm_model.forward_features(x)
    pooled = timm_model.forward_head(tokens, pre_logits=True)
  out = jax.jit(lambda v, x: module.apply(v, x, return_features=True))(
      variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  return {"pooled_max_abs": float(np.abs(np.asarray(out["pooled"]) - pooled.numpy()).max()),
          "tokens_max_abs": float(np.abs(np.asarray(out["tokens"]) - tokens.numpy()).max()),
          "pooled_max_abs_value": float(pooled.abs().max())}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="vit_large_patch14_clip_224")
  parser.add_argument("--batches", default="8,32")
  parser.add_argument("--dtypes", default="float32")
  parser.add_argument("--runs", type=int, default=3, help="timed runs per case (median)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--keep-heap", action="store_true",
                      help="raise glibc's mmap threshold to 1 GiB for both frameworks (benchmarks.swin)")
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args(argv)
  if args.keep_heap:
    keep_heap()
  torch.set_num_threads(args.threads)
  import timm  # pylint: disable=g-import-not-at-top

  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  load_start = os.getloadavg()
  torch.manual_seed(0)
  timm_model = timm.create_model(args.model, pretrained=False, num_classes=0).eval()
  module, variables = convert_timm_state_dict(args.model, timm_model.state_dict(), num_classes=0)
  check = parity(timm_model, module, variables)
  flops = counted_flops_per_image(timm_model, module.img_size)
  peaks = matmul_peak()
  print(f"{args.model}: {flops / 1e9:.1f} GFLOP/img (counted); fp32 at full size, batch 2: "
        f"features max |flax - timm| = {check['pooled_max_abs']:.2e} (max |feature| "
        f"{check['pooled_max_abs_value']:.2f}), all tokens {check['tokens_max_abs']:.2e}")
  print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))

  rows = []
  header = (f"{'batch':>5} {'dtype':>8} | {'timm img/s':>10} {'flax img/s':>10} {'flax/timm':>9} | "
            f"{'flax GF/s':>9} {'%jax pk':>7} {'timm GF/s':>9} | {'compile s':>9} {'cpu PSI %':>11}")
  print(header + "\n" + "-" * len(header))
  for dtype in args.dtypes.split(","):
    for batch in (int(b) for b in args.batches.split(",")):
      row = bench_case(timm_model, module, variables, batch, dtype, args.runs, args.warmup)
      row["flax_gflops"] = row["flax_img_s"] * flops / 1e9
      row["timm_gflops"] = row["timm_img_s"] * flops / 1e9
      rows.append(row)
      print(f"{batch:>5} {dtype:>8} | {row['timm_img_s']:>10.2f} {row['flax_img_s']:>10.2f} "
            f"{row['ratio']:>9.2f} | {row['flax_gflops']:>9.0f} "
            f"{100 * row['flax_gflops'] / peaks['jax_4096']:>6.0f}% {row['timm_gflops']:>9.0f} | "
            f"{row['flax_compile_s']:>9.1f} "
            f"{'/'.join(f'{p:.0f}' for p in row['cpu_pressure_avg10'] if p is not None):>11}",
            flush=True)
  load_end = os.getloadavg()
  print(f"load average (1/5/15 min) at start {load_start}, at end {load_end}; "
        f"keep_heap={args.keep_heap}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"benchmark": "vit", "model": args.model, "date_utc": started,
                 "command": ["python", "-m", "benchmarks.vit",
                             *(sys.argv[1:] if argv is None else argv)],
                 "git": git_info(), "machine": machine_info(), "keep_heap": args.keep_heap,
                 "flops_per_image": flops, "parity": check, "matmul_peak_gflops": peaks,
                 "torch_threads": args.threads, "load_avg_start": load_start,
                 "load_avg_end": load_end, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
