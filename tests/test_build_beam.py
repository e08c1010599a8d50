"""The build as an Apache Beam pipeline (--runner direct): the same examples and the same report as
the plain build, in process and with 2 worker processes (direct_num_workers=2); a hung clip is
killed and reported; a rerun after a failed pipeline does not redo finished clips; a clear error
names the extra when Apache Beam is missing.

Examples are compared by clip id, feature by feature (the bytes of each serialized feature): the
record bytes of a tf.Example are not stable across processes (protobuf writes the feature map in a
per-process hash order), not even between two plain builds, while each feature's bytes are.
"""
import importlib.util
import json
import os
import shutil
import signal
import sys
import threading
import time

import numpy as np
import pytest

from gems_jax.data import tfds_writer
from preprocessing import beam_build, build, make_synthetic, pipeline, workers
from preprocessing.random_text_encoder import write_random_roberta
from test_preprocess_build import HEADER, write_faceless_clip

SMALL = ["--num_frames", "4", "--max_faces", "4", "--face_size", "32", "--detect_max_side", "480"]
HUNG = "93_1"  # In the `tiny` set: its extraction never returns.
MODES = {"in_process": [], "multi_process": [
    "--beam_options", "direct_num_workers=2,direct_running_mode=multi_processing"]}
MODE_PARAMS = [pytest.param("in_process"), pytest.param("multi_process", marks=pytest.mark.slow)]
needs_beam = pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                                reason=f"Apache Beam is not installed: {beam_build.INSTALL}")


