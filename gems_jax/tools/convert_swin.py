"""timm Swin checkpoint -> gems_jax Flax Swin (`gems_jax.models.swin`), as a library and a CLI.

Library:
  module, variables = load_timm_checkpoint("swin_base_patch4_window7_224", "swin_b.pth")
  logits = module.apply(variables, x_nhwc)                       # == timm_model(x_nchw), fp32 to ~1e-5
  pooled = module.apply(variables, x_nhwc, return_features=True)["pooled"]   # [B, 1024] for Swin-B
`convert_timm_state_dict(name, state_dict)` does the same from an in-memory state dict (torch tensors
or numpy arrays). The key mapping is one rule: `layers.{i}` -> `layers_{i}`, `blocks.{j}` -> `blocks_{j}`,
`head.fc` -> `head`, Linear `weight` -> transposed `kernel`, Conv `weight` (OIHW) -> `kernel` (HWIO),
LayerNorm `weight` -> `scale`. A state dict with missing or unexpected keys (or wrong shapes) is
rejected with an error listing them; timm's non-persistent buffers `relative_position_index` and
`attn_mask`, which some timm versions save, are ignored because the Flax model recomputes them.
`num_classes` follows the checkpoint's `head.fc.weight` unless given as an override.

CLI (writes an orbax checkpoint of the variables plus `swin_config.json` with the model name and kwargs):
  python -m gems_jax.tools.convert_swin --model swin_base_patch4_window7_224 --checkpoint FILE --out DIR
Restore it without torch: `module, variables = gems_jax.training.checkpointing.restore_converted(DIR)`,
which rebuilds the module from the JSON and restores `DIR/variables` onto the abstract variable tree.

torch and safetensors are imported only inside the functions that read PyTorch files. The generic
parts (`read_torch_state_dict`, `timm_key`, `map_state_dict`, `CheckpointMismatchError`) also serve
`gems_jax.tools.convert_vit`.
"""
import argparse
import os
import pathlib
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from gems_jax.models.swin import SwinTransformer, create_swin
from gems_jax.training.checkpointing import abstract_variables, save_converted

IGNORED_BUFFERS = ("relative_position_index", "attn_mask")
SWIN_RENAMES = {"head": "head.fc"}  # Flax module name -> timm module path


class CheckpointMismatchError(ValueError):
  """The state dict does not fit the model: lists missing, unexpected and wrongly shaped keys."""

  def __init__(self, model_name: str, missing: list[str], unexpected: list[str],
               bad_shapes: list[str]):
    self.missing, self.unexpected, self.bad_shapes = missing, unexpected, bad_shapes
    parts = [f"state dict does not match {model_name}:"]
    if missing:
      parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if bad_shapes:
      parts.append(f"shape mismatches ({len(bad_shapes)}): {'; '.join(bad_shapes)}")
    super().__init__("\n".join(parts))


def timm_key(path: tuple[str, ...], renames: Mapping[str, str] | None = None) -> str:
  """Flax parameter path -> timm state-dict key: `blocks_3` -> `blocks.3` (any `name_<digits>`),
  Dense/Conv `kernel` and LayerNorm `scale` -> `weight`, other names as they are unless `renames`
  maps them (Swin: `head` -> `head.fc`)."""
  renames = renames or {}
  names = []
  for name in path:
    stem, _, number = name.rpartition("_")
    if stem and number.isdigit():
      names += [stem, number]
    elif name in ("kernel", "scale"):
      names.append("weight")
    else:
      names.append(renames.get(name, name))
  return ".".join(names)


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor; .float() also handles bf16/fp16 checkpoints.
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()
  return np.asarray(value)


def _to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel" and value.ndim == 2:  # Linear [out, in] -> Dense [in, out]
    return value.T
  if path[-1] == "kernel" and value.ndim == 4:  # Conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  return value


