"""The attention benchmark's bookkeeping: merging rounds, scaling exponents, the 8K goals."""
import numpy as np
import pytest

from benchmarks.attention import merge_rounds, scaling_exponent, summarise


def _record(method, n, mode, times, rss=100.0, status="ok"):
  base = {"method": method, "n": n, "mode": mode, "batch": 1, "d_model": 512, "heads": 8,
          "status": status}
  if status != "ok":
    return {**base, "reason": "exit 1: boom"}
  median = float(np.median(times))
  return {**base, "times_s": list(times), "median_s": median, "min_s": min(times),
          "tokens_per_s": n / median, "peak_rss_mib": rss}


def test_merge_rounds_takes_the_median_of_round_medians():
  rounds = [_record("s3", 8192, "fwd", [0.40, 0.50, 0.45], rss=500),
            _record("dense_xla", 8192, "fwd", [4.0, 4.1, 4.2]),
            _record("s3", 8192, "fwd", [0.30, 0.31, 0.29], rss=520),
            _record("s3", 8192, "fwd", [0.35, 0.36, 0.90], rss=510),
            _record("s3", 8192, "fwd", [], status="failed")]
  merged = merge_rounds(rounds)
  assert [(r["method"], r["n"]) for r in merged] == [("s3", 8192), ("dense_xla", 8192)]
  s3 = merged[0]
  assert s3["round_medians_s"] == [0.45, 0.30, 0.36]
  assert s3["median_s"] == pytest.approx(0.36)
  assert s3["min_s"] == pytest.approx(0.29)
  assert len(s3["times_s"]) == 9
  assert s3["peak_rss_mib"] == 520
  assert s3["tokens_per_s"] == pytest.approx(8192 / 0.36)
  assert s3["failed_rounds"] == 1


def test_merge_rounds_keeps_a_configuration_that_always_failed():
  failed = _record("dense_xla", 16384, "fwdbwd", [], status="failed")
  assert merge_rounds([failed, dict(failed)]) == [failed]


def test_scaling_exponent_and_goals_from_planted_power_laws():
  records = []
  for n in (512, 1024, 2048, 4096, 8192, 16384):
    records.append(_record("s3", n, "fwd", [2e-5 * n]))            # exponent 1
    records.append(_record("dense_xla", n, "fwd", [1e-8 * n ** 2]))  # exponent 2
  assert scaling_exponent(records, "s3", "fwd") == pytest.approx(1.0)
  assert scaling_exponent(records, "dense_xla", "fwd") == pytest.approx(2.0)
  summary = summarise(records, ["s3", "dense_xla"], ["fwd"])
  # At 8K: dense 0.671 s, S3 0.164 s -> 4.1x, below the 10x goal.
  assert summary["speedup_8k"]["dense_xla/fwd"] == pytest.approx(1e-8 * 8192 / 2e-5)
  assert summary["goals"] == {"s3_exponent_fwd<=1.15": True,
                              "s3_8k_speedup_vs_dense_xla_fwd>=10": False}