def _extract_or_hang(clip_id, path, out_path):
  """The build's per-clip job, except that clip HUNG hangs (module level: spawned workers import
  it from here)."""
  if clip_id == HUNG:
    time.sleep(3600)
  return pipeline._extract_one(clip_id, path, out_path)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  corpus = ["A crowd walks. Background: a square. Event: a parade."] * 5
  return write_random_roberta(tmp_path_factory.mktemp("roberta"), corpus, hidden_size=24,
                              num_layers=1, num_heads=2, vocab_size=300)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """6 synthetic clips in 3 splits (faces, sound, descriptions, individual labels) and damaged
  inputs: a truncated clip, an empty file, random bytes, a text file, a bad label, an unannotated clip, an
  annotated clip without video, and (in each data_dir) a damaged cache file of a decodable clip."""
  root = tmp_path_factory.mktemp("raw")
  make_synthetic.main(["--out", str(root), "--num_clips", "6", "--seed", "3",
                       "--frames_per_clip", "8", "--width", "160", "--height", "96",
                       "--workers", "1"])
  videos = root / "videos"
  good = sorted(videos.glob("*.mp4"))
  data = good[0].read_bytes()
  (videos / "90_1.mp4").write_bytes(data[:len(data) // 2])
  (videos / "91_1.mp4").write_bytes(b"")
  (videos / "92_1.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
  (videos / "94_1.mp4").write_text("not a video\n")
  shutil.copy(good[1], videos / "95_1.mp4")  # Its label is out of range.
  shutil.copy(good[1], videos / "96_1.mp4")  # Not in the annotations.
  shutil.copy(good[2], videos / "97_1.mp4")  # Its cache file gets damaged.
  rows = ["90_1,train,1,1,0,0,1,2", "91_1,val,1,1,0,0,1,2", "92_1,test,1,1,0,0,1,2",
          "94_1,test,1,1,0,0,1,2", "95_1,train,12,1,0,0,1,2", "97_1,train,2,0,0,0,0,3",
          "98_1,train,1,1,0,0,1,2"]
  with open(root / "annotations.csv", "a") as f:
    f.write("\n".join(rows) + "\n")
  return root


def _argv(raw, encoder, data_dir, *extra):
  return ["--videos", str(raw / "videos"), "--annotations", str(raw / "annotations.csv"),
          "--descriptions", str(raw / "descriptions.jsonl"), "--individual",
          str(raw / "individual.csv"), "--text_encoder", str(encoder), "--data_dir",
          str(data_dir), *SMALL, *extra]


def _build(raw, encoder, data_dir, *extra):
  """A build with a damaged media cache file for clip 97_1; returns its report."""
  argv = _argv(raw, encoder, data_dir, *extra)
  args = build.parse_args(argv)
  work = pipeline.WorkDirs.create(data_dir, build._extract_config(args), build._text_settings(args))
  work.media_file("97_1").write_bytes(b"damaged")
  assert build.main(argv) == 0
  return json.loads((data_dir / "build_report.json").read_text())


@pytest.fixture(scope="module")
def plain(raw, encoder, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("plain")
  return data_dir, _build(raw, encoder, data_dir)


def _features(data_dir):
  return tfds_writer.serialized_features(data_dir / "gems/1.0.0")


def _comparable(report):
  """The report without what differs between two runs of one build: the command, the flags of the
  runner, the seconds each clip took, and the output folder (in paths) are left out."""
  out = {k: v for k, v in report.items() if k not in ("command", "settings", "dataset")}
  out["clips"] = {c: {k: v for k, v in e.items() if k != "seconds"}
                  for c, e in report["clips"].items()}
  return json.loads(json.dumps(out).replace(report["settings"]["data_dir"], "<data_dir>"))


@needs_beam
@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_beam_build_matches_the_plain_build(mode, raw, encoder, plain, tmp_path):
  plain_dir, plain_report = plain
  report = _build(raw, encoder, tmp_path, "--runner", "direct", *MODES[mode])
  assert _comparable(report) == _comparable(plain_report)
  assert report["settings"]["runner"] == "direct"
  clips = report["clips"]
  reasons = {c: e["reason"].split(":")[0] for c, e in clips.items() if e["status"] == "skipped"}
  assert reasons == {"90_1": "bad video", "91_1": "bad video", "92_1": "bad video",
                     "94_1": "bad video", "95_1": "bad label", "96_1": "unknown clip id",
                     "97_1": "invalid example", "98_1": "no video file"}
  assert report["splits"] == {"test": 2, "train": 3, "val": 1}
  assert sum(e.get("faces", 0) for e in clips.values()) > 0
  assert sum(e.get("individual_labels", 0) for e in clips.values()) > 0
  got, want = _features(tmp_path), _features(plain_dir)
  assert sorted(got) == sorted(want) and sum(map(len, want.values())) == 6
  for split, examples in want.items():
    assert sorted(got[split]) == sorted(examples)
    for clip_id, features in examples.items():
      assert sorted(got[split][clip_id]) == sorted(features)
      for key, value in features.items():
        assert got[split][clip_id][key] == value, (split, clip_id, key)
  # The same files (one shard per split), the same example order, the same metadata.
  assert ({s: list(e) for s, e in got.items()} == {s: list(e) for s, e in want.items()})
  assert (sorted(p.name for p in (tmp_path / "gems/1.0.0").iterdir())
          == sorted(p.name for p in (plain_dir / "gems/1.0.0").iterdir()))
  for name in ("dataset_info.json", "features.json", "gems_meta.json"):
    assert ((tmp_path / "gems/1.0.0" / name).read_bytes()
            == (plain_dir / "gems/1.0.0" / name).read_bytes()), name
  assert not list((tmp_path / "_work").glob("beam-*"))  # The run's folder is cleaned up.


@pytest.fixture
def tiny(tmp_path, encoder):
  """4 small faceless clips, one of which hangs (HUNG), and the build's flags."""
  (tmp_path / "videos").mkdir()
  rows = []
  for i in range(4):
    write_faceless_clip(tmp_path / "videos" / f"{90 + i}_1.mp4", frames=6, size=32, seed=i)
    rows.append(f"{90 + i}_1,{'train' if i < 3 else 'test'},1,1,0,0,1,2")
  (tmp_path / "ann.csv").write_text("\n".join([HEADER] + rows) + "\n")
  return ["--videos", str(tmp_path / "videos"), "--annotations", str(tmp_path / "ann.csv"),
          "--text_encoder", str(encoder), "--num_frames", "4", "--noaudio"]


@needs_beam
def test_hung_clip_is_killed_and_reported_as_in_the_plain_build(tiny, tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, "_extract_one", _extract_or_hang)
  reports = []
  for name, extra in (("plain", []), ("beam", ["--runner", "direct"])):
    assert build.main(tiny + ["--data_dir", str(tmp_path / name), "--clip_timeout", "3",
                              *extra]) == 0
    reports.append(json.loads((tmp_path / name / "build_report.json").read_text()))
  assert _comparable(reports[1]) == _comparable(reports[0])
  assert reports[1]["clips"][HUNG]["reason"] == "timeout after 3 s: the worker was killed"
  assert reports[1]["counts"]["extracted"] == 3  # The clips after it ran in a new worker.


@needs_beam
def test_rerun_after_a_failed_pipeline_does_not_redo_finished_clips(tiny, tmp_path, monkeypatch):
  data_dir = tmp_path / "out"
  calls, check_example = [], pipeline.check_example

  def raise_on_second(*args):
    """check_example, except that the second clip checked fails the whole pipeline."""
    calls.append(args[0])
    if len(calls) == 2:
      raise RuntimeError("the pipeline dies here")
    return check_example(*args)

  with monkeypatch.context() as patch:
    patch.setattr(pipeline, "check_example", raise_on_second)
    with pytest.raises(Exception, match="the pipeline dies here"):
      build.main(tiny + ["--data_dir", str(data_dir), "--runner", "direct"])
  cached = {p: p.stat().st_mtime_ns for p in data_dir.glob("_work/media-*/*.npz")}
  assert 1 <= len(cached) < 4 and not (data_dir / "gems").exists()
  assert build.main(tiny + ["--data_dir", str(data_dir), "--runner", "direct"]) == 0
  report = json.loads((data_dir / "build_report.json").read_text())
  assert (report["counts"]["from_cache"], report["counts"]["extracted"]) == (
      len(cached), 4 - len(cached))
  assert {p: p.stat().st_mtime_ns for p in cached} == cached
  assert report["splits"] == {"test": 1, "train": 3}


def test_missing_beam_names_the_extra(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` raises.
  with pytest.raises(SystemExit) as stop:
    build.main(["--videos", str(tmp_path), "--annotations", os.devnull, "--data_dir",
                str(tmp_path / "out"), "--runner", "direct"])
  assert stop.value.code == 2
  err = capsys.readouterr().err
  assert "--runner direct needs Apache Beam" in err and "pip install -e '.[beam]'" in err
  assert "apache-beam==2.77.0" in err


@pytest.mark.parametrize("argv, message", [
    (["--beam_options", "a=1"], "--beam_options needs a Beam runner"),
    (["--runner", "direct", "--num_shards", "2"], "does not take --num_shards")])
def test_beam_flag_errors(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit):
    build.parse_args(["--videos", str(tmp_path), "--annotations", os.devnull, "--data_dir",
                      str(tmp_path), *argv])
  assert message in capsys.readouterr().err


def test_pipeline_flags():
  assert beam_build.pipeline_flags("dataflow", "project=p, region=r,--temp_location=gs://b/t") == [
      "--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"]
  assert beam_build.pipeline_flags("direct", "", workers=2) == [
      "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
  assert beam_build.pipeline_flags("direct", "direct_num_workers=3", workers=2) == [
      "--runner=DirectRunner", "--direct_num_workers=3"]


def test_job_runner_times_out_survives_a_crash_and_its_calling_thread():
  """The worker of a Beam DoFn: a job past the timeout is killed, a worker that dies fails its
  job only, and a worker started from a thread that has ended still runs the next job."""
  runner = workers.JobRunner(time.sleep, os.getpid, (), timeout=2)
  try:
    thread = threading.Thread(target=runner.start)
    thread.start()
    thread.join()
    time.sleep(0.5)  # The starting thread is gone; its worker must not be.
    assert runner.run((0.01,)) == (None, None)
    assert runner.run((3600,)) == (None, "timeout after 2 s: the worker was killed")
    assert runner.run((0.01,)) == (None, None)
  finally:
    runner.close()
  crashing = workers.JobRunner(signal.raise_signal, os.getpid, (), timeout=None)
  try:
    assert crashing.run((signal.SIGCHLD,)) == (None, None)  # SIGCHLD: ignored.
    assert crashing.run((signal.SIGKILL,)) == (None, (
        "worker died: exit code -9 (a crash in a decoder, or out of memory); rerun the build to "
        "retry"))
    assert crashing.run((signal.SIGCHLD,)) == (None, None)
  finally:
    crashing.close()
