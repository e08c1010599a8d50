"""Tests for gems_jax.evaluation.metrics against scikit-learn, independent formulas and simulation."""
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from gems_jax.evaluation import metrics

SEEDS = [0, 1, 2, 3]


@pytest.fixture(autouse=True)
def _quiet_sklearn():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # sklearn's ill-defined-metric warnings are part of what we test.
    yield


def single_label_data(seed, n=200, num_classes=9):
  """Skewed labels with class 3 absent from y_true (it may still be predicted) and class 7 never predicted."""
  rng = np.random.default_rng(seed)
  prior = rng.dirichlet(np.ones(num_classes))
  prior[3] = 0.0
  y_true = rng.choice(num_classes, n, p=prior / prior.sum())
  y_pred = np.where(rng.random(n) < 0.4, y_true, rng.integers(0, num_classes, n))
  y_pred[y_pred == 7] = 0
  return y_true, y_pred


def test_uar_ignores_predicted_classes_absent_from_the_truth():
  # Class 2 is predicted but never true: the standard UAR is the mean recall of classes 0 and 1.
  y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
  expected = skm.balanced_accuracy_score(y_true, y_pred)
  assert expected == pytest.approx(0.75)
  assert metrics.evaluate_single_label(y_true, y_pred, 3)['model']['uar'] == pytest.approx(expected)


@pytest.mark.parametrize('seed', SEEDS)
def test_single_label_metrics_match_sklearn(seed):
  y_true, y_pred = single_label_data(seed)
  result = metrics.evaluate_single_label(y_true, y_pred, 9)
  np.testing.assert_array_equal(result['confusion_matrix'], skm.confusion_matrix(y_true, y_pred, labels=range(9)))
  assert result['model']['accuracy'] == pytest.approx(skm.accuracy_score(y_true, y_pred))
  assert result['model']['macro_f1'] == pytest.approx(skm.f1_score(y_true, y_pred, average='macro'))
  assert result['model']['uar'] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
  np.testing.assert_array_equal(result['class_counts'], np.bincount(y_true, minlength=9))


@pytest.mark.parametrize('seed', SEEDS[:2])
def test_single_label_baselines(seed):
  y_true, _ = single_label_data(seed, n=40)  # small n: the exact F1 expectation differs from its limit
  baselines = metrics.single_label_baselines(y_true, 9)
  majority = np.full_like(y_true, np.bincount(y_true).argmax())
  assert baselines['majority']['accuracy'] == pytest.approx(skm.accuracy_score(y_true, majority))
  assert baselines['majority']['macro_f1'] == pytest.approx(skm.f1_score(y_true, majority, average='macro'))
  assert baselines['majority']['uar'] == pytest.approx(skm.recall_score(y_true, majority, average='macro'))
  prior = np.bincount(y_true, minlength=9) / len(y_true)
  assert baselines['chance']['accuracy'] == pytest.approx(np.sum(prior**2))
  assert baselines['chance']['uar'] == pytest.approx(1 / np.count_nonzero(prior))
  # Exact expected macro-F1 of the stratified guess vs a (vectorised) simulation of it.
  rng = np.random.default_rng(100 + seed)
  draws = 20000
  guesses = rng.choice(9, (draws, len(y_true)), p=prior)
  present = np.flatnonzero(prior)
  tp = np.stack([np.sum((guesses == c) & (y_true == c), 1) for c in present], 1)
  predicted = np.stack([np.sum(guesses == c, 1) for c in present], 1)
  f1 = np.mean(2 * tp / (np.bincount(y_true)[present] + predicted), 1)
  assert baselines['chance']['macro_f1'] == pytest.approx(np.mean(f1), abs=5 * np.std(f1) / np.sqrt(draws))


