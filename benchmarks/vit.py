"""Throughput of the Flax ViT forward pass against timm's PyTorch ViT on the same CPU, same run.

  python -m benchmarks.vit --batches 8,32 --dtypes float32 --runs 3 --json OUT.json

The default model is the CLIP image tower ViT-L/14 (`vit_large_patch14_clip_224`, 224 px, 257 tokens)
as a feature extractor (`num_classes=0`: the class token after the final LayerNorm, [B, 1024]). Both
models carry the same random weights (timm `pretrained=False`, converted with
`gems_jax.tools.convert_vit`); a parity line gives the max |flax - timm| of the pooled features and of
all tokens at full size, on a batch of 2. The timing method is `benchmarks.peer_timing`'s, shared with
`benchmarks.swin`: timm and Flax runs alternate (so load from other processes hits both alike),
medians are reported, Flax runs an AOT-compiled `jax.jit`, timm runs in eval mode under
`torch.inference_mode()` with `--threads` threads; FLOPs are counted once on timm's model, and the
matmul peak is measured in the same run. The JSON adds the provenance: UTC time, command, git commit
(and changed files), machine.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import peer_timing
from benchmarks.stages import git_info, machine_info
from gems_jax.tools.convert_vit import convert_timm_state_dict


def parity(timm_model, module, variables, batch: int = 2) -> dict[str, float]:
  """Max |flax - timm| of the pooled features [B, D] and of the final tokens [B, 1 + N, D] on a
  random batch of images [batch, 3, S, S]."""
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
  args = peer_timing.parse_args(__doc__.split("\n\n")[0], argv, model="vit_large_patch14_clip_224",
                                batches="8,32", dtypes="float32", runs=3)
  timm_model, module, variables = peer_timing.timm_and_flax(args.model, convert_timm_state_dict,
                                                            num_classes=0)
  check = parity(timm_model, module, variables)
  flops = peer_timing.counted_flops_per_image(timm_model, module.img_size)
  print(f"{args.model}: {flops / 1e9:.1f} GFLOP/img (counted); fp32 at full size, batch 2: "
        f"features max |flax - timm| = {check['pooled_max_abs']:.2e} (max |feature| "
        f"{check['pooled_max_abs_value']:.2f}), all tokens {check['tokens_max_abs']:.2e}")
  timing = peer_timing.compare(args, timm_model, module, variables, flops)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"benchmark": "vit", "model": args.model, "date_utc": args.started,
                 "command": ["python", "-m", "benchmarks.vit",
                             *(sys.argv[1:] if argv is None else argv)],
                 "git": git_info(), "machine": machine_info(), "keep_heap": args.keep_heap,
                 "flops_per_image": flops, "parity": check,
                 "matmul_peak_gflops": timing["matmul_peak_gflops"], "torch_threads": args.threads,
                 "load_avg_start": args.load_start, "load_avg_end": timing["load_avg_end"],
                 "rows": timing["rows"]}, f, indent=2)


if __name__ == "__main__":
  main()
