"""timm -> Flax Swin conversion: numerical parity with timm, buffers, errors, files and the CLI."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

from gems_jax.models import swin  # noqa: E402
from gems_jax.tools import convert_swin  # noqa: E402
from gems_jax.training import checkpointing  # noqa: E402

SMALL = dict(img_size=64, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
             num_classes=7)
TOLERANCE = 1e-4


def _random_timm(name: str, seed: int, **kwargs) -> torch.nn.Module:
  """timm model with random weights, including the parts timm initialises to constants."""
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, **kwargs).eval()
  with torch.no_grad():
    for key, param in model.named_parameters():
      if "norm" in key:
        param.add_(0.2 * torch.randn_like(param))  # LayerNorm: weight 1 +- 0.2, bias +- 0.2
      elif key.endswith("bias") or "relative_position_bias_table" in key:
        param.copy_(0.5 * torch.randn_like(param))
  return model


def _assert_parity(name: str, batch: int, seed: int, **kwargs):
  model = _random_timm(name, seed, **kwargs)
  module, variables = convert_swin.convert_timm_state_dict(name, model.state_dict(), **kwargs)
  x = torch.randn(batch, 3, module.img_size, module.img_size, generator=torch.Generator().manual_seed(seed))
  with torch.inference_mode():
    logits = model(x).numpy()
    feature_map, stages = model.forward_intermediates(x)
    pooled = model.forward_head(feature_map, pre_logits=True).numpy()
  out = jax.jit(lambda v, x: module.apply(v, x, return_features=True))(
      variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  pairs = [("logits", out["logits"], logits), ("pooled", out["pooled"], pooled),
           ("feature_map", out["feature_map"], feature_map.numpy())]
  pairs += [(f"stage {i}", ours, theirs.permute(0, 2, 3, 1).numpy())
            for i, (ours, theirs) in enumerate(zip(out["stages"], stages))]
  assert len(out["stages"]) == len(stages) == len(module.depths)
  for what, ours, theirs in pairs:
    assert ours.shape == theirs.shape, what
    error = float(np.abs(np.asarray(ours) - theirs).max())
    assert error <= TOLERANCE, f"{name} {what}: max |flax - timm| = {error:.2e}"
  assert np.abs(logits).max() > 0.1  # the comparison is not between near-zero outputs


def test_parity_swin_tiny():
  _assert_parity("swin_tiny_patch4_window7_224", batch=2, seed=0)


def test_parity_swin_base():
  _assert_parity("swin_base_patch4_window7_224", batch=1, seed=1)


def test_parity_small_custom_geometry():
  # Non-standard input, window 4, two stages (the GEMS CPU configuration).
  _assert_parity("swin_tiny_patch4_window7_224", batch=2, seed=2, **SMALL)


def test_constants_match_timm_buffers_at_384_window_12():
  # A narrow 384 px / window-12 model: the same geometry as swin_*_patch4_window12_384.
  model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=384,
                            window_size=12, embed_dim=16, num_heads=(1, 2, 4, 8))
  ours = swin.SwinTransformer(img_size=384, window_size=12, embed_dim=16, num_heads=(1, 2, 4, 8))
  for stage, geometry in zip(model.layers, ours.geometry):
    for j, block in enumerate(stage.blocks):
      assert tuple(block.window_size) == geometry.window
      np.testing.assert_array_equal(block.attn.relative_position_index.numpy(),
                                    swin.relative_position_index(geometry.window))
      if j % 2 and any(geometry.shift):
        assert tuple(block.shift_size) == geometry.shift
        np.testing.assert_array_equal(
            block.attn_mask.numpy(),
            swin.shifted_window_mask(geometry.resolution, geometry.window, geometry.shift))
      else:
        assert block.attn_mask is None
  assert ours.geometry[0].window == (12, 12) and ours.geometry[-1].shift == (0, 0)


@pytest.fixture(scope="module")
def small_state_dict():
  name = "swin_tiny_patch4_window7_224"
  return _random_timm(name, 3, **SMALL).state_dict()


def test_mismatched_state_dict_names_keys(small_state_dict):
  name = "swin_tiny_patch4_window7_224"
  state = dict(small_state_dict)
  del state["layers.1.blocks.0.mlp.fc2.bias"]
  del state["norm.weight"]
  state["layers.0.blocks.0.attn.extra.weight"] = torch.zeros(3)
  state["layers.1.downsample.reduction.weight"] = torch.zeros(64, 99)
  with pytest.raises(convert_swin.CheckpointMismatchError) as error:
    convert_swin.convert_timm_state_dict(name, state, **SMALL)
  message = str(error.value)
  assert "missing keys (2): layers.1.blocks.0.mlp.fc2.bias, norm.weight" in message
  assert "unexpected keys (1): layers.0.blocks.0.attn.extra.weight" in message
  assert "layers.1.downsample.reduction.weight: checkpoint (99, 64)" in message
  assert error.value.missing == ["layers.1.blocks.0.mlp.fc2.bias", "norm.weight"]


def test_persisted_buffers_are_ignored_and_head_size_inferred(small_state_dict):
  name = "swin_tiny_patch4_window7_224"
  state = dict(small_state_dict)
  state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
  state["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
  kwargs = {k: v for k, v in SMALL.items() if k != "num_classes"}
  module, variables = convert_swin.convert_timm_state_dict(name, state, **kwargs)
  assert module.num_classes == 7
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"],
                                state["head.fc.weight"].numpy().T)
  np.testing.assert_array_equal(variables["params"]["patch_embed"]["proj"]["kernel"],
                                state["patch_embed.proj.weight"].numpy().transpose(2, 3, 1, 0))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_files_and_cli_round_trip(small_state_dict, tmp_path, suffix):
  name = "swin_tiny_patch4_window7_224"
  path = tmp_path / f"weights{suffix}"
  if suffix == ".pth":
    torch.save({"model": small_state_dict}, path)  # wrapped as many training scripts save it
  else:
    safetensors_torch.save_file({k: v.contiguous() for k, v in small_state_dict.items()}, path)
  kwargs = {k: v for k, v in SMALL.items() if k != "num_classes"}
  module, variables = convert_swin.load_timm_checkpoint(name, path, **kwargs)
  _, direct = convert_swin.convert_timm_state_dict(name, small_state_dict, **kwargs)
  jax.tree.map(np.testing.assert_array_equal, variables, direct)

  out_dir = tmp_path / "converted"
  checkpointing.save_converted(out_dir, name, variables, {**kwargs, "num_classes": 7})
  config = json.loads((out_dir / checkpointing.SWIN_CONFIG).read_text())
  assert config == {"model_name": name, "kwargs": {**kwargs, "depths": [2, 2], "num_heads": [2, 4],
                                                   "num_classes": 7}}
  restored_module, restored = checkpointing.restore_converted(out_dir)
  assert restored_module.num_classes == module.num_classes
  jax.tree.map(np.testing.assert_array_equal, restored, variables)


def test_cli_writes_orbax_checkpoint(tmp_path, capsys):
  # The CLI builds the named variant as is; use the real Swin-T layout with a random state dict.
  name = "swin_tiny_patch4_window7_224"
  state = _random_timm(name, 4, num_classes=3).state_dict()
  torch.save(state, tmp_path / "t.pth")
  convert_swin.main(["--model", name, "--checkpoint", str(tmp_path / "t.pth"),
                     "--out", str(tmp_path / "out")])
  assert "num_classes=3" in capsys.readouterr().out
  module, variables = checkpointing.restore_converted(tmp_path / "out")
  assert module.num_classes == 3 and module.embed_dim == 96
  np.testing.assert_array_equal(variables["params"]["layers_2"]["blocks_5"]["attn"]["qkv"]["kernel"],
                                state["layers.2.blocks.5.attn.qkv.weight"].numpy().T)


def test_bad_files_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pth"):
    convert_swin.load_timm_checkpoint("swin_tiny_patch4_window7_224", tmp_path / "missing.pth")
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(ValueError, match="unsupported checkpoint type '.npz'"):
    convert_swin.load_timm_checkpoint("swin_tiny_patch4_window7_224", tmp_path / "weights.npz")