def multilabel_data(seed, n=120, num_classes=10):
  """Multi-hot labels (class 9 never positive), scores with ties, some classes predicted never."""
  rng = np.random.default_rng(seed)
  prevalence = np.linspace(0.03, 0.6, num_classes)
  prevalence[9] = 0.0
  y_true = (rng.random((n, num_classes)) < prevalence).astype(int)
  scores = np.round(rng.random((n, num_classes)) * 0.7 + 0.3 * y_true, 1)
  return y_true, scores


@pytest.mark.parametrize('seed', SEEDS)
def test_multilabel_metrics_match_sklearn(seed):
  y_true, scores = multilabel_data(seed)
  result = metrics.multilabel_metrics(y_true, scores, threshold=0.5)
  with_positives = [c for c in range(10) if y_true[:, c].any()]
  for c in with_positives:
    assert metrics.average_precision(y_true[:, c], scores[:, c]) == pytest.approx(
        skm.average_precision_score(y_true[:, c], scores[:, c]))
  expected_map = np.mean([skm.average_precision_score(y_true[:, c], scores[:, c]) for c in with_positives])
  assert result['mAP'] == pytest.approx(expected_map)
  predicted = (scores >= 0.5).astype(int)
  assert result['micro_f1'] == pytest.approx(skm.f1_score(y_true, predicted, average='micro'))
  assert result['macro_f1'] == pytest.approx(skm.f1_score(y_true, predicted, average='macro'))


def test_multilabel_baselines():
  y_true, _ = multilabel_data(5, n=30)
  baselines = metrics.multilabel_baselines(y_true)
  prevalence = y_true.mean(0)
  constant = np.broadcast_to(prevalence, y_true.shape)
  expected_map = np.mean([skm.average_precision_score(y_true[:, c], constant[:, c])
                          for c in range(10) if y_true[:, c].any()])
  assert baselines['chance']['mAP'] == pytest.approx(expected_map)
  assert baselines['majority']['mAP'] == pytest.approx(expected_map)
  majority = np.broadcast_to(prevalence > 0.5, y_true.shape).astype(int)
  assert baselines['majority']['micro_f1'] == pytest.approx(skm.f1_score(y_true, majority, average='micro'))
  assert baselines['majority']['macro_f1'] == pytest.approx(skm.f1_score(y_true, majority, average='macro'))
  rng = np.random.default_rng(7)
  draws = 20000
  guesses = rng.random((draws,) + y_true.shape) < prevalence
  tp = np.sum(guesses & (y_true > 0), 1)
  denominator = y_true.sum(0) + guesses.sum(1)
  micro = 2 * tp.sum(1) / denominator.sum(1)
  macro = np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0), 1)
  for name, values in (('micro_f1', micro), ('macro_f1', macro)):
    assert baselines['chance'][name] == pytest.approx(np.mean(values), abs=5 * np.std(values) / np.sqrt(draws))


@pytest.mark.parametrize('seed', SEEDS)
def test_regression_metrics(seed):
  rng = np.random.default_rng(seed)
  t = rng.uniform(0, 1, 80)
  p = 0.5 * t + rng.normal(scale=0.2, size=80) + 0.2
  result = metrics.evaluate_regression(t, p, train_mean=0.3)
  cov = np.cov(t, p, bias=True)
  expected_ccc = 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (t.mean() - p.mean())**2)
  assert result['model']['ccc'] == pytest.approx(expected_ccc)
  assert result['model']['mse'] == pytest.approx(skm.mean_squared_error(t, p))
  assert result['model']['mae'] == pytest.approx(skm.mean_absolute_error(t, p))
  assert result['model']['pearson_r'] == pytest.approx(np.corrcoef(t, p)[0, 1])
  split_mean, train_mean = result['baselines']['split_mean'], result['baselines']['train_mean']
  assert split_mean['ccc'] == 0.0 and split_mean['mse'] == pytest.approx(t.var())
  assert split_mean['mae'] == pytest.approx(skm.mean_absolute_error(t, np.full_like(t, t.mean())))
  assert train_mean['mse'] == pytest.approx(t.var() + (t.mean() - 0.3)**2)


