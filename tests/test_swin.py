"""Flax Swin: geometry constants against independent references, shapes, errors, training mode."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gems_jax.models import swin

TINY = dict(img_size=64, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
            num_classes=5)


def _reference_relative_index(wh, ww):
  """Swin paper: the bias of (query i, key j) is B_hat[dy + wh - 1, dx + ww - 1], dy/dx = i - j."""
  n = wh * ww
  index = np.zeros((n, n), np.int64)
  for qy in range(wh):
    for qx in range(ww):
      for ky in range(wh):
        for kx in range(ww):
          row = (qy - ky + wh - 1) * (2 * ww - 1) + (qx - kx + ww - 1)
          index[qy * ww + qx, ky * ww + kx] = row
  return index


def _reference_shift_mask(height, width, wh, ww, sh, sw):
  """Tokens of a shifted window may attend to each other only if they were neighbours before the
  cyclic shift: a token at rolled position r came from the far border iff r >= H - sh (same for W)."""
  windows = []
  for wy in range(height // wh):
    for wx in range(width // ww):
      coords = [(wy * wh + dy, wx * ww + dx) for dy in range(wh) for dx in range(ww)]
      wrapped = [(r >= height - sh, c >= width - sw) for r, c in coords]
      mask = np.zeros((len(coords), len(coords)), np.float32)
      for i, a in enumerate(wrapped):
        for j, b in enumerate(wrapped):
          if a != b:
            mask[i, j] = -100.0
      windows.append(mask)
  return np.stack(windows)


@pytest.mark.parametrize("window", [(7, 7), (12, 12), (4, 4), (3, 5)])
def test_relative_position_index_matches_definition(window):
  index = swin.relative_position_index(window)
  np.testing.assert_array_equal(index, _reference_relative_index(*window))
  assert index.dtype == np.int32


@pytest.mark.parametrize("resolution,window,shift", [
    ((56, 56), (7, 7), (3, 3)), ((14, 14), (7, 7), (3, 3)), ((48, 48), (12, 12), (6, 6)),
    ((16, 8), (4, 4), (2, 2)), ((12, 8), (4, 4), (2, 0))])
def test_shifted_window_mask_matches_definition(resolution, window, shift):
  mask = swin.shifted_window_mask(resolution, window, shift)
  np.testing.assert_array_equal(mask, _reference_shift_mask(*resolution, *window, *shift))
  # Only the last window row and column mix regions; every other window is unmasked.
  cols = resolution[1] // window[1]
  interior = [w for w in range(mask.shape[0])
              if w // cols < resolution[0] // window[0] - 1 and w % cols < cols - 1]
  assert not mask[interior].any()


def test_window_partition_order_and_inverse():
  x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
  windows = swin.window_partition(x, (4, 3))
  chex.assert_shape(windows, (2, 8, 12, 3))
  # Window w = row-major (window row, window col); token n = row-major inside the window.
  for w, (wy, wx) in enumerate((a, b) for a in range(2) for b in range(4)):
    for n, (dy, dx) in enumerate((a, b) for a in range(4) for b in range(3)):
      np.testing.assert_array_equal(windows[1, w, n], x[1, wy * 4 + dy, wx * 3 + dx])
  np.testing.assert_array_equal(swin.window_reverse(windows, (4, 3), (8, 12)), x)


@pytest.mark.parametrize("name,resolutions,windows,shifts,num_features", [
    ("swin_base_patch4_window7_224", (56, 28, 14, 7), (7, 7, 7, 7), (3, 3, 3, 0), 1024),
    ("swin_base_patch4_window12_384", (96, 48, 24, 12), (12, 12, 12, 12), (6, 6, 6, 0), 1024),
    ("swin_large_patch4_window12_384", (96, 48, 24, 12), (12, 12, 12, 12), (6, 6, 6, 0), 1536),
    ("swin_tiny_patch4_window7_224", (56, 28, 14, 7), (7, 7, 7, 7), (3, 3, 3, 0), 768)])
def test_variant_geometry(name, resolutions, windows, shifts, num_features):
  model = swin.create_swin(name)
  assert [g.resolution[0] for g in model.geometry] == list(resolutions)
  assert [g.window[0] for g in model.geometry] == list(windows)
  assert [g.shift[0] for g in model.geometry] == list(shifts)
  assert model.num_features == num_features
  first = model.geometry[0]
  n = first.window[0] ** 2
  assert swin.shifted_window_mask(first.resolution, first.window, first.shift).shape == (
      (first.resolution[0] // first.window[0]) ** 2, n, n)
  index = swin.relative_position_index(first.window)
  assert index.shape == (n, n) and index.max() == (2 * first.window[0] - 1) ** 2 - 1


def test_window_clipped_to_small_grid():
  # 96 px / patch 4 = 24 tokens; stage 1 (12x12) fits window 12 exactly and stage 2 (6x6) is
  # smaller: both get the whole grid as window and no shift, as in timm.
  geometry = swin.stage_geometry(96, 4, 3, window_size=12)
  assert geometry[0] == swin.StageGeometry((24, 24), (12, 12), (6, 6))
  assert geometry[1] == swin.StageGeometry((12, 12), (12, 12), (0, 0))
  assert geometry[2] == swin.StageGeometry((6, 6), (6, 6), (0, 0))


@pytest.mark.parametrize("kwargs,message", [
    (dict(img_size=100, window_size=7), r"token grid \(25, 25\) is not divisible by window \(7, 7\)"),
    (dict(img_size=90), r"img_size \(90, 90\) is not divisible by patch_size 4"),
    (dict(img_size=40, window_size=5, depths=(2, 2, 2), num_heads=(1, 2, 4)),
     r"stage 2: patch merging needs an even token grid, got \(5, 5\)"),
    (dict(num_heads=(3, 6, 5, 24)), r"stage 2: width 384 is not divisible by 5 heads"),
])
def test_bad_geometry_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    swin.SwinTransformer(**kwargs)


def test_unknown_variant_and_bad_input_raise():
  with pytest.raises(ValueError, match="unknown Swin variant 'swin_huge'"):
    swin.create_swin("swin_huge")
  model = swin.SwinTransformer(**TINY)
  with pytest.raises(ValueError, match=r"expected NHWC input \[B, 64, 64, 3\], got \(1, 3, 64, 64\)"):
    model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)))


@pytest.fixture(scope="module")
def tiny():
  """A 2-stage model with every dropout on, its variables and a batch (one jitted init)."""
  model = swin.SwinTransformer(**TINY, drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1,
                               drop_path_rate=0.3)
  x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  return model, variables, x


def test_tiny_features_and_init(tiny):
  model, variables, x = tiny
  out = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
  chex.assert_shape(out["stages"], [(4, 16, 16, 32), (4, 8, 8, 64)])
  chex.assert_shape([out["feature_map"], out["pooled"], out["logits"]],
                    [(4, 8, 8, 64), (4, 64), (4, 5)])
  np.testing.assert_allclose(out["pooled"], out["feature_map"].mean(axis=(1, 2)), atol=1e-6)

  params = variables["params"]
  fc1 = params["layers_1"]["blocks_0"]["mlp"]["fc1"]
  assert abs(float(jnp.std(fc1["kernel"])) - 0.02) < 0.002
  assert not jnp.any(fc1["bias"])
  table = params["layers_0"]["blocks_1"]["attn"]["relative_position_bias_table"]
  chex.assert_shape(table, (49, 2))
  assert 0.01 < float(jnp.std(table)) < 0.03 and float(jnp.abs(table).max()) <= 0.046


def test_eval_ignores_dropout_and_bfloat16_is_close(tiny):
  model, variables, x = tiny
  plain = swin.SwinTransformer(**TINY, drop_path_rate=0.0)
  mixed = swin.SwinTransformer(**TINY, drop_path_rate=0.0, dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(
      jax.eval_shape(mixed.init, jax.random.key(0), x)))
  with_dropout, without, bf16 = jax.jit(
      lambda v, x: (model.apply(v, x), plain.apply(v, x), mixed.apply(v, x)))(variables, x)
  np.testing.assert_array_equal(with_dropout, without)
  assert bf16.dtype == jnp.bfloat16
  scale = float(np.abs(without).max())
  np.testing.assert_allclose(bf16.astype(jnp.float32), without, atol=0.05 * scale)


def test_tiny_train_mode_grad_under_jit(tiny):
  model, variables, x = tiny
  labels = jnp.arange(4) % 5

  @jax.jit
  def loss_and_grad(params, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, x, train=True, rngs={"dropout": rng})
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    return jax.value_and_grad(loss_fn)(params)

  loss_a, grads = loss_and_grad(variables["params"], jax.random.key(2))
  loss_b, _ = loss_and_grad(variables["params"], jax.random.key(3))
  assert np.isfinite(loss_a) and loss_a != loss_b  # dropout draws from the 'dropout' rng
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  for path, grad in leaves:
    assert np.all(np.isfinite(grad)), path
  zero = [jax.tree_util.keystr(p) for p, g in leaves if not np.any(g)]
  assert not zero, f"parameters without gradient: {zero}"


def test_headless_model_returns_pooled_features():
  model = swin.SwinTransformer(img_size=16, window_size=4, embed_dim=8, depths=(1,), num_heads=(2,),
                               num_classes=0)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  assert "head" not in variables["params"]
  pooled, out = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, return_features=True)))(
      variables, x)
  chex.assert_shape(pooled, (2, 8))
  assert "logits" not in out
  np.testing.assert_array_equal(pooled, out["pooled"])


def test_shift_permutation_reorders_windows_like_a_cyclic_shift():
  resolution, window, shift = (12, 8), (4, 4), (2, 2)
  grid = np.arange(2 * 12 * 8 * 3).reshape(2, 12, 8, 3)
  unshifted = np.asarray(swin.window_partition(jnp.asarray(grid), window)).reshape(2, -1, 3)
  to_shifted, from_shifted = swin.shift_permutation(resolution, window, shift)
  # Reference from the definition: roll the grid by -shift, then cut windows.
  rolled = np.roll(grid, (-2, -2), axis=(1, 2))
  expected = np.stack([rolled[:, wy * 4 + dy, wx * 4 + dx] for wy in range(3) for wx in range(2)
                       for dy in range(4) for dx in range(4)], axis=1)
  np.testing.assert_array_equal(unshifted[:, to_shifted], expected)
  np.testing.assert_array_equal(unshifted[:, to_shifted][:, from_shifted], unshifted)


def test_drop_path_drops_whole_samples():
  geometry = swin.stage_geometry(32, 4, 1, 4)[0]
  x = jax.random.normal(jax.random.key(0), (32, 4, 16, 16))  # [B, nW, N, C] for an 8x8 grid
  sometimes = swin.SwinBlock(num_heads=2, geometry=geometry, shifted=True, drop_path_rate=0.5)
  always = swin.SwinBlock(num_heads=2, geometry=geometry, shifted=True, drop_path_rate=1.0)
  variables = jax.jit(lambda k: sometimes.init(k, x, train=False))(jax.random.key(1))
  rngs = {"dropout": jax.random.key(2)}
  y, y_always = jax.jit(lambda v: (sometimes.apply(v, x, train=True, rngs=rngs),
                                   always.apply(v, x, train=True, rngs=rngs)))(variables)
  untouched = np.all(np.asarray(y) == np.asarray(x), axis=(1, 2, 3))
  assert 0 < untouched.sum() < 32  # both branches dropped for some samples, not for all
  np.testing.assert_array_equal(y_always, x)
