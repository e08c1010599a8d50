"""Split-level metrics for every GEMS head, with majority and chance baselines (NumPy only).

Metrics are computed once over the whole evaluated split from accumulated predictions (`MetricsAccumulator`),
never averaged over batches. Definitions follow scikit-learn exactly (tests check this):
- single-label: accuracy; macro-F1 and UAR (= macro recall) over the classes present in y_true ∪ y_pred,
  a class's F1/recall being 0 where undefined (sklearn's `zero_division` default);
- multi-label: mAP = mean over classes with >= 1 positive of sklearn's average precision (step-wise, ties
  grouped); micro- and macro-F1 of `score >= threshold` (macro over all classes, 0 where undefined);
- regression: Lin's CCC with population moments, MSE, MAE, Pearson r, on the stored scale (no rescaling,
  unlike the authors' per-split min-max normalisation of the ground truth, reference §1.4).

Baselines use the label distribution of the evaluated split itself (p_c = n_c / n):
- 'majority': predict the most frequent class (ties -> lowest index); for multi-label each class's majority
  value; scored with the same metric functions, so the values are exact.
- 'chance': the expectation over a stratified random guess (each prediction drawn independently from p):
    accuracy = Σ_c p_c²   (exact);
    UAR      = 1 / C_true (exact: E[recall_c] = p_c, averaged over the C_true classes of y_true, the only
               classes the guess can produce);
    F1       = exact expectation of 2X / (n_c + X + Z), with X ~ Bin(n_c, p_c) true positives and
               Z ~ Bin(n - n_c, p_c) false positives (independent), summed over their pmfs (tails < 1e-13
               dropped); it tends to p_c as n grows, so macro-F1 -> 1 / C_true.
  Multi-label chance guesses each class independently with its prevalence π_c: per-class F1 as above
  (macro), micro-F1 with X, Z replaced by the sums over classes; mAP is that of constant prior scores,
  AP_c = π_c exactly (all scores tied), which is also the large-n expected AP of random scores.
- regression: 'split_mean' (constant split mean: CCC 0, MSE = variance) and, when given, 'train_mean'.
"""
from collections.abc import Mapping

import numpy as np