def make_batches(seed, num_batches=3, b=6, steps=2, faces=3):
  """Output/batch dicts for every head; the last batch is partial (padding rows with garbage labels)."""
  rng = np.random.default_rng(seed)
  batches = []
  for i in range(num_batches):
    situational = (rng.random((b, 10)) < 0.3).astype(np.float32)
    situational[0] = 0.0  # an example without any situational class: dropped
    face_mask = rng.random((b, steps, faces)) < 0.7
    labelled = face_mask & (rng.random(face_mask.shape) < 0.8)
    batch = {
        'valid': np.arange(b) < (b - 2 if i == num_batches - 1 else b),
        'group_emotion': rng.integers(0, 9, b), 'group_category': rng.integers(0, 3, b),
        'situation': rng.integers(0, 10, b), 'situational_emotion': situational,
        'valence': rng.uniform(-1, 1, b), 'arousal': rng.uniform(-1, 1, b), 'face_mask': face_mask,
        'individual_emotion': np.where(labelled, rng.integers(0, 9, face_mask.shape), -1),
        'individual_valence': np.where(labelled, rng.uniform(-1, 1, face_mask.shape), np.nan),
        'individual_arousal': np.where(labelled, rng.uniform(-1, 1, face_mask.shape), np.nan),
    }
    outputs = {
        'group_emotion': rng.normal(size=(b, 9)), 'group_category': rng.normal(size=(b, 3)),
        'situation': rng.normal(size=(b, 10)), 'situational_emotion': rng.normal(size=(b, 10)),
        'valence': rng.normal(size=b), 'arousal': rng.normal(size=b),
        'individual_emotion': rng.normal(size=(b, steps, faces, 9)),
        'individual_valence': rng.normal(size=(b, steps, faces)),
        'individual_arousal': rng.normal(size=(b, steps, faces)),
    }
    batches.append((outputs, batch))
  return batches


def _concat(batches, source, key, mask_fn):
  return np.concatenate([pair[source][key][mask_fn(pair[1])] for pair in batches])


@pytest.mark.parametrize('seed', SEEDS[:2])
def test_accumulator_equals_one_shot_evaluation(seed):
  batches = make_batches(seed)
  accumulator = metrics.MetricsAccumulator(train_means={'valence': 0.1})
  for outputs, batch in batches:
    accumulator.update(outputs, batch)
  result = accumulator.compute()
  valid = lambda batch: batch['valid']
  group = metrics.evaluate_single_label(_concat(batches, 1, 'group_emotion', valid),
                                        _concat(batches, 0, 'group_emotion', valid).argmax(-1), 9)
  assert result['group_emotion']['model'] == group['model']
  np.testing.assert_array_equal(result['group_emotion']['confusion_matrix'], group['confusion_matrix'])
  labelled_situational = lambda batch: batch['valid'] & batch['situational_emotion'].any(-1)
  situational = metrics.evaluate_multilabel(_concat(batches, 1, 'situational_emotion', labelled_situational),
                                            _concat(batches, 0, 'situational_emotion', labelled_situational),
                                            threshold=0.0)
  assert result['situational_emotion']['model'] == situational['model']
  valence = metrics.evaluate_regression(_concat(batches, 1, 'valence', valid),
                                        _concat(batches, 0, 'valence', valid), train_mean=0.1)
  assert result['valence']['model'] == pytest.approx(valence['model'])
  assert 'train_mean' in result['valence']['baselines']
  faces = lambda batch: batch['valid'][:, None, None] & (batch['individual_emotion'] >= 0)
  individual = metrics.evaluate_single_label(_concat(batches, 1, 'individual_emotion', faces),
                                             _concat(batches, 0, 'individual_emotion', faces).argmax(-1), 9)
  assert result['individual_emotion']['model'] == individual['model']
  assert result['individual_valence']['n'] == sum(
      np.count_nonzero(b['valid'][:, None, None] & np.isfinite(b['individual_valence'])) for _, b in batches)
  # One big batch gives the same numbers as three small ones.
  merged = ({k: np.concatenate([o[k] for o, _ in batches]) for k in batches[0][0]},
            {k: np.concatenate([b[k] for _, b in batches]) for k in batches[0][1]})
  one_shot = metrics.MetricsAccumulator(train_means={'valence': 0.1})
  one_shot.update(*merged)
  assert metrics.format_table(one_shot.compute()) == metrics.format_table(result)


