"""S3Attention against a float64 NumPy reference, plus masking, gradients, seeds and checkpoints."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.test_util import check_grads

import reference_s3attention as ref
from gems_jax.models.s3attention import (S3Attention, draw_feature_index, draw_token_order,
                                          select_landmark_tokens)

SMALL = dict(d_model=32, num_heads=4, num_segments=4, num_landmark_tokens=5,
             num_landmark_features=3)


def _random_variables(model, x, seed=0, mask=None):
  """Variables of the right structure filled with random values, without compiling `init`.

  Matrices get a 1/sqrt(fan_in) scale; vectors (biases, norm scales and offsets, running statistics)
  are moved well off their init values so swapped or ignored ones show up in the comparisons; the
  constants are fresh random landmarks, so the block must read the stored ones.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, mask)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "token_order" in name:
      return jnp.asarray(rng.permutation(leaf.shape[0]), jnp.int32)
    if "feature_index" in name:
      head_dim = model.d_model // model.num_heads
      return jnp.asarray(rng.permutation(head_dim)[:leaf.shape[0]], jnp.int32)
    if leaf.ndim >= 2:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.uniform(-1, 1, leaf.shape) / np.sqrt(fan_in), leaf.dtype)
    offset = 1.0 if ("scale" in name or "var" in name) else 0.0
    return jnp.asarray(offset + rng.uniform(-0.3, 0.3, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _inputs(b, n, c, seed=1):
  return jax.random.normal(jax.random.key(seed), (b, n, c), jnp.float32)


def _length_mask(lengths, n):
  return jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]


CONFIGS = [
    # segment_map, combine, norm, use_output_proj, qkv_bias, masked, n
    ("mod", "mean", "batch_positions", False, False, False, 12),
    ("block", "sum", "batch_positions", True, True, True, 12),
    ("mod", "sum", "layer", False, True, True, 11),
    ("block", "mean", "layer", True, False, False, 11),
]


@pytest.mark.parametrize("segment_map,combine,norm,use_output_proj,qkv_bias,masked,n", CONFIGS)
def test_eval_forward_matches_numpy_reference(segment_map, combine, norm, use_output_proj,
                                              qkv_bias, masked, n):
  model = S3Attention(**SMALL, max_len=n, segment_map=segment_map, combine=combine, norm=norm,
                      use_output_proj=use_output_proj, qkv_bias=qkv_bias, landmark_seed=3)
  x = _inputs(3, n, SMALL["d_model"])
  mask = _length_mask([n, n - 4, 3], n) if masked else None
  variables = _random_variables(model, x, mask=mask)
  y = jax.jit(model.apply)(variables, x, mask)
  expected, _ = ref.s3attention(variables, np.asarray(x), mask, num_heads=4, num_segments=4,
                                num_landmark_tokens=5, segment_map=segment_map, combine=combine,
                                norm=norm, use_output_proj=use_output_proj)
  chex.assert_shape(y, x.shape)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_train_batch_norm_matches_reference_and_updates_running_stats(masked):
  n = 10
  model = S3Attention(**SMALL, max_len=n, dropout_rate=0.0, landmark_seed=5)
  x = _inputs(4, n, SMALL["d_model"], seed=7)
  mask = _length_mask([10, 7, 7, 2], n) if masked else None
  variables = _random_variables(model, x, mask=mask)
  y, updates = jax.jit(lambda v, x, m: model.apply(v, x, m, train=True, mutable=["batch_stats"]))(
      variables, x, mask)
  expected, (mean, var) = ref.s3attention(
      variables, np.asarray(x), mask, num_heads=4, num_segments=4, num_landmark_tokens=5,
      segment_map="mod", combine="mean", norm="batch_positions", use_output_proj=False, train=True)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  old = variables["batch_stats"]["norm"]
  count = SMALL["d_model"] * np.asarray(mask if masked else np.ones((4, n), bool)).sum(0)
  want_mean = 0.9 * np.asarray(old["mean"]) + 0.1 * mean
  want_var = 0.9 * np.asarray(old["var"]) + 0.1 * var * count / (count - 1)
  new = updates["batch_stats"]["norm"]
  np.testing.assert_allclose(np.asarray(new["mean"]), want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new["var"]), want_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm,train", [("layer", False), ("batch_positions", False),
                                        ("batch_positions", True)])
