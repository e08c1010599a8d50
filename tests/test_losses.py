"""Tests for gems_jax.training.losses: masked losses against optax/NumPy references, masking, sharding."""
import json

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gems_jax.data import spec as spec_lib
from gems_jax.training import losses

B, T, K = 8, 3, 2


def make_example(seed, num_padding=2):
  """Random model outputs and a batch following the data contract, with padding and unlabelled faces."""
  rng = np.random.default_rng(seed)
  outputs = {
      'individual_emotion': rng.normal(size=(B, T, K, 9)).astype(np.float32),
      'individual_valence': rng.normal(size=(B, T, K)).astype(np.float32),
      'individual_arousal': rng.normal(size=(B, T, K)).astype(np.float32),
      'group_emotion': rng.normal(size=(B, 9)).astype(np.float32),
      'group_category': rng.normal(size=(B, 3)).astype(np.float32),
      'valence': rng.normal(size=B).astype(np.float32),
      'arousal': rng.normal(size=B).astype(np.float32),
      'situational_emotion': rng.normal(size=(B, 10)).astype(np.float32),
      'situation': rng.normal(size=(B, 10)).astype(np.float32),
  }
  face_mask = rng.random((B, T, K)) < 0.7
  individual_emotion = np.where(face_mask & (rng.random((B, T, K)) < 0.8), rng.integers(0, 9, (B, T, K)), -1)
  labelled_va = face_mask & (rng.random((B, T, K)) < 0.8)
  situational = (rng.random((B, 10)) < 0.25).astype(np.float32)
  situational[np.arange(B), rng.integers(0, 10, B)] = 1.0
  batch = {
      'valid': np.arange(B) < B - num_padding,
      'face_mask': face_mask,
      'individual_emotion': individual_emotion.astype(np.int32),
      'individual_valence': np.where(labelled_va, rng.uniform(-1, 1, (B, T, K)), np.nan).astype(np.float32),
      'individual_arousal': np.where(labelled_va, rng.uniform(-1, 1, (B, T, K)), np.nan).astype(np.float32),
      'group_emotion': rng.integers(0, 9, B).astype(np.int32),
      'group_category': rng.integers(0, 3, B).astype(np.int32),
      'valence': rng.uniform(-1, 1, B).astype(np.float32),
      'arousal': rng.uniform(-1, 1, B).astype(np.float32),
      'situational_emotion': situational,
      'situation': rng.integers(0, 10, B).astype(np.int32),
  }
  return outputs, batch


_JITTED = {}


def run_losses(outputs, batch, config):
  """gems_losses under jit, one compiled function per distinct config (not op-by-op dispatch)."""
  key = json.dumps(config, sort_keys=True)
  if key not in _JITTED:
    frozen = json.loads(key)
    _JITTED[key] = jax.jit(lambda o, b: losses.gems_losses(o, b, frozen))
  return _JITTED[key](outputs, batch)


def reference_ccc(t, p):
  t, p = np.asarray(t, np.float64), np.asarray(p, np.float64)
  cov = np.cov(t, p, bias=True)
  return 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (t.mean() - p.mean())**2)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_masked_cross_entropy_matches_optax_on_valid_subset(seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(16, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, 16)
  mask = rng.random(16) < 0.6
  total, count = jax.jit(losses.masked_cross_entropy)(logits, np.where(mask, labels, -1), mask)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits[mask], labels[mask])
  assert count == mask.sum()
  np.testing.assert_allclose(total, np.sum(expected), rtol=1e-5)


@pytest.mark.parametrize('seed', [0, 1])
def test_masked_bce_and_mse_match_references(seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(12, 10)).astype(np.float32) * 4
  targets = (rng.random((12, 10)) < 0.3).astype(np.float32)
  mask = rng.random(12) < 0.5
  total, count = jax.jit(losses.masked_sigmoid_bce)(logits, targets, mask)
  expected = optax.sigmoid_binary_cross_entropy(logits[mask], targets[mask])
  assert count == mask.sum() * 10
  np.testing.assert_allclose(total, np.sum(expected), rtol=1e-5)
  predictions, values = rng.normal(size=12), rng.normal(size=12)
  total, count = jax.jit(losses.masked_squared_error)(predictions, np.where(mask, values, np.nan), mask)
  np.testing.assert_allclose(total / count, np.mean((predictions[mask] - values[mask])**2), rtol=1e-5)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_ccc_loss_is_one_minus_ccc(seed):
  rng = np.random.default_rng(seed)
  t = rng.uniform(-1, 1, 20)
  p = 0.6 * t + rng.normal(scale=0.3, size=20) + 0.1
  mask = np.arange(20) < 15
  loss = jax.jit(losses.ccc_loss)(p.astype(np.float32), np.where(mask, t, np.nan).astype(np.float32), mask)
  np.testing.assert_allclose(loss, 1 - reference_ccc(t[mask], p[mask]), atol=1e-5)