SINGLE_LABEL_HEADS = ('group_emotion', 'group_category', 'situation')
REGRESSION_HEADS = ('valence', 'arousal')
INDIVIDUAL_REGRESSION_HEADS = ('individual_valence', 'individual_arousal')
_PMF_TAIL = 1e-13


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [C, C]; rows = true class, columns = predicted class."""
  y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
  for name, y in (('y_true', y_true), ('y_pred', y_pred)):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f'{name} has labels outside [0, {num_classes}): {np.unique(y)}')
  return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(
      num_classes, num_classes)


def single_label_metrics_from_confusion(cm: np.ndarray) -> dict:
  """accuracy, macro_f1 (macro over the classes in y_true ∪ y_pred, as scikit-learn's f1_score) and
  uar, the unweighted average recall over the classes present in y_true (scikit-learn's
  balanced_accuracy_score): a predicted class that never occurs does not count as a 0 recall."""
  cm = np.asarray(cm, np.float64)
  tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
  present = (support + predicted) > 0
  f1 = 2 * tp / np.maximum(support + predicted, 1)
  recall = tp / np.maximum(support, 1)
  return {'accuracy': float(tp.sum() / max(cm.sum(), 1)),
          'macro_f1': float(f1[present].mean()) if present.any() else 0.0,
          'uar': float(recall[support > 0].mean()) if (support > 0).any() else 0.0}


def _binomial_pmf(n: int, p: float):
  """(first k, pmf[k0:k1]) of Bin(n, p), dropping the tails below `_PMF_TAIL` of the mode."""
  if p <= 0.0 or n == 0:
    return 0, np.ones(1)
  if p >= 1.0:
    return n, np.ones(1)
  k = np.arange(n + 1)
  log_choose = np.concatenate([[0.0], np.cumsum(np.log(np.arange(n, 0, -1)) - np.log(np.arange(1, n + 1)))])
  log_pmf = log_choose + k * np.log(p) + (n - k) * np.log1p(-p)
  keep = np.flatnonzero(log_pmf >= log_pmf.max() + np.log(_PMF_TAIL))
  return int(keep[0]), np.exp(log_pmf[keep[0]:keep[-1] + 1])


def _convolve_pmfs(pmfs):
  """Distribution of a sum of independent counts given as (offset, pmf) pairs."""
  offset, pmf = 0, np.ones(1)
  for k0, p in pmfs:
    offset, pmf = offset + k0, np.convolve(pmf, p)
  keep = np.flatnonzero(pmf >= pmf.max() * _PMF_TAIL)
  return offset + int(keep[0]), pmf[keep[0]:keep[-1] + 1]


def _expected_f1(true_positives, false_positives, num_positive: int) -> float:
  """E[2X / (P + X + Z)] for independent X, Z given as (offset, pmf); 0 where the ratio is 0/0."""
  if num_positive == 0:
    return 0.0
  (x0, px), (z0, pz) = true_positives, false_positives
  x = x0 + np.arange(len(px), dtype=np.float64)
  z = z0 + np.arange(len(pz), dtype=np.float64)
  total, chunk = 0.0, max(1, 4_000_000 // len(pz))
  for start in range(0, len(x), chunk):
    xs = x[start:start + chunk, None]
    ratio = 2 * xs / (num_positive + xs + z[None, :])
    total += float(px[start:start + chunk] @ (ratio @ pz))
  return total


def single_label_baselines(y_true: np.ndarray, num_classes: int) -> dict:
  """{'majority': metrics of the constant majority guess, 'chance': expected stratified-guess metrics}."""
  counts = np.bincount(np.asarray(y_true, np.int64), minlength=num_classes)
  n = int(counts.sum())
  if n == 0:
    raise ValueError('single_label_baselines: empty y_true')
  majority_cm = np.zeros((num_classes, num_classes), np.int64)
  majority_cm[:, int(np.argmax(counts))] = counts
  prior = counts / n
  present = np.flatnonzero(counts)
  f1 = [_expected_f1(_binomial_pmf(int(counts[c]), prior[c]), _binomial_pmf(n - int(counts[c]), prior[c]),
                     int(counts[c])) for c in present]
  chance = {'accuracy': float(np.sum(prior**2)), 'macro_f1': float(np.mean(f1)), 'uar': 1.0 / len(present)}
  return {'majority': single_label_metrics_from_confusion(majority_cm), 'chance': chance}


def evaluate_single_label(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
  """Model metrics, baselines, confusion matrix and class counts of one single-label head."""
  cm = confusion_matrix(y_true, y_pred, num_classes)
  return {'kind': 'single_label', 'n': int(cm.sum()), 'num_classes': num_classes,
          'model': single_label_metrics_from_confusion(cm),
          'baselines': single_label_baselines(y_true, num_classes),
          'confusion_matrix': cm, 'class_counts': cm.sum(1)}


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
  """sklearn's average_precision_score for one binary class: Σ_k (R_k - R_{k-1}) P_k over the distinct
  score thresholds in decreasing order (tied scores form one threshold). NaN without positives."""
  y_true, scores = np.asarray(y_true, np.float64), np.asarray(scores, np.float64)
  if y_true.sum() == 0:
    return float('nan')
  order = np.argsort(-scores, kind='stable')
  y_sorted, s_sorted = y_true[order], scores[order]
  last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
  tps = np.cumsum(y_sorted)[last_of_tie]
  precision = tps / (last_of_tie + 1)
  recall = tps / tps[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _multilabel_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
  tp = np.sum(y_true & y_pred, 0)
  denominator = y_true.sum(0) + y_pred.sum(0)
  return {'micro_f1': float(2 * tp.sum() / max(denominator.sum(), 1)),
          'macro_f1': float(np.mean(2 * tp / np.maximum(denominator, 1)))}


def multilabel_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
  """mAP, micro_f1, macro_f1 for a multi-hot y_true [n, C] and scores [n, C] (predicted = score >= threshold;
  pass logits with threshold 0 to rank on logits, which avoids ties from saturated sigmoids)."""
  y_true, scores = np.asarray(y_true) > 0, np.asarray(scores, np.float64)
  ap = [average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1]) if y_true[:, c].any()]
  return {'mAP': float(np.mean(ap)) if ap else float('nan'), **_multilabel_f1(y_true, scores >= threshold)}


def multilabel_baselines(y_true: np.ndarray) -> dict:
  """'majority' (each class's majority value) and 'chance' (independent Bernoulli(π_c) guesses)."""
  y_true = np.asarray(y_true) > 0
  n, num_classes = y_true.shape
  positives = y_true.sum(0)
  prevalence = positives / max(n, 1)
  prior_map = float(prevalence[positives > 0].mean()) if positives.any() else float('nan')
  majority_pred = np.broadcast_to(prevalence > 0.5, y_true.shape)
  tp_pmfs = [_binomial_pmf(int(positives[c]), prevalence[c]) for c in range(num_classes)]
  fp_pmfs = [_binomial_pmf(n - int(positives[c]), prevalence[c]) for c in range(num_classes)]
  per_class = [_expected_f1(tp_pmfs[c], fp_pmfs[c], int(positives[c])) for c in range(num_classes)]
  chance = {'mAP': prior_map, 'micro_f1': _expected_f1(_convolve_pmfs(tp_pmfs), _convolve_pmfs(fp_pmfs),
                                                       int(positives.sum())),
            'macro_f1': float(np.mean(per_class))}
  return {'majority': {'mAP': prior_map, **_multilabel_f1(y_true, majority_pred)}, 'chance': chance}


def evaluate_multilabel(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
  y_true = np.asarray(y_true) > 0
  return {'kind': 'multi_label', 'n': int(len(y_true)), 'num_classes': int(y_true.shape[1]),
          'model': multilabel_metrics(y_true, scores, threshold), 'baselines': multilabel_baselines(y_true),
          'prevalence': y_true.mean(0)}


def concordance_correlation(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Lin's CCC with population moments (ddof=0); NaN when both are the same constant."""
  t, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
  constant = np.ptp(t) == 0 or np.ptp(p) == 0  # exact 0 covariance, free of rounding in the means
  cov = 0.0 if constant else np.mean((t - t.mean()) * (p - p.mean()))
  denominator = t.var() + p.var() + (t.mean() - p.mean())**2
  return float(2 * cov / denominator) if denominator > 0 else float('nan')


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
  """ccc, mse, mae and pearson_r (NaN if either side is constant)."""
  t, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
  if np.ptp(t) == 0 or np.ptp(p) == 0:
    pearson = float('nan')
  else:
    pearson = float(np.mean((t - t.mean()) * (p - p.mean())) / (t.std() * p.std()))
  return {'ccc': concordance_correlation(t, p), 'mse': float(np.mean((t - p)**2)),
          'mae': float(np.mean(np.abs(t - p))), 'pearson_r': pearson}


def evaluate_regression(y_true: np.ndarray, y_pred: np.ndarray, train_mean: float | None = None) -> dict:
  t = np.asarray(y_true, np.float64)
  constants = {'split_mean': float(t.mean())}
  if train_mean is not None:
    constants['train_mean'] = float(train_mean)
  baselines = {}
  for name, value in constants.items():
    metrics = regression_metrics(t, np.full_like(t, value))
    baselines[name] = {key: metrics[key] for key in ('ccc', 'mse', 'mae')}
  return {'kind': 'regression', 'n': int(len(t)), 'model': regression_metrics(t, y_pred),
          'baselines': baselines, 'target_mean': float(t.mean()), 'target_std': float(t.std())}


def _argmax(logits: np.ndarray) -> np.ndarray:
  return np.argmax(logits, axis=-1).astype(np.int64)


class MetricsAccumulator:
  """Collects the valid, labelled predictions of a split batch by batch; `compute()` scores them at once.

  `update` takes host NumPy outputs (model output dict, see `gems_jax.training.losses.gems_losses`) and the
  batch dict of the schema in `gems_jax/data/spec.py`. Padding examples (`valid` False), unlabelled faces (label -1 /
  NaN / empty slot) and examples without any situational class are dropped. With several processes, feed
  each process's accumulator all-gathered arrays (or one accumulator on process 0).
  """

  def __init__(self, situational: str = 'multilabel', train_means: Mapping[str, float] | None = None):
    if situational not in ('multilabel', 'single'):
      raise ValueError(f"situational={situational!r}; expected 'multilabel' or 'single'")
    self.situational = situational
    self.train_means = dict(train_means or {})
    self._chunks: dict[str, list] = {}
    self._num_classes: dict[str, int] = {}

  def _add(self, head: str, truth: np.ndarray, prediction: np.ndarray, num_classes: int | None = None):
    if num_classes is not None:
      if self._num_classes.setdefault(head, num_classes) != num_classes:
        raise ValueError(f'{head}: {num_classes} classes in this batch, {self._num_classes[head]} before')
    self._chunks.setdefault(head, []).append((truth, prediction))

  def update(self, outputs: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
    outputs = {k: np.asarray(v) for k, v in outputs.items()}

    def label(key, dtype=None):
      if key not in batch:
        raise KeyError(f'MetricsAccumulator.update: batch has no key {key!r} (keys: {sorted(batch)})')
      return np.asarray(batch[key], dtype)

    valid = np.asarray(batch['valid'], bool) if 'valid' in batch else np.ones(
        len(next(iter(outputs.values()))), bool)
    for head in SINGLE_LABEL_HEADS:
      if head in outputs:
        labels = label(head)
        keep = valid & (labels >= 0)
        self._add(head, labels[keep], _argmax(outputs[head][keep]), outputs[head].shape[-1])
    if 'situational_emotion' in outputs:
      logits, multi_hot = outputs['situational_emotion'], label('situational_emotion') > 0
      keep = valid & multi_hot.any(-1)
      if self.situational == 'multilabel':
        self._add('situational_emotion', multi_hot[keep], logits[keep].astype(np.float64))
      else:
        self._add('situational_emotion', np.argmax(multi_hot[keep], -1), _argmax(logits[keep]),
                  logits.shape[-1])
    for head in REGRESSION_HEADS:
      if head in outputs:
        targets = label(head, np.float64)
        keep = valid & np.isfinite(targets)
        self._add(head, targets[keep], outputs[head][keep].astype(np.float64))
    if not any(head in outputs for head in ('individual_emotion',) + INDIVIDUAL_REGRESSION_HEADS):
      return
    faces = valid[:, None, None] & label('face_mask', bool)
    if 'individual_emotion' in outputs:
      labels, logits = label('individual_emotion'), outputs['individual_emotion']
      keep = faces & (labels >= 0)
      self._add('individual_emotion', labels[keep], _argmax(logits[keep]), logits.shape[-1])
    for head in INDIVIDUAL_REGRESSION_HEADS:
      if head in outputs:
        targets = label(head, np.float64)
        keep = faces & np.isfinite(targets)
        self._add(head, targets[keep], outputs[head][keep].astype(np.float64))

  def compute(self) -> dict:
    """{head: evaluation dict} for every head that received at least one labelled element."""
    results = {}
    for head, chunks in self._chunks.items():
      truth = np.concatenate([t for t, _ in chunks])
      prediction = np.concatenate([p for _, p in chunks])
      if len(truth) == 0:
        continue
      if head in self._num_classes:
        results[head] = evaluate_single_label(truth, prediction, self._num_classes[head])
      elif truth.ndim == 2:
        results[head] = evaluate_multilabel(truth, prediction, threshold=0.0)
      else:
        results[head] = evaluate_regression(truth, prediction, self.train_means.get(head))
    return results


def _format_value(value) -> str:
  return '-' if value is None or not np.isfinite(value) else f'{value:.4f}'


def format_table(metrics: Mapping[str, dict]) -> str:
  """Plain-text table: per head, each metric of the model beside every baseline of that head."""
  blocks = []
  for head, result in metrics.items():
    title = f"{head}  ({result['kind'].replace('_', '-')}, n={result['n']}"
    title += f", {result['num_classes']} classes)" if 'num_classes' in result else ')'
    baseline_names = list(result['baselines'])
    header = ['metric', 'model'] + baseline_names
    rows = [[name, _format_value(value)] + [_format_value(result['baselines'][b].get(name))
                                            for b in baseline_names]
            for name, value in result['model'].items()]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ['  ' + '  '.join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                              enumerate(zip(row, widths))) for row in [header] + rows]
    blocks.append('\n'.join([title] + lines))
  return '\n\n'.join(blocks) + '\n'
