"""Evaluation report: metrics.json, metrics.md (the text table) and PNG plots.

Plots are matplotlib `Figure` objects saved through the Agg canvas without pyplot, so importing this
module changes no global matplotlib state and needs no display.

Plots: one row-normalised confusion matrix per single-label head, a bar chart of the model against its
baselines per head, and training curves read from the training loop's `metrics.jsonl` (one JSON object
per line with a 'step' and scalar values; keys are grouped into panels by their prefix before the last
'/', e.g. 'train/loss' and 'train/valence' in panel 'train', 'val/group_emotion/accuracy' in panel
'val/group_emotion').

For reports that gather several runs (the demo, benchmarks/ablation.py): `headline` picks each head's
main metric, `spread` gives its mean and spread over runs, and `provenance` records where and from what
code a report came, so that its figures can be traced and compared with another machine's.
"""
from collections.abc import Mapping, Sequence
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
import sys

from matplotlib.figure import Figure
import numpy as np

from gems_jax.evaluation.metrics import format_table

# labels.json key holding a head's class names, when they are not given under the head's own name.
_LABELS_JSON_KEY = {'group_emotion': 'emotion', 'individual_emotion': 'emotion'}
# The metric that sums up each kind of head, and the heads a run report leads with, in order.
HEADLINE_METRIC = {'single_label': 'accuracy', 'multi_label': 'mAP', 'regression': 'ccc'}
HEADLINE_HEADS = ('group_emotion', 'group_category', 'situation', 'situational_emotion', 'valence', 'arousal',
                  'individual_emotion')
_REPO = pathlib.Path(__file__).resolve().parents[2]


def to_jsonable(value):
  """NumPy arrays/scalars -> lists/Python numbers, NaN/inf -> None (strict JSON)."""
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (np.integer, np.bool_)):
    return value.item()
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def class_names_for(head: str, class_names: Mapping[str, Sequence[str]] | None, num_classes: int):
  """The head's class names (by head name, then by its labels.json key), else '0'..'C-1'."""
  class_names = class_names or {}
  names = class_names.get(head, class_names.get(_LABELS_JSON_KEY.get(head, head)))
  if names is None:
    return [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f'class names for {head!r}: {len(names)} names {list(names)} for {num_classes} classes')
  return list(names)