def test_padding_does_not_change_real_token_outputs(norm, train):
  length, c = 16, SMALL["d_model"]
  model = S3Attention(**SMALL, max_len=length, norm=norm, dropout_rate=0.0, landmark_seed=1)
  lengths = jnp.array([9, 4, 9])
  real_part = _inputs(3, 9, c, seed=2)
  mask = _length_mask(lengths, length)
  variables = _random_variables(model, _inputs(3, length, c), mask=mask)

  @jax.jit
  def run(x, m):
    return model.apply(variables, x, m, train=train, mutable=["batch_stats"])[0]

  outputs = []
  for seed in (10, 11):  # same real tokens, different padding garbage
    garbage = 5.0 * _inputs(3, length, c, seed=seed)
    x = jnp.where(mask[..., None], jnp.pad(real_part, ((0, 0), (0, length - 9), (0, 0))), garbage)
    outputs.append(run(x, mask))
  # A shorter input is padded inside the block, so it must agree too.
  short_mask = _length_mask(lengths, 11)
  outputs.append(run(jnp.where(short_mask[..., None], jnp.pad(real_part, ((0, 0), (0, 2), (0, 0))),
                               3.0), short_mask))
  for other in outputs[1:]:
    for i, n_real in enumerate(lengths):
      np.testing.assert_allclose(np.asarray(other[i, :n_real]), np.asarray(outputs[0][i, :n_real]),
                                 rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(outputs[0][1, 4:]), 0.0)


def test_landmark_tokens_are_the_first_real_tokens_in_the_stored_order():
  order = draw_token_order(9, 20)
  mask = np.zeros((3, 20), bool)
  mask[0, 3:17:2] = True  # 7 scattered real tokens
  mask[1] = True
  mask[2, [4, 11]] = True  # fewer real tokens than landmarks
  index, valid = jax.jit(select_landmark_tokens, static_argnums=2)(order, mask, 5)
  for i in range(3):
    picked = ref.first_real_in_order(order, mask[i], 5)
    np.testing.assert_array_equal(np.asarray(index[i])[:len(picked)], picked)
    np.testing.assert_array_equal(np.asarray(valid[i]), np.arange(5) < len(picked))
  np.testing.assert_array_equal(np.asarray(index[1]), order[:5])  # no padding: authors' rule
  assert len(set(np.asarray(index[0]).tolist())) == 5


def test_gradients_match_finite_differences():
  cfg = dict(d_model=8, num_heads=2, num_segments=2, num_landmark_tokens=3,
             num_landmark_features=2, max_len=6, dropout_rate=0.0, use_output_proj=True)
  with jax.enable_x64(True):
    model = S3Attention(**cfg, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(0), (2, 6, 8), jnp.float64)
    mask = _length_mask([6, 4], 6)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a,
                             _random_variables(model, x, mask=mask))
    weights = jax.random.normal(jax.random.key(1), x.shape, jnp.float64)

    @jax.jit
    def loss(x, params):
      y, _ = model.apply({**variables, "params": params}, x, mask, train=True,
                         mutable=["batch_stats"])
      return jnp.sum(y * weights)

    check_grads(loss, (x, variables["params"]), order=1, modes=["rev"], eps=1e-6, atol=1e-6,
                rtol=1e-6)


def test_vmap_and_bfloat16_agree_with_float32():
  model = S3Attention(**SMALL, max_len=12, norm="layer")
  xs = _inputs(6, 12, SMALL["d_model"]).reshape(2, 3, 12, SMALL["d_model"])
  variables = _random_variables(model, xs[0])
  apply = jax.jit(model.apply)
  single = np.stack([np.asarray(apply(variables, x)) for x in xs])
  mapped = jax.jit(jax.vmap(lambda x: model.apply(variables, x)))(xs)
  np.testing.assert_allclose(np.asarray(mapped), single, rtol=1e-5, atol=1e-5)
  half = S3Attention(**SMALL, max_len=12, norm="layer", dtype=jnp.bfloat16)
  y16 = jax.jit(half.apply)(variables, xs[0])
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), single[0], atol=0.1)
  assert np.mean(np.abs(np.asarray(y16, np.float32) - single[0])) < 0.02


