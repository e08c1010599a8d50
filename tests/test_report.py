"""Tests for gems_jax.evaluation.report: files written, PNGs readable and non-trivial, strict JSON."""
import json

import numpy as np
import pytest
from PIL import Image

from gems_jax.evaluation import metrics, report
from test_metrics import make_batches

CLASS_NAMES = {'emotion': ['fear', 'anger', 'joy', 'sadness', 'disgust', 'surprise', 'trust', 'anticipation',
                           'none'],
               'group_category': ['positive', 'neutral', 'negative']}


def computed_metrics():
  accumulator = metrics.MetricsAccumulator()
  for outputs, batch in make_batches(0):
    accumulator.update(outputs, batch)
  return accumulator.compute()


def assert_non_trivial_png(path):
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    pixels = np.asarray(image.convert('L'), np.float32)
  assert pixels.shape[0] > 200 and pixels.shape[1] > 200, path
  assert pixels.std() > 5.0, path  # not a blank canvas
  assert len(np.unique(pixels)) > 20, path


def test_write_report_writes_table_json_and_plots(tmp_path):
  jsonl = tmp_path / 'metrics.jsonl'
  records = [{'step': s, 'train/loss': 3.0 / (s + 1), 'train/group_emotion': 2.0 / (s + 1)} for s in range(0, 50, 5)]
  records += [{'step': s, 'val/group_emotion/accuracy': 0.3 + s / 200} for s in (10, 30, 49)]
  jsonl.write_text('\n'.join(json.dumps(r) for r in records) + '\n')
  results = computed_metrics()
  written = report.write_report(tmp_path / 'report', results, CLASS_NAMES, jsonl)
  names = {path.name for path in written}
  assert {'metrics.json', 'metrics.md', 'baselines.png', 'training_curves.png', 'confusion_group_emotion.png',
          'confusion_group_category.png', 'confusion_situation.png', 'confusion_individual_emotion.png'} == names
  for path in written:
    assert path.exists() and path.stat().st_size > 0
    if path.suffix == '.png':
      assert_non_trivial_png(path)
  loaded = json.loads((tmp_path / 'report' / 'metrics.json').read_text(),
                      parse_constant=lambda c: pytest.fail(f'non-standard JSON constant {c}'))
  assert loaded['group_emotion']['confusion_matrix'] == results['group_emotion']['confusion_matrix'].tolist()
  assert loaded['valence']['model']['mse'] == pytest.approx(results['valence']['model']['mse'])
  assert metrics.format_table(results) in (tmp_path / 'report' / 'metrics.md').read_text()


def test_nan_becomes_null_and_class_names_are_checked(tmp_path):
  results = {'valence': metrics.evaluate_regression(np.ones(4), np.ones(4))}
  assert np.isnan(results['valence']['model']['ccc'])
  report.write_report(tmp_path, results)
  assert json.loads((tmp_path / 'metrics.json').read_text())['valence']['model']['ccc'] is None
  assert not (tmp_path / 'training_curves.png').exists()
  assert report.class_names_for('situation', CLASS_NAMES, 3) == ['0', '1', '2']
  assert report.class_names_for('individual_emotion', CLASS_NAMES, 9)[2] == 'joy'
  with pytest.raises(ValueError, match='group_category'):
    report.class_names_for('group_category', CLASS_NAMES, 4)


def test_malformed_jsonl_names_file_and_line(tmp_path):
  jsonl = tmp_path / 'metrics.jsonl'
  jsonl.write_text('{"step": 1, "train/loss": 1.0}\n{broken\n')
  with pytest.raises(ValueError, match='metrics.jsonl:2'):
    report.plot_training_curves(jsonl, tmp_path / 'curves.png')


