"""benchmarks/audio_cnn.py on thin channels: the PyTorch peer equals the Flax CNN, every case is
timed on both sides, and the JSON carries the rows and their provenance."""
import json

import pytest

from benchmarks import audio_cnn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_quick_run_times_both_frameworks_and_writes_the_json(tmp_path):
  out = tmp_path / "audio_cnn.json"
  audio_cnn.main(["--quick", "--frames", "2,3", "--runs", "2", "--threads", "1",
                  "--json", str(out)])
  report = json.loads(out.read_text())
  assert [p["frames"] for p in report["parity"]] == [2, 3]
  for parity in report["parity"]:
    assert parity["features_rel"] < 1e-5 and parity["first_kernel_grad_rel"] < 1e-5
    assert parity["float64_frames"] == min(parity["frames"], 4)
    assert parity["flax_grad_vs_float64"] < 1e-5 and parity["torch_grad_vs_float64"] < 1e-5
  cases = ["forward", "train", "conv fwd", "conv input grad", "conv filter grad"]
  assert ([(r["case"], r["frames"]) for r in report["rows"]]
          == [(c, n) for n in (2, 3) for c in cases])
  for row in report["rows"]:
    assert len(row["torch_times"]) == len(row["flax_times"]) == 2
    assert row["flax_speed_vs_torch"] == pytest.approx(row["torch_s"] / row["flax_s"])
    assert row["torch_gflops"] > 0 and row["flax_gflops"] > 0
  assert report["command"][:3] == ["python", "-m", "benchmarks.audio_cnn"] and report["git"]
  assert "| conv filter grad | 3 |" in report["table"]