def test_landmarks_come_from_the_seed_and_dropout_from_the_rng():
  model = S3Attention(**SMALL, max_len=12, landmark_seed=4)
  x = _inputs(2, 12, SMALL["d_model"])
  init = jax.jit(model.init)
  variables = init(jax.random.key(0), x)
  chex.assert_trees_all_equal(variables["constants"], init(jax.random.key(1), x)["constants"])
  np.testing.assert_array_equal(variables["constants"]["token_order"], draw_token_order(4, 12))
  np.testing.assert_array_equal(variables["constants"]["feature_index"],
                                draw_feature_index(4, 8, 3))
  assert not np.array_equal(draw_token_order(4, 12), draw_token_order(5, 12))
  assert len(set(draw_feature_index(4, 8, 3).tolist())) == 3
  run = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                        mutable=["batch_stats"])[0])
  np.testing.assert_array_equal(run(jax.random.key(7)), run(jax.random.key(7)))
  assert not np.allclose(run(jax.random.key(7)), run(jax.random.key(8)))


def test_constants_survive_an_orbax_round_trip(tmp_path):
  model = S3Attention(**SMALL, max_len=12, landmark_seed=2)
  x = _inputs(2, 12, SMALL["d_model"])
  variables = _random_variables(model, x)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", variables)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "ckpt", variables)
  chex.assert_trees_all_equal(restored["constants"], variables["constants"])
  assert restored["constants"]["token_order"].dtype == jnp.int32
  apply = jax.jit(model.apply)
  np.testing.assert_array_equal(apply(restored, x), apply(variables, x))


def test_gems_size_parameter_count_and_pytorch_init_bounds():
  model = S3Attention(d_model=512, max_len=96)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 96, 512)))["params"]
  # Authors' block: 2,676,928 parameters, of which proj (262,656) and ln_pre/ln_post (2,048) unused.
  assert sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)) == 2_676_928 - 262_656 - 2_048
  proj = S3Attention(d_model=512, max_len=96, use_output_proj=True)
  shapes = jax.eval_shape(proj.init, jax.random.key(0), jnp.zeros((1, 96, 512)))["params"]
  assert sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)) == 2_676_928 - 2_048
  small = S3Attention(d_model=64, num_heads=8, max_len=16)
  params = jax.jit(small.init)(jax.random.key(0), jnp.zeros((1, 16, 64)))["params"]
  for name, bound in (("fourier_filter", np.sqrt(6 / 128)), ("stem_kernel", 1 / np.sqrt(384)),
                      ("stem_bias", 1 / np.sqrt(384))):
    values = np.abs(np.asarray(params[name]))
    assert values.max() <= bound and values.max() > 0.9 * bound, name


def test_variable_length_and_bad_configuration_errors():
  model = S3Attention(**SMALL, norm="layer")  # max_len=None: the init length is L
  x = _inputs(2, 12, SMALL["d_model"])
  variables = _random_variables(model, x)
  apply = jax.jit(model.apply)
  short = apply(variables, x[:, :8])
  padded = apply(variables, x, _length_mask([8, 8], 12))
  np.testing.assert_allclose(np.asarray(short), np.asarray(padded[:, :8]), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="L=12"):
    apply(variables, _inputs(2, 13, SMALL["d_model"]))
  for bad, message in ((dict(norm="instance"), "norm"),
                       (dict(segment_map="strided"), "segment_map"),
                       (dict(num_segments=5), "num_segments=5"),
                       (dict(num_landmark_features=9), "num_landmark_features=9")):
    with pytest.raises(ValueError, match=message):
      S3Attention(**{**SMALL, **bad}).init(jax.random.key(0), x)
