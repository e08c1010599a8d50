"""The GEMS module at model level (configs/gems.py:runlocal, cached face embeddings).

Four fusion variants: S3Attention or dense attention, each with and without the Autoformer
AutoCorrelation block. Checks shapes, padding invariance, gradients, dropout, the authors' last-step
pooling and the Fourier forecast head against a NumPy reference of gems_reference.md §3.6. The
pooling-only ablation (attention='none') has no temporal block and cannot see the order of steps.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import gems as gems_config
from gems_jax.models.gems import GEMS, FourierForecast, sinusoidal_positions

B, K, E, P, DT = 3, 3, 6, 3, 5  # clips, face slots, face embedding, text parts, text width
CLIP_KEYS = ("group_emotion", "group_category", "valence", "arousal", "situational_emotion",
             "situation")
VARIANTS = {"s3": ("s3", False), "dense": ("dense", False), "s3+autocorrelation": ("s3", True),
            "dense+autocorrelation": ("dense", True)}
# Autoformer's correlation is circular over the padded length (autocorrelation.py docstring), so
# appending padded steps changes the real steps' features: a known limitation, reported.
AUTOCORR_XFAIL = pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="AutoCorrelation is circular over the padded length and top_k = int(ln L) depends on it")


def model_config(arg: str = "runlocal", **fusion) -> ml_collections.FrozenConfigDict:
  """The `model` section of configs/gems.py plus num_steps / token_dim, filled as
  gems_jax.tasks.gems.GemsTask.create_model (formerly train.create_model) fills them.

  Two blocks instead of runlocal's one, so that 'each block gets a gradient' means something.
  """
  config = gems_config.get_config(arg)
  cfg = ml_collections.ConfigDict(config.model.to_dict())
  cfg.fusion.num_layers = 2
  for key, value in fusion.items():
    cfg.fusion[key] = value
  cfg.num_steps = config.input.num_steps
  cfg.token_dim = E + P * DT
  return ml_collections.FrozenConfigDict(cfg)


def variant_config(name: str, **fusion) -> ml_collections.FrozenConfigDict:
  attention, autocorrelation = VARIANTS[name]
  return model_config(f"runlocal,attention={attention}", autocorrelation=autocorrelation, **fusion)


def make_batch(lengths, num_steps: int, seed: int = 0) -> dict:
  """A cached-embedding batch: clip i has `lengths[i]` real steps (a prefix), the rest padded."""
  rng = np.random.default_rng(seed)
  b = len(lengths)
  step_mask = np.arange(num_steps)[None] < np.asarray(lengths)[:, None]
  face_mask = (rng.random((b, num_steps, K)) < 0.6) & step_mask[..., None]
  face_mask[..., 0] = step_mask  # every real step has a face
  faces = rng.normal(size=(b, num_steps, K, E)).astype(np.float32) * face_mask[..., None]
  text_mask = np.ones((b, P), bool)
  text_mask[0, -1] = False
  return {"face_embedding": jnp.asarray(faces), "face_mask": jnp.asarray(face_mask),
          "step_mask": jnp.asarray(step_mask),
          "text_embedding": jnp.asarray(rng.normal(size=(b, P, DT)).astype(np.float32)),
          "text_mask": jnp.asarray(text_mask)}


def append_padding(batch: dict, num_steps: int) -> dict:
  """The same clips with padded steps appended (step/face masks False, zero faces)."""
  out = dict(batch)
  for key in ("face_embedding", "face_mask", "step_mask"):
    widths = [(0, 0)] * batch[key].ndim
    widths[1] = (0, num_steps - batch[key].shape[1])
    out[key] = jnp.pad(batch[key], widths)
  return out


def scramble_padding(batch: dict, seed: int = 1) -> dict:
  """Garbage faces (x1000) and random face masks in the padded steps; real steps untouched."""
  rng = np.random.default_rng(seed)
  pad = ~np.asarray(batch["step_mask"])
  faces = np.asarray(batch["face_embedding"])
  garbage = 1e3 * rng.normal(size=faces.shape).astype(np.float32)
  face_mask = np.where(pad[..., None], rng.random(pad.shape + (K,)) < 0.5, batch["face_mask"])
  return dict(batch, face_embedding=jnp.asarray(np.where(pad[..., None, None], garbage, faces)),
              face_mask=jnp.asarray(face_mask))


@functools.lru_cache(maxsize=None)
def build(cfg: ml_collections.FrozenConfigDict):
  """(model, variables, jitted apply) for a config; init on a full-length batch."""
  model = GEMS(cfg)
  steps = cfg.num_steps + int(cfg.heads.forecast)  # + the forecast target step, if any
  # An 'rbg' key halves the compile time of init on CPU (threefry is unrolled per parameter).
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), make_batch([steps, 4, 2], steps))
  apply = jax.jit(model.apply, static_argnames=("train", "capture_intermediates"))
  return model, variables, apply


def assert_clip_outputs_close(a: dict, b: dict, atol: float = 1e-5):
  for key in CLIP_KEYS:
    np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=0, atol=atol,
                               err_msg=key)


def assert_padding_invariant(cfg, short_len: int = 5, lengths=(5, 3, 1), seed: int = 0):
  """Appending padded steps, then scrambling them, leaves every clip-level output unchanged."""
  _, variables, apply = build(cfg)
  short = make_batch(lengths, short_len, seed)
  padded = append_padding(short, cfg.num_steps)
  ref = apply(variables, short)
  assert_clip_outputs_close(apply(variables, padded), ref)
  assert_clip_outputs_close(apply(variables, scramble_padding(padded)), ref)


def assert_padded_content_ignored(cfg, lengths=(8, 5, 2), seed: int = 0):
  """Changing what padded steps hold leaves every clip-level output unchanged."""
  _, variables, apply = build(cfg)
  batch = make_batch(lengths, cfg.num_steps, seed)
  assert_clip_outputs_close(apply(variables, scramble_padding(batch)), apply(variables, batch))


def block_names(cfg) -> list[str]:
  fu = cfg.fusion
  names = [f"{'s3' if fu.attention == 's3' else 'dense'}_{i}" for i in range(fu.num_layers)]
  return names + (["autoformer"] if fu.autocorrelation else [])


# ------------------------------------------------------------------------------ the 4 variants.
@pytest.mark.parametrize("name", VARIANTS)
def test_output_shapes_and_dtypes(name):
  cfg = variant_config(name)
  _, variables, apply = build(cfg)
  t = cfg.num_steps
  out = apply(variables, make_batch([t, 5, 1], t))
  expected = {"individual_emotion": (B, t, K, 9), "individual_valence": (B, t, K),
              "individual_arousal": (B, t, K), "group_emotion": (B, 9), "group_category": (B, 3),
              "valence": (B,), "arousal": (B,), "situational_emotion": (B, 10),
              "situation": (B, 10)}
  assert set(out) == set(expected)
  chex.assert_shape([out[k] for k in expected], list(expected.values()))
  chex.assert_type(list(out.values()), jnp.float32)
  chex.assert_tree_all_finite(out)
  assert set(variables["params"]) >= set(block_names(cfg))


@pytest.mark.parametrize("name", [
    "s3", "dense", pytest.param("s3+autocorrelation", marks=AUTOCORR_XFAIL),
    pytest.param("dense+autocorrelation", marks=AUTOCORR_XFAIL)])
def test_appended_padding_does_not_change_outputs(name):
  # seed 2: a batch where the autocorrelation variants differ clearly (> 1e-5) on CPU.
  assert_padding_invariant(variant_config(name), seed=2)


@pytest.mark.parametrize("name", VARIANTS)
def test_padded_step_content_does_not_change_outputs(name):
  assert_padded_content_ignored(variant_config(name))


def test_padding_checks_catch_a_model_that_averages_all_steps():
  """Sanity: without the step mask the model pools over padded steps; both checks must fail."""
  cfg = variant_config("s3", use_mask=False)
  with pytest.raises(AssertionError):
    assert_padding_invariant(cfg)
  with pytest.raises(AssertionError):
    assert_padded_content_ignored(cfg)


def test_pooling_only_variant_has_no_temporal_block_and_ignores_step_order():
  """attention='none': no attention or AutoCorrelation parameters; reversing the order of the real
  steps leaves the clip-level outputs unchanged (it changes them with S3Attention)."""
  cfg = model_config("runlocal,attention=none")
  _, variables, apply = build(cfg)
  assert set(variables["params"]) == {"face_branch", "embed"} | {
      f"head_layers_{head}" for head in CLIP_KEYS}
  assert "constants" not in variables  # S3's landmarks live there.
  t = cfg.num_steps
  batch = make_batch([t, 5, 2], t)
  out = apply(variables, batch)
  chex.assert_shape([out["group_emotion"], out["arousal"]], [(B, 9), (B,)])
  chex.assert_tree_all_finite(out)
  reversed_batch = dict(batch)
  for key in ("face_embedding", "face_mask"):  # Reverse each clip's real prefix, keep the padding.
    x = np.asarray(batch[key]).copy()
    for i, length in enumerate([t, 5, 2]):
      x[i, :length] = x[i, :length][::-1]
    reversed_batch[key] = jnp.asarray(x)
  assert_clip_outputs_close(apply(variables, reversed_batch), out)
  _, s3_variables, s3_apply = build(variant_config("s3"))
  with pytest.raises(AssertionError):
    assert_clip_outputs_close(s3_apply(s3_variables, reversed_batch), s3_apply(s3_variables, batch))
  with pytest.raises(ValueError, match="autocorrelation"):
    build(model_config("runlocal,attention=none", autocorrelation=True))
  with pytest.raises(ValueError, match="attention"):
    gems_config.get_config("attention=lstm")


def loss_fn(apply, variables, batch, params, keys=None):
  """A fixed random linear functional of the chosen outputs (all of them by default)."""
  out = apply({**variables, "params": params}, batch)
  total = 0.0
  for i, key in enumerate(sorted(keys or out)):
    weights = jnp.cos(0.7 * jnp.arange(out[key].size) + i).reshape(out[key].shape)  # no RNG: cheap
    total = total + jnp.sum(out[key] * weights)
  return total


def zero_grad_leaves(grads, names) -> list[str]:
  """Paths of the leaves under params[name] whose gradient is identically zero."""
  bad = []
  for name in names:
    for path, g in jax.tree_util.tree_flatten_with_path(grads[name])[0]:
      if not np.any(np.asarray(g)):
        bad.append(name + jax.tree_util.keystr(path))
  return bad


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_finite_and_every_block_used(name):
  cfg = variant_config(name)
  _, variables, apply = build(cfg)
  batch = make_batch([cfg.num_steps, 5, 2], cfg.num_steps)
  grads = jax.jit(jax.grad(functools.partial(loss_fn, apply, variables, batch)))(
      variables["params"])
  chex.assert_trees_all_equal_shapes(grads, variables["params"])
  chex.assert_tree_all_finite(grads)
  names = block_names(cfg)
  assert all(n in grads for n in names), (names, list(grads))
  assert zero_grad_leaves(grads, names) == []
  assert zero_grad_leaves(grads, list(grads)) == []  # every trainable leaf is used


def test_zero_grad_check_catches_an_unused_block():
  """Sanity: a loss on the per-face outputs only never reaches the attention blocks."""
  cfg = variant_config("s3")
  _, variables, apply = build(cfg)
  batch = make_batch([cfg.num_steps, 5, 2], cfg.num_steps)
  grads = jax.jit(jax.grad(functools.partial(loss_fn, apply, variables, batch,
                                             keys=("individual_emotion",))))(variables["params"])
  assert len(zero_grad_leaves(grads, block_names(cfg))) > 0


@pytest.mark.parametrize("name", VARIANTS)
def test_train_mode_with_dropout(name):
  cfg = variant_config(name)
  _, variables, apply = build(cfg)
  batch = make_batch([cfg.num_steps, 5, 2], cfg.num_steps)
  evaluated = apply(variables, batch)
  runs = [apply(variables, b, train=True, rngs={"dropout": jax.random.key(s, impl="rbg")})
          for b, s in ((batch, 1), (batch, 2), (scramble_padding(batch), 1))]
  for out in runs:
    chex.assert_trees_all_equal_shapes(out, evaluated)
    chex.assert_tree_all_finite(out)
  # Dropout is active: train differs from eval and from another dropout key.
  assert not np.allclose(runs[0]["group_emotion"], evaluated["group_emotion"], atol=1e-6)
  assert not np.allclose(runs[0]["group_emotion"], runs[1]["group_emotion"], atol=1e-6)
  assert_clip_outputs_close(runs[2], runs[0])  # same key: padded content still ignored


# ------------------------------------------------------------------ the authors' pooling.
def test_authors_last_step_pooling():
  """variant=authors: pooling='last', use_mask=False (plus BatchNorm over positions, forecast).

  With the forecast head a batch carries N+1 steps; the last one is only the forecast target.
  """
  cfg = model_config("runlocal,variant=authors")
  assert (cfg.fusion.pooling, cfg.fusion.use_mask, cfg.heads.forecast) == ("last", False, True)
  _, variables, apply = build(cfg)
  n, d = cfg.num_steps, cfg.fusion.d_model
  batch = make_batch([n + 1, 5, 2], n + 1)
  out, state = apply(variables, batch, capture_intermediates=True)
  chex.assert_shape([out["forecast"], out["forecast_target"], out["group_emotion"]],
                    [(B, n + 1, cfg.token_dim), (B, 1, cfg.token_dim), (B, 9)])
  chex.assert_tree_all_finite(out)
  faces, fmask = np.asarray(batch["face_embedding"][:, -1]), np.asarray(batch["face_mask"][:, -1])
  frame = (faces * fmask[..., None]).sum(1) / np.maximum(fmask.sum(1), 1)[:, None]
  text = np.asarray(batch["text_embedding"] * batch["text_mask"][..., None]).reshape(B, -1)
  np.testing.assert_allclose(out["forecast_target"][:, 0], np.concatenate([frame, text], -1),
                             rtol=1e-6, atol=1e-6)

  # The heads read h[:, -1]: h = embed + positions + the residual blocks (eval mode), N steps.
  inter = state["intermediates"]
  h = inter["embed"]["__call__"][0] + sinusoidal_positions(n, d)[None]
  for i in range(cfg.fusion.num_layers):
    h = h + inter[f"s3_{i}"]["__call__"][0]
  chex.assert_shape(h, (B, n, d))
  head = variables["params"]["head_layers_group_emotion"]
  np.testing.assert_allclose(out["group_emotion"], h[:, -1] @ head["kernel"] + head["bias"],
                             rtol=1e-5, atol=1e-5)
  proj = variables["params"]["forecast_head"]["projection"]
  p = np.asarray(h, np.float64) @ np.asarray(proj["kernel"], np.float64) + np.asarray(proj["bias"])
  np.testing.assert_allclose(out["forecast"], ref_fourier_forecast(p), rtol=0, atol=1e-5)

  # Changing only the last input step (a padded one for clips 1 and 2) changes every clip.
  changed = dict(batch, face_embedding=batch["face_embedding"].at[:, n - 1].set(1.0),
                 face_mask=batch["face_mask"].at[:, n - 1].set(True))
  changed = apply(variables, changed)
  for key in CLIP_KEYS:
    diff = np.abs(np.asarray(changed[key] - out[key])).reshape(B, -1).max(axis=1)
    assert np.all(diff > 1e-4), (key, diff)


# ------------------------------------------------------------ the Fourier forecast head.
def ref_fourier_forecast(p: np.ndarray, pi: float = np.pi) -> np.ndarray:
  """§3.6: DC + 1 harmonic of p [b,N,F] along time, a_k = |X_k|/N, t = 0..N; loops, float64."""
  n = p.shape[1]
  spectrum = np.fft.fft(p, axis=1)
  out = np.zeros((p.shape[0], n + 1, p.shape[2]))
  for k, f in ((0, 0.0), (1, 1.0 / n), (n - 1, -1.0 / n)):
    amplitude, phase = np.abs(spectrum[:, k]) / n, np.angle(spectrum[:, k])
    for t in range(n + 1):
      out[:, t] += amplitude * np.cos(2 * pi * f * t + phase)
  return out


@pytest.mark.parametrize("n", [8, 7])
def test_fourier_forecast_matches_reference(n):
  head = FourierForecast(features=5)
  h = 3.0 * jax.random.normal(jax.random.key(n), (2, n, 4))
  params = jax.jit(head.init)(jax.random.key(1), h)
  out = np.asarray(jax.jit(head.apply)(params, h))
  proj = params["params"]["projection"]
  p = np.asarray(h, np.float64) @ np.asarray(proj["kernel"], np.float64) + np.asarray(proj["bias"])
  chex.assert_shape(out, (2, n + 1, 5))
  np.testing.assert_allclose(out, ref_fourier_forecast(p), rtol=0, atol=1e-5)
  np.testing.assert_allclose(out[:, n], out[:, 0], rtol=0, atol=1e-5)  # periodic extension
  # Sanity: the reference resolves the authors' 3.1415 against pi at this tolerance.
  assert np.abs(ref_fourier_forecast(p, pi=3.1415) - out).max() > 1e-5
