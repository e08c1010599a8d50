"""benchmarks/ablation.py without training: the temporal head's metric, the per-run columns, the table of
mean ± sd over seeds and the bar chart."""
import numpy as np
import pytest
from PIL import Image

from benchmarks import ablation
from gems_jax.evaluation import report

PLANTED = {"a": {"trajectory": "rising", "whole_clip_arousal": "0.10"},
           "b": {"trajectory": "falling", "whole_clip_arousal": "0.10"},
           "c": {"trajectory": "rising", "whole_clip_arousal": "0.50"},
           "d": {"trajectory": "steady", "whole_clip_arousal": "0.00"}}


def _predictions(arousal: dict) -> list[dict]:
  return [{"clip_id": k, "arousal": {"predicted": v, "true": 0.0}} for k, v in arousal.items()]


def test_trajectory_accuracy_counts_the_side_of_the_whole_clip_mean():
  # a: above, right; b: below, right; c: below but rising, wrong; d: steady, not counted.
  assert ablation.trajectory_accuracy(_predictions({"a": 0.3, "b": -0.2, "c": 0.4, "d": 9.0}),
                                      PLANTED) == pytest.approx(2 / 3)
  assert ablation.trajectory_accuracy(_predictions({"d": 0.0}), PLANTED) is None


def _metrics(accuracy: float, ccc: float) -> dict:
  return {"group_emotion": {"kind": "single_label", "model": {"accuracy": accuracy}},
          "situation": {"kind": "single_label", "model": {"accuracy": 0.8}},
          "arousal": {"kind": "regression", "model": {"ccc": ccc}},
          "situational_emotion": {"kind": "multi_label", "model": {"mAP": 0.9}}}


def test_run_metrics_table_and_plot(tmp_path):
  predictions = _predictions({"a": 0.3, "b": 0.3, "c": 0.6, "d": 0.0})
  runs = {"s3": [ablation.run_metrics(_metrics(0.5, 0.4), predictions, PLANTED),
                 ablation.run_metrics(_metrics(0.7, 0.6), predictions, PLANTED)],
          "pooling": [ablation.run_metrics(_metrics(0.6, 0.2), predictions, PLANTED)]}
  assert runs["s3"][0] == {"group_emotion/accuracy": 0.5, "situation/accuracy": 0.8, "arousal/ccc": 0.4,
                           "trajectory/accuracy": pytest.approx(2 / 3)}
  summary = {name: report.spread(r) for name, r in runs.items()}
  table = ablation.format_table(summary).splitlines()
  assert table[0].startswith("| variant | group emotion acc | category acc | situation acc |")
  assert table[2] == ("| S3Attention (paper) | 0.600 ± 0.141 | - | 0.800 ± 0.000 | - | 0.500 ± 0.141 "
                      "| 0.667 ± 0.000 | 2 |")
  assert table[3].startswith("| pooling only | 0.600 ± 0.000 |") and table[3].endswith("| 1 |")
  path = tmp_path / "ablation.png"
  ablation.plot(summary, str(path), "test")
  with Image.open(path) as image:
    pixels = np.asarray(image.convert("L"), np.float32)
  assert pixels.shape[1] > 800 and pixels.std() > 5.0