def test_sharded_halves_combine_to_whole_batch():
  outputs, batch = make_example(3)
  logits, labels = outputs['individual_emotion'], batch['individual_emotion']
  mask = batch['face_mask'] & (labels >= 0) & batch['valid'][:, None, None]
  halves = [slice(0, B // 2), slice(B // 2, B)]
  cross_entropy = jax.jit(losses.masked_cross_entropy)
  whole = cross_entropy(logits, labels, mask)
  parts = [cross_entropy(logits[h], labels[h], mask[h]) for h in halves]
  np.testing.assert_allclose(sum(p[0] for p in parts), whole[0], rtol=1e-6)
  assert sum(p[1] for p in parts) == whole[1]
  p, t, m = outputs['valence'], batch['valence'], batch['valid']
  moments = sum(jax.jit(losses.concordance_moments)(p[h], t[h], m[h]) for h in halves)
  np.testing.assert_allclose(losses.ccc_loss_from_moments(moments), jax.jit(losses.ccc_loss)(p, t, m), rtol=1e-5)


def test_padding_and_unlabelled_entries_do_not_change_the_loss():
  outputs, batch = make_example(4)
  config = losses.default_loss_config()
  config['va_loss'] = 'ccc'
  total, terms = run_losses(outputs, batch, config)
  garbage_outputs = {k: v.copy() for k, v in outputs.items()}
  garbage_batch = {k: v.copy() for k, v in batch.items()}
  padding = ~batch['valid']
  for key in ('group_emotion', 'group_category', 'valence', 'arousal', 'situational_emotion', 'situation'):
    garbage_outputs[key][padding] = 1e3
  garbage_batch['group_emotion'][padding] = -1
  garbage_batch['valence'][padding] = np.nan
  faces_ignored = ~(batch['face_mask'] & (batch['individual_emotion'] >= 0)) | padding[:, None, None]
  garbage_outputs['individual_emotion'][faces_ignored] = -7e2
  garbage_batch['individual_emotion'][~batch['face_mask'] | padding[:, None, None]] = 5
  va_ignored = ~np.isfinite(batch['individual_valence'])
  garbage_outputs['individual_valence'][va_ignored] = 50.0
  garbage_total, garbage_terms = run_losses(garbage_outputs, garbage_batch, config)
  np.testing.assert_allclose(garbage_total, total, rtol=1e-6)
  for key, value in terms.items():
    np.testing.assert_allclose(garbage_terms[key], value, rtol=1e-6, err_msg=key)


@pytest.mark.parametrize('va_loss,situational', [('mse', 'multilabel'), ('ccc', 'single')])
def test_missing_clip_labels_contribute_nothing_and_present_ones_count(va_loss, situational):
  """Partially labelled clips carry spec.MISSING_LABELS (NaN V/A, all-zero situational, situation -1):
  whatever the model outputs for a missing target, the loss and its gradient are the same; present
  targets of the same clips still count."""
  outputs, batch = make_example(12, num_padding=0)
  missing = {'valence': [0, 3], 'arousal': [1], 'situational_emotion': [2, 3], 'situation': [0, 4]}
  for key, rows in missing.items():
    batch[key][rows] = spec_lib.MISSING_LABELS[key]
  config = losses.default_loss_config()
  config.update(va_loss=va_loss, situational=situational)

  def with_garbage(value):
    garbage = {k: v.copy() for k, v in outputs.items()}
    for key, rows in missing.items():
      garbage[key][rows] = value
    return run_losses(garbage, batch, config)

  (total, terms), (other_total, other_terms) = with_garbage(1e3), with_garbage(-37.0)
  assert np.isfinite(total)
  np.testing.assert_allclose(other_total, total, rtol=1e-6)
  for key, value in terms.items():
    np.testing.assert_allclose(other_terms[key], value, rtol=1e-6, err_msg=key)
  present = np.setdiff1d(np.arange(B), missing['situation'])
  np.testing.assert_allclose(terms['situation'], optax.softmax_cross_entropy_with_integer_labels(
      outputs['situation'][present], batch['situation'][present]).mean(), rtol=1e-5)
  grads = jax.jit(jax.grad(lambda o: losses.gems_losses(o, batch, config)[0]))(outputs)
  for key, rows in missing.items():
    grad = np.asarray(grads[key])
    assert not grad[rows].any() and grad[np.setdiff1d(np.arange(B), rows)].any(), key
  for key in missing:  # A present target of a partially labelled clip still counts.
    row = 3 if key == 'situation' else 4  # Rows 3 and 4 each miss some target, not this one.
    moved = {k: v.copy() for k, v in batch.items()}
    moved[key][row] = (moved[key][row] + 1) % 10 if key == 'situation' else 1 - moved[key][row]
    assert run_losses(outputs, moved, config)[1][key] != terms[key], key


def test_gems_losses_terms_weights_and_reductions():
  outputs, batch = make_example(5)
  valid = batch['valid']
  config = losses.default_loss_config()
  config['weights'].update(group_emotion=2.0, valence=0.5)
  total, terms = run_losses(outputs, batch, config)
  expected_group = optax.softmax_cross_entropy_with_integer_labels(
      outputs['group_emotion'][valid], batch['group_emotion'][valid]).mean()
  np.testing.assert_allclose(terms['group_emotion'], expected_group, rtol=1e-5)
  np.testing.assert_allclose(
      terms['valence'], np.mean((outputs['valence'][valid] - batch['valence'][valid])**2), rtol=1e-5)
  expected_bce = optax.sigmoid_binary_cross_entropy(
      outputs['situational_emotion'][valid], batch['situational_emotion'][valid]).mean()
  np.testing.assert_allclose(terms['situational_emotion'], expected_bce, rtol=1e-5)
  weights = dict(config['weights'], individual_valence=1.0, individual_arousal=1.0)
  np.testing.assert_allclose(total, sum(weights[k] * v for k, v in terms.items()), rtol=1e-5)
  assert set(terms) == {'individual_emotion', 'individual_valence', 'individual_arousal', 'group_emotion',
                        'group_category', 'valence', 'arousal', 'situational_emotion', 'situation'}
  config['reduction'] = 'authors_sum'
  config['weights']['individual_emotion'] = 0.0
  authors_total, authors_terms = run_losses(outputs, batch, config)
  expected = sum(v for k, v in authors_terms.items() if k != 'individual_emotion')
  np.testing.assert_allclose(authors_total, expected, rtol=1e-5)


def test_single_situational_uses_first_active_class():
  outputs, batch = make_example(6)
  config = losses.default_loss_config()
  config['situational'] = 'single'
  _, terms = run_losses(outputs, batch, config)
  valid = batch['valid']
  first = np.argmax(batch['situational_emotion'] > 0, axis=-1)
  expected = optax.softmax_cross_entropy_with_integer_labels(outputs['situational_emotion'][valid],
                                                             first[valid]).mean()
  np.testing.assert_allclose(terms['situational_emotion'], expected, rtol=1e-5)


def test_forecast_term_is_masked_mse_with_broadcast_target():
  outputs, batch = make_example(7)
  rng = np.random.default_rng(7)
  outputs['forecast'] = rng.normal(size=(B, 4, 6)).astype(np.float32)
  outputs['forecast_target'] = rng.normal(size=(B, 1, 6)).astype(np.float32)
  config = losses.default_loss_config()
  config['weights']['forecast'] = 1.0
  _, terms = run_losses(outputs, batch, config)
  valid = batch['valid']
  expected = np.mean((outputs['forecast'][valid] - outputs['forecast_target'][valid])**2)
  np.testing.assert_allclose(terms['forecast'], expected, rtol=1e-5)
  del outputs['forecast_target']
  with pytest.raises(KeyError, match='forecast_target'):
    run_losses(outputs, batch, config)


@pytest.mark.parametrize('va_loss', ['mse', 'ccc'])
def test_gradients_finite_and_loss_zero_without_labels(va_loss):
  outputs, batch = make_example(8, num_padding=B)
  config = losses.default_loss_config()
  config['va_loss'] = va_loss

  def total_loss(outs):
    return losses.gems_losses(outs, batch, config)[0]

  value, grads = jax.jit(jax.value_and_grad(total_loss))(outputs)
  assert value == 0.0
  for key, grad in grads.items():
    assert np.all(np.isfinite(grad)) and not np.any(grad), key


def test_gradients_finite_with_nan_labels_on_unlabelled_faces():
  outputs, batch = make_example(9)
  config = losses.default_loss_config()
  config['va_loss'] = 'ccc'
  grads = jax.jit(jax.grad(lambda outs: losses.gems_losses(outs, batch, config)[0]))(outputs)
  for key, grad in grads.items():
    assert np.all(np.isfinite(grad)), key
  unlabelled = ~np.isfinite(batch['individual_valence'])
  assert not np.any(np.asarray(grads['individual_valence'])[unlabelled])


def test_jit_on_sharded_global_batch_equals_single_device():
  outputs, batch = make_example(10, num_padding=3)
  config = losses.default_loss_config()
  config['va_loss'] = 'ccc'
  total, terms = run_losses(outputs, batch, config)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec('data')))
  sharded_total, sharded_terms = run_losses(jax.tree.map(shard, outputs), jax.tree.map(shard, batch), config)
  np.testing.assert_allclose(sharded_total, total, rtol=1e-5)
  for key, value in terms.items():
    np.testing.assert_allclose(sharded_terms[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_bad_config_raises_clear_errors():
  outputs, batch = make_example(11)
  config = losses.default_loss_config()
  config['va_loss'] = 'mae'
  with pytest.raises(ValueError, match="va_loss='mae'"):
    run_losses(outputs, batch, config)
  config = losses.default_loss_config()
  config['weights']['grup_emotion'] = 1.0
  with pytest.raises(ValueError, match='grup_emotion'):
    run_losses(outputs, batch, config)
  config = losses.default_loss_config()
  del outputs['situation']
  with pytest.raises(KeyError, match='situation'):
    run_losses(outputs, batch, config)
