"""Throughput of the Flax Swin forward pass against timm's PyTorch Swin on the same CPU, same run.

  python -m benchmarks.swin --batches 1,8,32 --dtypes float32,bfloat16 --json OUT.json

Both models carry the same random weights (timm `pretrained=False`, converted with
`gems_jax.tools.convert_swin`); a parity line confirms they compute the same function (max |flax -
timm| of the fp32 logits on a batch of 2). The timing method, the FLOP count (30.9 GFLOP per 224 px
image for Swin-B), the matmul peak, the CPU-pressure column and `--keep-heap` are those of
`benchmarks.peer_timing`, shared with `benchmarks.vit`.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import peer_timing
from gems_jax.tools.convert_swin import convert_timm_state_dict


def main(argv=None) -> None:
  args = peer_timing.parse_args(__doc__.split("\n\n")[0], argv, model="swin_base_patch4_window7_224",
                                batches="1,8,32", dtypes="float32,bfloat16", runs=5)
  timm_model, module, variables = peer_timing.timm_and_flax(args.model, convert_timm_state_dict)
  img = module.img_size
  probe = torch.randn(2, 3, img, img)
  with torch.inference_mode():
    reference = timm_model(probe).numpy()
  ours = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(probe.permute(0, 2, 3, 1).numpy())))
  parity = float(np.abs(ours - reference).max())
  flops = peer_timing.counted_flops_per_image(timm_model, img)
  print(f"{args.model}: {flops / 1e9:.2f} GFLOP/img (counted), fp32 logits max |flax - timm| = "
        f"{parity:.2e}")
  timing = peer_timing.compare(args, timm_model, module, variables, flops)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"model": args.model, "keep_heap": args.keep_heap, "flops_per_image": flops,
                 "parity_max_abs": parity,
                 "matmul_peak_gflops": timing["matmul_peak_gflops"], "torch_threads": args.threads,
                 "load_avg_start": args.load_start, "load_avg_end": timing["load_avg_end"],
                 "jax": jax.__version__, "torch": torch.__version__, "rows": timing["rows"]},
                f, indent=2)


if __name__ == "__main__":
  main()
