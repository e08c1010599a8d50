"""timm ViT checkpoint -> gems_jax Flax ViT (`gems_jax.models.vit`), as a library and a CLI.

Library:
  module, variables = load_timm_checkpoint("vit_large_patch14_clip_224", "model.safetensors",
                                           num_classes=0)
  features = module.apply(variables, x_nhwc)    # [B, 1024], == timm_model.forward_head(
                                                #   timm_model.forward_features(x_nchw), pre_logits=True)
`convert_timm_state_dict(name, state_dict)` does the same from an in-memory state dict (torch tensors
or numpy arrays). The key mapping is the Swin converter's rule (`convert_swin.timm_key`, shared):
`blocks.{i}` -> `blocks_{i}`, Linear `weight` -> transposed `kernel`, Conv `weight` (OIHW) -> `kernel`
(HWIO), LayerNorm `weight` -> `scale`; `cls_token` `[1, 1, C]` and `pos_embed` `[1, 1 + N, C]` are taken
as they are. A state dict with missing or unexpected keys (or wrong shapes) is rejected with an error
listing them; position embeddings are not resampled, so a checkpoint for another image size is
rejected naming `pos_embed`.

`num_classes` follows the checkpoint's `head.weight` unless given as an override; `num_classes=0`
drops the checkpoint's head, e.g. the 1024 -> 768 image projection that timm's CLIP laion2b weights
carry as `head`, so that the module returns the class token after the final LayerNorm.

The state dict must be in timm's layout (what `timm_model.state_dict()` returns and timm's hub files
`model.safetensors` / `pytorch_model.bin` hold). An OpenCLIP / OpenAI CLIP file (keys `visual.*`) is
rejected with a hint: load it through timm once (`timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=PATH))`) and save that model's state dict.

CLI (writes an orbax checkpoint of the variables plus `vit_config.json` with the model name and kwargs):
  python -m gems_jax.tools.convert_vit --model vit_large_patch14_clip_224 --weights FILE --out DIR \
      [--num-classes 0]
Restore it without torch: `module, variables = gems_jax.training.checkpointing.restore_converted(DIR)`.

torch and safetensors are imported only inside `convert_swin.read_torch_state_dict`.
"""
import argparse
import os
from typing import Any, Mapping

import jax

from gems_jax.models.vit import VisionTransformer, create_vit
from gems_jax.tools.convert_swin import map_state_dict, read_torch_state_dict
from gems_jax.training.checkpointing import save_converted


def convert_timm_state_dict(model_name: str, state_dict: Mapping[str, Any],
                            **overrides) -> tuple[VisionTransformer, dict]:
  """(module, variables) with `module.apply(variables, x_nhwc)` equal to timm's `model(x_nchw)`.

  `overrides` are VisionTransformer fields (e.g. `num_classes`, `global_pool`, `dtype`).
  Raises `convert_swin.CheckpointMismatchError` naming every missing / unexpected / wrongly shaped key.
  """
  if any(key.startswith("visual.") for key in state_dict):
    raise ValueError(f"this looks like an OpenCLIP / OpenAI CLIP checkpoint (keys 'visual.*'), not a "
                     f"timm {model_name} state dict; load it with timm.create_model({model_name!r}, "
                     "pretrained=True, pretrained_cfg_overlay=dict(file=PATH)) and save its state_dict()")
  if "num_classes" not in overrides and "head.weight" in state_dict:
    overrides["num_classes"] = int(state_dict["head.weight"].shape[0])
  if overrides.get("num_classes") == 0:
    state_dict = {k: v for k, v in state_dict.items() if k not in ("head.weight", "head.bias")}
  module = create_vit(model_name, **overrides)
  return module, map_state_dict(model_name, module, state_dict)


def load_timm_checkpoint(model_name: str, path: str | os.PathLike,
                         **overrides) -> tuple[VisionTransformer, dict]:
  """`convert_timm_state_dict` on the weights of a `.safetensors` or `.pth`/`.pt`/`.bin` file."""
  return convert_timm_state_dict(model_name, read_torch_state_dict(path), **overrides)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, help="timm name, e.g. vit_large_patch14_clip_224")
  parser.add_argument("--weights", "--checkpoint", required=True,
                      help=".safetensors or .pth/.pt/.bin file (--checkpoint as in convert_swin)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--num-classes", type=int, default=None,
                      help="head size (default: from head.weight in the checkpoint; 0 drops the head)")
  args = parser.parse_args(argv)
  overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
  module, variables = load_timm_checkpoint(args.model, args.weights, **overrides)
  out = save_converted(args.out, args.model, variables, {"num_classes": module.num_classes},
                       family="vit")
  count = sum(x.size for x in jax.tree.leaves(variables))
  print(f"wrote {args.model} ({count / 1e6:.2f} M parameters, num_classes={module.num_classes}) "
        f"to {out}")


if __name__ == "__main__":
  main()