def plot_confusion_matrix(cm: np.ndarray, names: Sequence[str], title: str, path) -> None:
  """Rows = true class normalised to sum 1 (a row without examples stays 0), counts in the cells."""
  cm = np.asarray(cm, np.float64)
  normalised = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  size = 2.0 + 0.6 * len(names)
  fig = Figure(figsize=(size + 1.5, size))
  ax = fig.subplots()
  image = ax.imshow(normalised, cmap='Blues', vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='fraction of true class')
  ticks = np.arange(len(names))
  ax.set_xticks(ticks, names, rotation=45, ha='right')
  ax.set_yticks(ticks, names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  for i, j in np.ndindex(cm.shape):
    if cm[i, j]:
      ax.text(j, i, f'{int(cm[i, j])}', ha='center', va='center', fontsize=8,
              color='white' if normalised[i, j] > 0.5 else 'black')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_baselines(metrics: Mapping[str, dict], path) -> None:
  """One panel per head: grouped bars of each metric for the model and every baseline."""
  heads = list(metrics)
  columns = min(3, len(heads))
  rows = math.ceil(len(heads) / columns)
  fig = Figure(figsize=(5 * columns, 3.6 * rows))
  axes = fig.subplots(rows, columns, squeeze=False)
  for ax, head in zip(axes.flat, heads):
    result = metrics[head]
    series = {'model': result['model'], **result['baselines']}
    metric_names = [m for m in result['model'] if m != 'pearson_r']
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
      heights = [np.nan if values.get(m) is None else values[m] for m in metric_names]
      ax.bar(np.arange(len(metric_names)) + (k - (len(series) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(np.arange(len(metric_names)), metric_names)
    ax.set_title(f"{head} (n={result['n']})")
    ax.axhline(0.0, color='gray', linewidth=0.5)
    ax.legend(fontsize=7)
  for ax in axes.flat[len(heads):]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def read_jsonl(path) -> list[dict]:
  """The records of a metrics.jsonl file; a malformed line raises ValueError naming the file and line."""
  records = []
  for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
    if line.strip():
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f'{path}:{number}: not valid JSON: {error}') from error
      if not isinstance(record, dict):
        raise ValueError(f'{path}:{number}: expected a JSON object, got {type(record).__name__}')
      records.append(record)
  return records


def plot_training_curves(jsonl_path, path) -> bool:
  """Every numeric key vs 'step', one panel per key prefix; False (no file written) if nothing to plot."""
  curves: dict[str, dict[str, list]] = {}
  for record in read_jsonl(jsonl_path):
    if 'step' not in record:
      continue
    for key, value in record.items():
      if key not in ('step', 'time') and isinstance(value, (int, float)) and not isinstance(value, bool):
        panel = key.rsplit('/', 1)[0] if '/' in key else 'other'
        curves.setdefault(panel, {}).setdefault(key, []).append((record['step'], value))
  if not curves:
    return False
  columns = 1 if len(curves) <= 3 else 2
  rows = math.ceil(len(curves) / columns)
  fig = Figure(figsize=(8 * columns, 3.2 * rows))
  axes = fig.subplots(rows, columns, squeeze=False)
  for ax in axes.flat[len(curves):]:
    ax.set_visible(False)
  for ax, (panel, series) in zip(axes.flat, sorted(curves.items())):
    for key, points in sorted(series.items()):
      steps, values = zip(*points)
      ax.plot(steps, values, marker='.' if len(points) < 30 else None, label=key)
    ax.set_title(panel)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return True


def write_report(out_dir, metrics: Mapping[str, dict], class_names: Mapping[str, Sequence[str]] | None = None,
                 jsonl_path=None) -> list[pathlib.Path]:
  """Writes metrics.json, metrics.md, confusion_<head>.png, baselines.png and (if `jsonl_path` exists)
  training_curves.png into `out_dir`; returns the written paths.

  Args:
    out_dir: folder, created if missing.
    metrics: `MetricsAccumulator.compute()` output.
    class_names: {head or labels.json key: names}, e.g. the dataset's labels.json; missing -> indices.
    jsonl_path: the training loop's metrics.jsonl, optional.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = [out_dir / 'metrics.json', out_dir / 'metrics.md']
  written[0].write_text(json.dumps(to_jsonable(metrics), indent=1, allow_nan=False) + '\n')
  written[1].write_text('# Evaluation\n\nModel metrics with majority and chance baselines of the evaluated '
                        'split (definitions: `gems_jax/evaluation/metrics.py`).\n\n```\n'
                        + format_table(metrics) + '```\n')
  for head, result in metrics.items():
    if result['kind'] == 'single_label':
      path = out_dir / f'confusion_{head}.png'
      names = class_names_for(head, class_names, result['num_classes'])
      plot_confusion_matrix(result['confusion_matrix'], names, f"{head} (n={result['n']})", path)
      written.append(path)
  if metrics:
    written.append(out_dir / 'baselines.png')
    plot_baselines(metrics, written[-1])
  if jsonl_path is not None and pathlib.Path(jsonl_path).exists():
    if plot_training_curves(jsonl_path, out_dir / 'training_curves.png'):
      written.append(out_dir / 'training_curves.png')
  return written


def headline(metrics: Mapping[str, dict]) -> dict[str, float | None]:
  """{'group_emotion/accuracy': model value, ...}: the headline metric of each HEADLINE_HEADS head present
  in `metrics` (a metrics.json dict); None where the value is missing or not finite."""
  out = {}
  for head in HEADLINE_HEADS:
    if head in metrics:
      name = HEADLINE_METRIC[metrics[head]['kind']]
      out[f'{head}/{name}'] = to_jsonable(metrics[head]['model'].get(name))
  return out


def spread(runs: Sequence[Mapping[str, float | None]]) -> dict[str, dict]:
  """Per key of the runs' dicts: {'mean', 'sd' (sample sd, ddof=1; 0 for one run), 'min', 'max', 'n'} over
  the runs that have a value (None skipped; n = 0 gives None everywhere but n)."""
  out = {}
  for key in dict.fromkeys(k for run in runs for k in run):
    values = np.array([run[key] for run in runs if run.get(key) is not None], np.float64)
    n = len(values)
    out[key] = {'mean': float(values.mean()) if n else None,
                'sd': float(values.std(ddof=1)) if n > 1 else (0.0 if n else None),
                'min': float(values.min()) if n else None, 'max': float(values.max()) if n else None, 'n': n}
  return out


def _git(*args) -> str | None:
  try:
    proc = subprocess.run(['git', *args], cwd=_REPO, capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return proc.stdout.rstrip() if proc.returncode == 0 else None


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')),
                  platform.processor())
  except OSError:
    return platform.processor()


_PROVENANCE_KEYS = ('commit', 'uncommitted', 'cpu', 'cores', 'load_average', 'platform', 'python', 'jax',
                    'utc', 'command')


def git_state() -> dict:
  """{'commit': HEAD or None, 'uncommitted': the paths that differ from it (None outside git)}."""
  status = _git('status', '--porcelain')
  return {'commit': _git('rev-parse', 'HEAD'),
          'uncommitted': None if status is None else [line[3:] for line in status.splitlines()]}


def provenance(**extra) -> dict:
  """Where a report came from: the git commit and the files that differed from it, the CPU model and
  count, the load average when it started (other jobs slow timings down), platform, Python and JAX
  versions, UTC time and the command line, plus `extra` (e.g. seed=0).
  Figures of a run depend on all of these (the synthetic mp4 bytes and XLA's float paths on the CPU type),
  so a report that quotes figures carries them."""
  return {**git_state(), 'cpu': _cpu_model(), 'cores': os.cpu_count(),
          'load_average': [round(x, 2) for x in os.getloadavg()], 'platform': platform.platform(),
          'python': platform.python_version(), 'jax': importlib.metadata.version('jax'),
          'utc': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'),
          'command': [os.path.basename(sys.executable), *sys.argv], **extra}


def provenance_markdown(p: Mapping) -> str:
  """One paragraph of `provenance()` for a report README (the full list of changed files stays in JSON)."""
  commit = (p['commit'] or 'unknown')[:12]
  if p['uncommitted']:
    commit += f" plus uncommitted changes in {len(p['uncommitted'])} files"
  extra = ', '.join(f'{k} {v}' for k, v in p.items() if k not in _PROVENANCE_KEYS)
  return (f"Run of {p['utc']}{', ' + extra if extra else ''}; code: commit {commit}; machine: {p['cpu']} "
          f"({p['cores']} cores, load average {p['load_average'][0]} at the start), {p['platform']}, "
          f"Python {p['python']}, JAX {p['jax']}; command: `{' '.join(p['command'])}`.")