def map_state_dict(model_name: str, module, state_dict: Mapping[str, Any],
                   renames: Mapping[str, str] | None = None) -> dict:
  """Flax variables `{'params': ...}` of `module` from a timm state dict, key by key (`timm_key`).

  Linear weights are transposed and Conv weights go from OIHW to HWIO; every other array is taken as
  it is. Raises CheckpointMismatchError naming every missing / unexpected / wrongly shaped key.
  """
  expected = flax.traverse_util.flatten_dict(abstract_variables(module)["params"])
  by_timm_key = {timm_key(path, renames): path for path in expected}

  missing = sorted(set(by_timm_key) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(by_timm_key))
  params, bad_shapes = {}, []
  for key in sorted(set(state_dict) & set(by_timm_key)):
    path = by_timm_key[key]
    value = _to_flax(path, _to_numpy(state_dict[key]))
    if value.shape != expected[path].shape:
      bad_shapes.append(f"{key}: checkpoint {tuple(value.shape)} (as Flax) vs model "
                        f"{tuple(expected[path].shape)}")
      continue
    params[path] = jnp.asarray(value, dtype=expected[path].dtype)
  if missing or unexpected or bad_shapes:
    raise CheckpointMismatchError(model_name, missing, unexpected, bad_shapes)
  return {"params": flax.traverse_util.unflatten_dict(params)}


def convert_timm_state_dict(model_name: str, state_dict: Mapping[str, Any],
                            **overrides) -> tuple[SwinTransformer, dict]:
  """(module, variables) with `module.apply(variables, x_nhwc)` equal to timm's `model(x_nchw)`.

  `overrides` are SwinTransformer fields (e.g. `num_classes`, `dtype`, `drop_path_rate`).
  Raises CheckpointMismatchError naming every missing / unexpected / wrongly shaped key.
  """
  arrays = {key: value for key, value in state_dict.items()
            if key.rpartition(".")[2] not in IGNORED_BUFFERS}
  if "num_classes" not in overrides and "head.fc.weight" in arrays:
    overrides["num_classes"] = int(arrays["head.fc.weight"].shape[0])
  module = create_swin(model_name, **overrides)
  return module, map_state_dict(model_name, module, arrays, SWIN_RENAMES)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """Tensors of a `.pth`/`.pt`/`.bin` (torch.load, weights_only=True) or `.safetensors` file.

  A checkpoint that wraps the weights as {'model': ...} or {'state_dict': ...} is unwrapped.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.suffix == ".safetensors":
    import safetensors.torch  # pylint: disable=g-import-not-at-top
    return safetensors.torch.load_file(str(path), device="cpu")
  if path.suffix not in (".pth", ".pt", ".bin"):
    raise ValueError(f"unsupported checkpoint type {path.suffix!r} for {path}; "
                     "expected .pth, .pt, .bin or .safetensors")
  import torch  # pylint: disable=g-import-not-at-top
  state = torch.load(str(path), map_location="cpu", weights_only=True)
  for wrapper in ("model", "state_dict"):
    if isinstance(state, Mapping) and set(state) == {wrapper}:
      state = state[wrapper]
  if not isinstance(state, Mapping):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
  return dict(state)


def load_timm_checkpoint(model_name: str, path: str | os.PathLike,
                         **overrides) -> tuple[SwinTransformer, dict]:
  """`convert_timm_state_dict` on the weights stored in a PyTorch/safetensors file."""
  return convert_timm_state_dict(model_name, read_torch_state_dict(path), **overrides)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, help="timm name, e.g. swin_base_patch4_window7_224")
  parser.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin or .safetensors file")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--num-classes", type=int, default=None,
                      help="head size (default: from head.fc.weight in the checkpoint)")
  args = parser.parse_args(argv)
  overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
  module, variables = load_timm_checkpoint(args.model, args.checkpoint, **overrides)
  out = save_converted(args.out, args.model, variables, {"num_classes": module.num_classes})
  count = sum(x.size for x in jax.tree.leaves(variables))
  print(f"wrote {args.model} ({count / 1e6:.2f} M parameters, num_classes={module.num_classes}) "
        f"to {out}")


if __name__ == "__main__":
  main()