def test_headline_picks_each_heads_metric_and_spread_skips_missing_values():
  results = computed_metrics()
  headline = report.headline(results)
  assert list(headline) == ['group_emotion/accuracy', 'group_category/accuracy', 'situation/accuracy',
                            'situational_emotion/mAP', 'valence/ccc', 'arousal/ccc',
                            'individual_emotion/accuracy']
  assert headline['valence/ccc'] == pytest.approx(results['valence']['model']['ccc'])
  spread = report.spread([{'a': 1.0, 'b': None}, {'a': 3.0, 'b': 2.0}, {'a': 2.0}])
  assert spread['a'] == pytest.approx({'mean': 2.0, 'sd': 1.0, 'min': 1.0, 'max': 3.0, 'n': 3})
  assert spread['b'] == {'mean': 2.0, 'sd': 0.0, 'min': 2.0, 'max': 2.0, 'n': 1}
  assert report.spread([{'c': None}])['c'] == {'mean': None, 'sd': None, 'min': None, 'max': None, 'n': 0}


def test_provenance_names_code_machine_time_and_command():
  p = report.provenance(seed=3)
  assert p['seed'] == 3 and p['cores'] >= 1 and p['cpu']
  assert p['commit'] is None or len(p['commit']) == 40
  assert p['utc'].endswith(' UTC') and isinstance(p['command'], list)
  text = report.provenance_markdown(p)
  assert 'seed 3' in text and p['utc'] in text and p['cpu'] in text
  assert (p['commit'] or 'unknown')[:12] in text


def _fake_run(root, name, results):
  test = root / name / 'report' / 'test'
  test.mkdir(parents=True)
  (test / 'metrics.json').write_text(json.dumps(report.to_jsonable(results)))
  return str(root / name)


def test_demo_report_carries_provenance_spread_and_both_profiles(tmp_path):
  from gems_jax import demo
  first = computed_metrics()
  second = json.loads(json.dumps(report.to_jsonable(first)))
  second['group_emotion']['model']['accuracy'] = first['group_emotion']['model']['accuracy'] + 0.1
  runs = [_fake_run(tmp_path, 'gems', first), _fake_run(tmp_path, 'gems_seed1', second)]
  clip = {'group_emotion': 'joy', 'group_category': 'positive', 'valence': 0.5, 'arousal': 0.2,
          'situation': 'concert', 'situational_emotions': ['excitement']}
  profiles = {name: {'video': '/x/crowd_4s.mp4', 'num_faces': 38, 'num_sampled_frames': 8, 'clip': clip}
              for name in ('no description', 'with the description')}
  av_runs = {mode: _fake_run(tmp_path, f'av_{mode}', first) for mode in ('audio', 'video', 'fusion')}
  av_profile = {'clip': {'group_category': 'neutral', 'group_category_probabilities': {
      'positive': 0.2, 'neutral': 0.7, 'negative': 0.1}}, 'has_audio': True, 'faces_used': False}
  path = demo.write_report(str(tmp_path), runs, profiles, report.provenance(seed=0), {'data': 1.0},
                           av_runs, av_profile)
  text = open(path).read()
  category = first['group_category']['model']
  assert f"| fusion | {category['accuracy']:.3f} | {category['macro_f1']:.3f} | {category['uar']:.3f} |" in text
  assert '| Augusma et al. 2023 (this model, CLIP ViT-L/14 + audio CNN) | 75.13 |' in text
  assert "Above the majority baseline's accuracy: " in text
  assert '**neutral** (positive 0.20, neutral 0.70, negative 0.10); sound used: True, faces used: False' in text
  assert 'Run of ' in text and 'seed 0' in text and 'mean ± sd over 2 seeds' in text
  accuracy = first['group_emotion']['model']['accuracy']
  assert f'| group_emotion | accuracy | {accuracy:.3f} | {accuracy + 0.05:.3f} ± 0.071 ' in text
  assert '| no description | 38 in 8 frames | joy |' in text and '| with the description |' in text
  assert demo.CROWD_DESCRIPTION in text
  saved = json.loads((tmp_path / 'report' / 'report.json').read_text())
  assert saved['provenance']['seed'] == 0 and saved['test']['spread']['group_emotion/accuracy']['n'] == 2
  assert set(saved['real_clip']['profiles']) == set(profiles)
  assert set(saved['audio_visual']['test']) == {'audio', 'video', 'fusion'}
