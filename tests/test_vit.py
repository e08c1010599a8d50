"""Flax ViT against timm (small random variants of each layout), full-size layouts, the converter
(files, CLI, restore, errors) and training mode."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

import flax.traverse_util  # noqa: E402

from gems_jax.models import vit  # noqa: E402
from gems_jax.tools import convert_swin, convert_vit  # noqa: E402
from gems_jax.training import checkpointing  # noqa: E402
from random_params import random_params  # noqa: E402

CLIP, BASE, LARGE = "vit_large_patch14_clip_224", "vit_base_patch16_224", "vit_large_patch16_224"
# Small versions of the layouts: 16 patches (17 tokens), width 32, 2 blocks. timm and create_vit take
# the same keyword arguments.
SMALL_CLIP = dict(img_size=56, embed_dim=32, depth=2, num_heads=2, num_classes=5)
SMALL_VIT = dict(img_size=64, embed_dim=32, depth=2, num_heads=4, num_classes=5)
TOLERANCE = 1e-4


def _random_timm(name: str, seed: int, **kwargs) -> torch.nn.Module:
  """timm model with random weights, including the parts timm initialises to (near) constants."""
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, **kwargs).eval()
  with torch.no_grad():
    for key, param in model.named_parameters():
      if "norm" in key:
        param.add_(0.2 * torch.randn_like(param))  # LayerNorm: weight 1 +- 0.2, bias +- 0.2
      elif key.endswith("bias") or key == "cls_token":
        param.copy_(0.5 * torch.randn_like(param))
  return model


def _nhwc(x: torch.Tensor) -> jax.Array:
  return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("name,kwargs", [
    (CLIP, dict(SMALL_CLIP)),                                        # norm_pre, no patch bias, eps 1e-5
    (CLIP, dict(SMALL_CLIP, global_pool="avg")),                     # mean of patch tokens + fc_norm
    (BASE, dict(SMALL_VIT)),                                         # plain ViT: class token
    (BASE, dict(SMALL_VIT, global_pool="avg", num_classes=0)),       # features only
    (LARGE, dict(SMALL_VIT, pre_norm=True, fc_norm=True)),           # class token, then fc_norm
    (LARGE, dict(SMALL_VIT, global_pool="avg", fc_norm=False, qkv_bias=False)),  # mean after norm
], ids=["clip-token", "clip-avg", "base-token", "base-avg-features", "large-prenorm-fcnorm",
        "large-avg-nofcnorm"])
def test_parity_with_timm(name, kwargs):
  model = _random_timm(name, seed=len(kwargs), **kwargs)
  module, variables = convert_vit.convert_timm_state_dict(name, model.state_dict(), **kwargs)
  x = torch.randn(2, 3, module.img_size, module.img_size, generator=torch.Generator().manual_seed(0))
  with torch.inference_mode():
    tokens = model.forward_features(x)
    pooled = model.forward_head(tokens, pre_logits=True)
    output = model(x)
  out = jax.jit(lambda v, x: module.apply(v, x, return_features=True))(variables, _nhwc(x))
  pairs = [("tokens", out["tokens"], tokens), ("pooled", out["pooled"], pooled)]
  if module.num_classes:
    pairs.append(("logits", out["logits"], output))
  else:
    assert "logits" not in out and "head" not in variables["params"]
    pairs.append(("output", module.apply(variables, _nhwc(x)), output))
  for what, ours, theirs in pairs:
    assert ours.shape == theirs.shape, what
    error = float(np.abs(np.asarray(ours) - theirs.numpy()).max())
    assert error <= TOLERANCE, f"{name} {kwargs} {what}: max |flax - timm| = {error:.2e}"
  assert float(pooled.abs().max()) > 0.1  # the comparison is not between near-zero outputs
  assert ("norm_pre" in variables["params"]) == module.pre_norm
  assert ("bias" in variables["params"]["patch_embed"]["proj"]) == (not module.pre_norm)


@pytest.mark.parametrize("name,tokens,eps,pre_norm,millions", [
    (CLIP, 257, 1e-5, True, 303.2), (BASE, 197, 1e-6, False, 85.8), (LARGE, 197, 1e-6, False, 303.3)])
def test_full_size_layouts_match_timm(name, tokens, eps, pre_norm, millions):
  """Every parameter of the full-size model maps onto timm's state dict with the right shape
  (timm on the meta device and jax.eval_shape: nothing is allocated)."""
  timm_model = timm.create_model(name, pretrained=False, num_classes=0, device="meta")
  theirs = {k: tuple(v.shape) for k, v in timm_model.state_dict().items()}
  module = vit.create_vit(name, num_classes=0)
  assert (module.layer_norm_eps, module.pre_norm) == (timm_model.norm.eps, pre_norm)
  params = flax.traverse_util.flatten_dict(checkpointing.abstract_variables(module)["params"])
  ours = {}
  for path, leaf in params.items():
    shape = leaf.shape
    if path[-1] == "kernel":  # back to torch's layout: Linear [out, in], Conv OIHW
      shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
    ours[convert_swin.timm_key(path)] = shape
  assert ours == theirs
  assert ours["pos_embed"] == (1, tokens, module.embed_dim)
  assert abs(sum(np.prod(s) for s in ours.values()) / 1e6 - millions) < 0.1
  features = jax.eval_shape(lambda v, x: module.apply(v, x, return_features=True),
                            checkpointing.abstract_variables(module),
                            jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert features["tokens"].shape == (2, tokens, module.embed_dim)
  assert features["pooled"].shape == (2, module.embed_dim)


@pytest.fixture(scope="module")
def small_clip_state():
  """A small CLIP-layout timm state dict with a 768-wide head, like the laion2b image projection."""
  return _random_timm(CLIP, 7, **dict(SMALL_CLIP, num_classes=12)).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_files_round_trip(small_clip_state, tmp_path, suffix):
  path = tmp_path / f"weights{suffix}"
  if suffix == ".pth":
    torch.save(small_clip_state, path)
  else:
    safetensors_torch.save_file({k: v.contiguous() for k, v in small_clip_state.items()}, path)
  kwargs = {k: v for k, v in SMALL_CLIP.items() if k != "num_classes"}
  module, variables = convert_vit.load_timm_checkpoint(CLIP, path, **kwargs)
  assert module.num_classes == 12  # from head.weight
  _, direct = convert_vit.convert_timm_state_dict(CLIP, small_clip_state, **kwargs)
  jax.tree.map(np.testing.assert_array_equal, variables, direct)
  np.testing.assert_array_equal(variables["params"]["blocks_1"]["attn"]["qkv"]["kernel"],
                                small_clip_state["blocks.1.attn.qkv.weight"].numpy().T)

  checkpointing.save_converted(tmp_path / "out", CLIP, variables, {**kwargs, "num_classes": 12},
                               family="vit")
  assert not (tmp_path / "out" / checkpointing.SWIN_CONFIG).exists()
  restored_module, restored = checkpointing.restore_converted(tmp_path / "out")
  assert isinstance(restored_module, vit.VisionTransformer)
  assert (restored_module.img_size, restored_module.num_classes) == (56, 12)
  jax.tree.map(np.testing.assert_array_equal, restored, variables)


def test_cli_drops_the_head_for_features(tmp_path, capsys, monkeypatch):
  # The CLI builds a named variant as it is: register a small one for the test.
  monkeypatch.setitem(vit.VIT_VARIANTS, "vit_small_test", {**vit.VIT_VARIANTS[BASE], **SMALL_VIT})
  state = _random_timm(BASE, 3, **SMALL_VIT).state_dict()
  torch.save(state, tmp_path / "b.pth")
  convert_vit.main(["--model", "vit_small_test", "--weights", str(tmp_path / "b.pth"), "--out",
                    str(tmp_path / "out"), "--num-classes", "0"])
  assert "num_classes=0" in capsys.readouterr().out
  config = json.loads((tmp_path / "out" / "vit_config.json").read_text())
  assert config == {"model_name": "vit_small_test", "kwargs": {"num_classes": 0}}
  module, variables = checkpointing.restore_converted(tmp_path / "out")
  assert module.num_classes == 0 and module.embed_dim == 32 and "head" not in variables["params"]
  np.testing.assert_array_equal(variables["params"]["cls_token"], state["cls_token"].numpy())


def test_mismatched_state_dict_names_keys(small_clip_state):
  state = dict(small_clip_state)
  del state["blocks.1.mlp.fc2.bias"]
  state["patch_embed.proj.bias"] = torch.zeros(32)  # a plain-ViT key in a CLIP (bias-free) layout
  state["pos_embed"] = torch.zeros(1, 50, 32)  # weights for another image size
  kwargs = {k: v for k, v in SMALL_CLIP.items() if k != "num_classes"}
  with pytest.raises(convert_swin.CheckpointMismatchError) as error:
    convert_vit.convert_timm_state_dict(CLIP, state, **kwargs)
  message = str(error.value)
  assert f"does not match {CLIP}" in message
  assert "missing keys (1): blocks.1.mlp.fc2.bias" in message
  assert "unexpected keys (1): patch_embed.proj.bias" in message
  assert "pos_embed: checkpoint (1, 50, 32) (as Flax) vs model (1, 17, 32)" in message


def test_openclip_layout_gets_a_hint():
  with pytest.raises(ValueError, match=r"OpenCLIP / OpenAI CLIP checkpoint \(keys 'visual\.\*'\)"):
    convert_vit.convert_timm_state_dict(CLIP, {"visual.class_embedding": np.zeros(1024)})


@pytest.mark.parametrize("kwargs,message", [
    (dict(global_pool="max"), r"global_pool must be one of \('token', 'avg'\), got 'max'"),
    (dict(img_size=100), "img_size 100 is not divisible by patch_size 16"),
    (dict(num_heads=5), "embed_dim 768 is not divisible by 5 heads"),
])
def test_bad_configuration_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    vit.create_vit(BASE, **kwargs)


def test_unknown_variant_and_bad_input_raise():
  with pytest.raises(ValueError, match="unknown ViT variant 'vit_huge'"):
    vit.create_vit("vit_huge")
  module = vit.create_vit(BASE, **SMALL_VIT)
  with pytest.raises(ValueError, match=r"expected NHWC input \[B, 64, 64, 3\], got \(1, 3, 64, 64\)"):
    module.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)))


def test_train_mode_dropout_grads_and_bfloat16():
  small = dict(SMALL_CLIP, depth=1)
  module = vit.create_vit(CLIP, **small, drop_rate=0.1, pos_drop_rate=0.1, proj_drop_rate=0.1,
                          attn_drop_rate=0.1, drop_path_rate=0.2)
  x = jax.random.normal(jax.random.key(1), (4, 56, 56, 3))
  variables = {"params": random_params(module, x)}  # no init compile (seconds of CPU)
  labels = jnp.arange(4) % 5

  @jax.jit
  def loss_and_grad(params, rng):
    def loss_fn(p):
      logits = module.apply({"params": p}, x, train=True, rngs={"dropout": rng})
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    return jax.value_and_grad(loss_fn)(params)

  # rbg keys: threefry's dropout masks would add seconds of compile time.
  loss_a, grads = loss_and_grad(variables["params"], jax.random.key(2, impl="rbg"))
  loss_b, _ = loss_and_grad(variables["params"], jax.random.key(3, impl="rbg"))
  assert np.isfinite(loss_a) and loss_a != loss_b  # dropout draws from the 'dropout' rng
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert all(np.all(np.isfinite(g)) for _, g in leaves)
  zero = [jax.tree_util.keystr(p) for p, g in leaves if not np.any(g)]
  assert not zero, f"parameters without gradient: {zero}"

  plain = vit.create_vit(CLIP, **small)
  mixed = vit.create_vit(CLIP, **small, dtype=jnp.bfloat16)
  with_dropout, without, bf16 = jax.jit(
      lambda v, x: (module.apply(v, x), plain.apply(v, x), mixed.apply(v, x)))(variables, x)
  np.testing.assert_array_equal(with_dropout, without)  # eval mode ignores every dropout
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(bf16.astype(jnp.float32), without,
                             atol=0.05 * float(np.abs(without).max()))
