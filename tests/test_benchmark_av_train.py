"""benchmarks/av_train.py: the quick mode end to end (one worker process per case, the JSON's fields
and provenance), the memory verdict that skips a step too large to run, and the table's skip line."""
import json

import pytest

from benchmarks import av_train
from benchmarks.av_train_worker import GIB, memory_verdict, random_batch, bench_config, bench_spec

STEP_FIELDS = {"name", "label", "status", "vit", "remat_chunk", "batch", "compile_s", "first_step_s",
               "step_times_s", "step_ms", "clips_per_s", "peak_rss_gib", "xla_memory_gib", "params",
               "video_encoder_params", "last_loss"}


@pytest.mark.slow
def test_quick_mode_writes_every_case_with_provenance(tmp_path, capsys):
  out = tmp_path / "av.json"
  av_train.main(["--quick", "--repeats", "2", "--devices", "1", "--json", str(out),
                 "--log-dir", str(tmp_path / "logs")])
  printed = capsys.readouterr().out
  assert "clips/s" in printed and "one-off frame embedding" in printed
  result = json.loads(out.read_text())
  assert result["benchmark"] == "av_train" and result["quick"] is True
  assert result["git"]["commit"] and result["machine"]["cores"] >= 1 and result["date_utc"]
  assert result["shapes"]["frames_per_clip"] == 5 and result["shapes"]["audio_frames"] == 5
  rows = {r["name"]: r for r in result["rows"]}
  assert set(rows) == {"embed", "frozen_b2", "unfrozen_b2", "unfrozen_b2_remat5"}, rows
  assert all(r["status"] == "ok" for r in rows.values()), rows
  for name in ("frozen_b2", "unfrozen_b2", "unfrozen_b2_remat5"):
    row = rows[name]
    assert STEP_FIELDS <= set(row), STEP_FIELDS - set(row)
    assert row["batch"] == 2 and row["clips_per_s"] == pytest.approx(2e3 / row["step_ms"])
    assert len(row["step_times_s"]) == 2 and row["peak_rss_gib"] > 0.1
  assert rows["frozen_b2"]["video_encoder_params"] == 0  # Cached embeddings: no ViT in the step.
  assert rows["unfrozen_b2"]["video_encoder_params"] > 0
  assert rows["unfrozen_b2_remat5"]["params"] == rows["unfrozen_b2"]["params"]
  assert 0 < rows["frozen_b2"]["first_epoch_clips_per_s"] < rows["frozen_b2"]["clips_per_s"]
  embed = rows["embed"]
  assert embed["chunk_frames"] == 32 and embed["s_per_clip"] == pytest.approx(
      5e-3 * embed["ms_per_frame"])


def test_a_step_that_does_not_fit_is_skipped_with_the_estimate():
  stats = {"temp": 140 * GIB, "outputs": 2.4 * GIB, "aliased": 2.4 * GIB, "arguments": 2.4 * GIB}
  fits, reason = memory_verdict(stats, available_bytes=20 * GIB, fraction=0.9)
  assert not fits and "140.0 GiB" in reason and "20.0 GiB available" in reason
  assert memory_verdict({**stats, "temp": 5 * GIB}, 20 * GIB, 0.9) == (True, "")
  row = {"name": "unfrozen_b32", "label": "unfrozen ViT, no remat", "batch": 32,
         "status": "skipped", "reason": reason, "peak_rss_gib": 4.7,
         "xla_memory_gib": {"temp": 140.0}, "compile_s": 30.0}
  lines = av_train.table([row])
  assert any(line.endswith("skipped") and "140.0" in line for line in lines)
  assert f"skipped: unfrozen ViT, no remat b32: {reason}" in lines


def test_the_random_batch_has_the_dataset_keys_the_task_reads():
  for vit, key in (("frozen", "whole_frame_embedding"), ("unfrozen", "whole_frames")):
    config = bench_config(vit, quick=True)
    spec = bench_spec(config, cached=vit == "frozen")
    batch = random_batch(spec, 3, audio_seconds=1.0)
    assert batch[key].shape[:2] == (3, 5) and batch["valid"].all()
    assert (batch["audio_length"] == 16000).all() and not batch["audio"][:, 16000:].any()
