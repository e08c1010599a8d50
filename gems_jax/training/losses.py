"""Masked multi-task losses for GEMS (pure JAX, jit-able, sharding-exact).

Every elementary loss returns *sufficient statistics* that add up over any split of the batch:
`(sum_loss, count)` for CE / BCE / MSE, and a moment vector for CCC. A term's value is the ratio of the
global sums, so under `jax.jit` on a batch sharded over devices (or when two half-batches are combined by
adding their statistics) the result equals the single-device value over the valid elements of the global
batch. Denominators are `max(count, 1)`: a batch without any labelled element gives a term of exactly 0
with zero (finite) gradients.

Masks: an element contributes only if its example is real (`batch['valid']`, False for padding) and it is
labelled (class label >= 0, finite valence/arousal, face slot filled, at least one active situational
class). Masked-out labels are replaced by safe values *before* any arithmetic, so NaN labels never reach
the loss or its gradient. So a partially labelled clip (the dataset marks its missing valence, arousal,
situational emotion or situation with `spec.MISSING_LABELS`: NaN, all-zero multi-hot, -1) trains only
the heads whose targets it has.
"""
from collections.abc import Mapping

import jax
import jax.numpy as jnp

TASKS = ('individual_emotion', 'individual_va', 'group_emotion', 'group_category', 'valence', 'arousal',
         'situational_emotion', 'situation', 'forecast')
VA_LOSSES = ('mse', 'ccc')
SITUATIONAL_MODES = ('multilabel', 'single')
REDUCTIONS = ('masked_mean', 'authors_sum')


def default_loss_config() -> dict:
  """All task weights 1 (forecast 0), MSE for valence/arousal, multi-label situational emotion."""
  weights = {task: 1.0 for task in TASKS}
  weights['forecast'] = 0.0
  return {'weights': weights, 'va_loss': 'mse', 'situational': 'multilabel', 'reduction': 'masked_mean'}


def safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
  """`total / count`, and 0 when `count == 0` (gradients stay finite)."""
  return total / jnp.maximum(count, 1.0)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array):
  """Softmax cross-entropy with integer labels.

  Args:
    logits: float [..., C].
    labels: int [...]; any value where `mask` is False (e.g. -1) is ignored.
    mask: bool [...].
  Returns:
    (sum of the per-element losses over the mask, number of masked-in elements), float32 scalars.
  """
  safe_labels = jnp.where(mask, labels, 0).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def masked_sigmoid_bce(logits: jax.Array, targets: jax.Array, mask: jax.Array):
  """Binary cross-entropy with logits for multi-label targets (numerically stable form).

  Args:
    logits: float [..., C].
    targets: float [..., C] in {0, 1} (soft targets in [0, 1] also work).
    mask: bool [...] (per example) or [..., C] (per element).
  Returns:
    (sum over masked-in elements, number of masked-in elements); a masked example counts C elements, so the
    mean equals torch's `BCEWithLogitsLoss(reduction='mean')` on the valid subset.
  """
  logits = logits.astype(jnp.float32)
  mask = jnp.broadcast_to(mask[..., None] if mask.ndim == logits.ndim - 1 else mask, logits.shape)
  targets = jnp.where(mask, targets, 0.0).astype(jnp.float32)
  # max(x, 0) - x*z + log(1 + exp(-|x|)) == -[z log sigmoid(x) + (1-z) log sigmoid(-x)].
  bce = jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return jnp.sum(jnp.where(mask, bce, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def masked_squared_error(predictions: jax.Array, targets: jax.Array, mask: jax.Array):
  """(sum of squared errors over the mask, count). Shapes of all three arguments must broadcast."""
  targets = jnp.where(mask, targets, 0.0)
  squared = jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32))
  mask = jnp.broadcast_to(mask, squared.shape)
  return jnp.sum(jnp.where(mask, squared, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def concordance_moments(predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Additive statistics for CCC: float32 [6] = (n, Σp, Σt, Σp², Σt², Σpt) over masked-in elements.

  Raw (uncentred) sums are what make the statistic additive across shards; in float32 they are accurate
  to ~1e-6 in CCC for targets on [-1, 1] or [0, 1] (and on the authors' early 0-999 scale).
  """
  mask = mask.astype(jnp.float32)
  p = jnp.where(mask > 0, predictions, 0.0).astype(jnp.float32)
  t = jnp.where(mask > 0, targets, 0.0).astype(jnp.float32)
  return jnp.stack([jnp.sum(mask), jnp.sum(p * mask), jnp.sum(t * mask), jnp.sum(p * p * mask),
                    jnp.sum(t * t * mask), jnp.sum(p * t * mask)])


def concordance_from_moments(moments: jax.Array) -> jax.Array:
  """Lin's CCC = 2 cov / (var_p + var_t + (mean_p - mean_t)²), population moments; 0 if undefined."""
  n, sp, st, spp, stt, spt = (moments[i] for i in range(6))
  inv_n = 1.0 / jnp.maximum(n, 1.0)
  mean_p, mean_t = sp * inv_n, st * inv_n
  var_p = jnp.maximum(spp * inv_n - mean_p**2, 0.0)
  var_t = jnp.maximum(stt * inv_n - mean_t**2, 0.0)
  cov = spt * inv_n - mean_p * mean_t
  denominator = var_p + var_t + (mean_p - mean_t)**2
  defined = denominator > 0.0
  return jnp.where(defined, 2.0 * cov / jnp.where(defined, denominator, 1.0), 0.0)


def ccc_loss_from_moments(moments: jax.Array) -> jax.Array:
  """1 - CCC, and 0 when no element is labelled (so an empty batch adds nothing)."""
  return jnp.where(moments[0] > 0, 1.0 - concordance_from_moments(moments), 0.0)


def ccc_loss(predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - CCC over the masked-in elements of the (global) batch."""
  return ccc_loss_from_moments(concordance_moments(predictions, targets, mask))


def _regression_term(predictions, targets, mask, va_loss):
  if va_loss == 'ccc':
    return ccc_loss(predictions, targets, mask)
  return safe_mean(*masked_squared_error(predictions, targets, mask))


def _require(mapping, key, what):
  if key not in mapping:
    raise KeyError(f'gems_losses: {what} has no key {key!r} (keys: {sorted(mapping)})')
  return mapping[key]


def _check_config(loss_config):
  weights = _require(loss_config, 'weights', 'loss_config')
  unknown = sorted(set(weights.keys()) - set(TASKS))
  missing = sorted(set(TASKS) - set(weights.keys()))
  if unknown or missing:
    raise ValueError(f'loss_config.weights: unknown tasks {unknown}, missing tasks {missing}; '
                     f'expected exactly {list(TASKS)}')
  for key, allowed in (('va_loss', VA_LOSSES), ('situational', SITUATIONAL_MODES),
                       ('reduction', REDUCTIONS)):
    value = _require(loss_config, key, 'loss_config')
    if value not in allowed:
      raise ValueError(f'loss_config.{key}={value!r}; expected one of {allowed}')
  return weights


def _task_terms(outputs, batch, task, va_loss, situational):
  """The unweighted mean loss(es) of one task as {term_name: scalar}."""
  valid = _require(batch, 'valid', 'batch').astype(bool)
  label = lambda key: _require(batch, key, 'batch')
  output = lambda key: _require(outputs, key, 'outputs')
  if task in ('individual_emotion', 'individual_va'):
    face_mask = valid[:, None, None] & label('face_mask').astype(bool)
    if task == 'individual_emotion':
      labels = label('individual_emotion')
      return {task: safe_mean(*masked_cross_entropy(output(task), labels, face_mask & (labels >= 0)))}
    terms = {}
    for key in ('individual_valence', 'individual_arousal'):
      targets = label(key)
      terms[key] = _regression_term(output(key), targets, face_mask & jnp.isfinite(targets), va_loss)
    return terms
  if task in ('group_emotion', 'group_category', 'situation'):
    labels = label(task)
    return {task: safe_mean(*masked_cross_entropy(output(task), labels, valid & (labels >= 0)))}
  if task in ('valence', 'arousal'):
    targets = label(task)
    return {task: _regression_term(output(task), targets, valid & jnp.isfinite(targets), va_loss)}
  if task == 'situational_emotion':
    multi_hot = label(task)
    labelled = valid & jnp.any(multi_hot > 0, axis=-1)
    if situational == 'multilabel':
      return {task: safe_mean(*masked_sigmoid_bce(output(task), multi_hot, labelled))}
    first_active = jnp.argmax(multi_hot > 0, axis=-1)
    return {task: safe_mean(*masked_cross_entropy(output(task), first_active, labelled))}
  # forecast: the model returns its forecast and the (broadcastable) features it forecasts.
  forecast = output('forecast')
  target = jax.lax.stop_gradient(output('forecast_target'))
  example_mask = valid.reshape(valid.shape + (1,) * (forecast.ndim - 1))
  return {task: safe_mean(*masked_squared_error(forecast, target, example_mask))}


def _has_outputs(outputs, task):
  keys = {'individual_va': ('individual_valence', 'individual_arousal'),
          'forecast': ('forecast', 'forecast_target')}.get(task, (task,))
  return all(key in outputs for key in keys)


def gems_losses(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], loss_config):
  """Weighted multi-task loss of one (global) batch.

  Args:
    outputs: model outputs (batch b, steps T, faces K): 'individual_emotion' [b,T,K,9],
      'individual_valence'/'individual_arousal' [b,T,K], 'group_emotion' [b,9], 'group_category' [b,3],
      'valence'/'arousal' [b], 'situational_emotion' [b,10], 'situation' [b,10]; optionally 'forecast'
      [b,...] with 'forecast_target' broadcastable to it (the target gets `stop_gradient`).
    batch: labels as in the schema in `gems_jax/data/spec.py` plus `valid` [b].
    loss_config: mapping (dict or ConfigDict) with
      'weights': {task: float} for every task in `TASKS` ('individual_va' weighs both individual V and A);
      'va_loss': 'mse' | 'ccc' (group- and face-level valence/arousal);
      'situational': 'multilabel' (sigmoid BCE on the multi-hot) | 'single' (softmax CE against the first
        active class, the authors' choice);
      'reduction': 'masked_mean' -> total = Σ weight·term; 'authors_sum' -> total = Σ term over the tasks
        whose weight is > 0 (the authors' unweighted sum of per-term means; labels are still masked, which
        changes nothing on fully labelled data without padding, the authors' setting).
  Returns:
    (total, terms): scalar float32, and {term_name: unweighted mean loss} for every task whose head is in
    `outputs` (reported even at weight 0). A task with weight > 0 whose head is missing raises KeyError.
  """
  weights = _check_config(loss_config)
  terms, total = {}, jnp.zeros((), jnp.float32)
  for task in TASKS:
    weight = float(weights[task])
    if weight <= 0.0 and not _has_outputs(outputs, task):
      continue
    task_terms = _task_terms(outputs, batch, task, loss_config['va_loss'], loss_config['situational'])
    terms.update(task_terms)
    if weight > 0.0:
      scale = 1.0 if loss_config['reduction'] == 'authors_sum' else weight
      total = total + scale * sum(task_terms.values())
  return total, terms