def test_accumulator_ignores_padding_contents():
  batches = make_batches(9)
  clean, dirty = metrics.MetricsAccumulator(), metrics.MetricsAccumulator()
  for outputs, batch in batches:
    clean.update(outputs, batch)
    padding = ~batch['valid']
    dirty_outputs = {k: v.copy() for k, v in outputs.items()}
    dirty_batch = {k: v.copy() for k, v in batch.items()}
    for key in dirty_outputs:
      dirty_outputs[key][padding] = 99.0
    dirty_batch['group_emotion'][padding] = 4
    dirty_batch['individual_emotion'][padding] = 2
    dirty.update(dirty_outputs, dirty_batch)
  assert metrics.format_table(dirty.compute()) == metrics.format_table(clean.compute())


def test_accumulator_single_situational_and_table():
  accumulator = metrics.MetricsAccumulator(situational='single')
  for outputs, batch in make_batches(4):
    accumulator.update(outputs, batch)
  result = accumulator.compute()
  assert result['situational_emotion']['kind'] == 'single_label'
  assert result['situational_emotion']['num_classes'] == 10
  table = metrics.format_table(result)
  for head in ('group_emotion', 'group_category', 'situation', 'situational_emotion', 'valence', 'arousal',
               'individual_emotion', 'individual_valence', 'individual_arousal'):
    assert head in table
  assert 'majority' in table and 'chance' in table and 'split_mean' in table
  accuracy = result['group_emotion']['baselines']['majority']['accuracy']
  assert f'{accuracy:.4f}' in table


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='outside'):
    metrics.confusion_matrix([0, 5], [0, 1], 3)
  with pytest.raises(ValueError, match='situational'):
    metrics.MetricsAccumulator(situational='soft')
  outputs, batch = make_batches(0, num_batches=1)[0]
  del batch['group_category']
  with pytest.raises(KeyError, match='group_category'):
    metrics.MetricsAccumulator().update(outputs, batch)


def test_prediction_rows_write_missing_labels_as_null():
  from gems_jax.data import planted
  from gems_jax.evaluation import predictions
  spec = planted.planted_spec()
  rng = np.random.default_rng(0)
  outputs = {head: rng.normal(size=(2, n)) for head, n in (
      ("group_emotion", 9), ("group_category", 3), ("situation", 10), ("situational_emotion", 10))}
  outputs.update(valence=np.array([0.1, 0.2]), arousal=np.array([0.3, 0.4]))
  multi_hot = np.zeros((2, 10))
  multi_hot[0, 3] = 1
  labels = {"valid": np.array([True, True]), "group_emotion": np.array([1, 2]),
            "group_category": np.array([0, 1]), "situation": np.array([4, -1]),
            "situational_emotion": multi_hot, "valence": np.array([0.5, np.nan]),
            "arousal": np.array([np.nan, -0.5])}
  full, partial = predictions.clip_rows(outputs, labels, {"clip_id": np.array(["a", "b"])}, spec,
                                        multilabel=True)
  assert full["situation"]["true"] == spec.situation_names[4] and partial["situation"]["true"] is None
  assert full["situational_emotion"]["true"] == [spec.situational_emotion_names[3]]
  assert partial["situational_emotion"]["true"] is None
  assert full["valence"]["true"] == 0.5 and partial["valence"]["true"] is None
  assert full["arousal"]["true"] is None and partial["arousal"]["true"] == -0.5
