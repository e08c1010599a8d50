"""Bad input files and killed builds: a clear error naming the input, or the clip skipped with the
reason in build_report.json while the build goes on; a hung clip times out; a partially labelled
clip is kept with its missing targets masked; a SIGKILLed build resumes to the dataset an
uninterrupted build writes."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from gems_jax import predict
from gems_jax.data import input_pipeline
from gems_jax.training import losses
from preprocessing import build, pipeline, workers
from preprocessing.random_text_encoder import write_random_roberta
from test_preprocess_build import HEADER, write_faceless_clip

REPO = pathlib.Path(__file__).resolve().parents[1]
HUNG = "80_1"  # Its extraction never returns.
DESCRIPTION = "A crowd waits. Background: a hall. Event: a show starts."
SMALL = ["--num_frames", "4", "--max_faces", "4", "--face_size", "32", "--detect_max_side", "480"]


def _extract_or_hang(clip_id, path, out_path):
  """The build's per-clip job, except that clip HUNG hangs (as a decoder stuck in C code would).

  Module level, so the spawned worker processes import it from here."""
  if clip_id == HUNG:
    time.sleep(3600)
  return pipeline._extract_one(clip_id, path, out_path)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  corpus = [DESCRIPTION, "A crowd walks under an arcade."] * 5
  return pathlib.Path(write_random_roberta(tmp_path_factory.mktemp("roberta"), corpus,
                                           hidden_size=24, num_layers=1, num_heads=2,
                                           vocab_size=300))


@pytest.fixture(scope="module")
def odd(tmp_path_factory, encoder):
  """One build of odd but usable inputs: CSV and JSONL with a UTF-8 BOM, an id given with its
  extension, an id with '/', partially labelled clips, a clip that hangs (5 s timeout), and a
  --text_encoder relative to the working directory."""
  root = tmp_path_factory.mktemp("odd")
  (root / "videos").mkdir()
  for i, clip_id in enumerate((HUNG, "81_1", "82_1", "83_1")):
    write_faceless_clip(root / "videos" / f"{clip_id}.mp4", frames=6, size=32, seed=i)
  rows = [HEADER, f"{HUNG},train,1,1,0,0,1,2", "81_1.mp4,train,2,0,,0.25,,7",
          "82_1,test,3,2,0.5,,4,", "83_1,test,1,1,0,0,1,2", "84/1,test,1,1,0,0,1,2"]
  (root / "ann.csv").write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
  (root / "desc.jsonl").write_text(json.dumps({"clip_id": "81_1", "description": DESCRIPTION})
                                   + "\n", encoding="utf-8-sig")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(pipeline, "_extract_one", _extract_or_hang)
    patch.chdir(encoder.parent)
    status = build.main(["--videos", str(root / "videos"), "--annotations", str(root / "ann.csv"),
                         "--descriptions", str(root / "desc.jsonl"), "--data_dir",
                         str(root / "data"), "--text_encoder", encoder.name, "--clip_timeout", "5",
                         *SMALL])
  assert status == 0
  return root, json.loads((root / "data" / "build_report.json").read_text())


def test_bom_ids_with_extension_and_bad_ids(odd):
  _, report = odd
  clips = report["clips"]
  assert {c for c, e in clips.items() if e["status"] == "ok"} == {"81_1", "82_1", "83_1"}
  assert clips["84/1"]["reason"].startswith("bad clip id: '84/1' contains ['/']")
  assert "(ann.csv:6 '84/1')" in clips["84/1"]["reason"]
  assert not any("no description" in w for w in clips["81_1"]["warnings"])  # JSONL with a BOM.


def test_workers_kill_a_hung_job_and_isolate_a_crash():
  """The pool behind the face stage: a job past the timeout is killed, a job whose worker dies
  (SIGKILL, as the out-of-memory killer sends) fails alone, and later jobs run in new workers."""
  slept = list(workers.run_jobs([(0.01,), (3600,), (0.01,)], time.sleep, os.getpid, (),
                                workers=1, timeout=2))
  assert [(job, failure) for job, _, failure in slept] == [
      ((0.01,), None), ((3600,), "timeout after 2 s: the worker was killed"), ((0.01,), None)]
  jobs = [(signal.SIGCHLD,), (signal.SIGKILL,), (signal.SIGCHLD,)]  # SIGCHLD: ignored.
  signalled = list(workers.run_jobs(jobs, signal.raise_signal, os.getpid, (), workers=1,
                                    timeout=None))
  assert [failure for _, _, failure in signalled] == [
      None, "worker died: exit code -9 (a crash in a decoder, or out of memory); rerun the "
            "build to retry", None]


def test_hung_clip_times_out_and_the_build_goes_on(odd):
  _, report = odd
  hung = report["clips"][HUNG]
  assert hung["status"] == "skipped" and hung["reason"].startswith("timeout after 5 s")
  assert report["counts"]["extracted"] == 3  # Clips after it ran in a new worker.
  assert report["splits"] == {"test": 2, "train": 1}


def test_partially_labelled_clips_are_kept_and_masked_in_the_losses(odd):
  root, _ = odd
  batch = next(input_pipeline.iterate_split_once(root / "data", "test", batch_size=2,
                                                 decode=()))
  train = next(input_pipeline.iterate_split_once(root / "data", "train", batch_size=1,
                                                 decode=()))
  assert list(batch["clip_id"]) == ["82_1", "83_1"] and train["clip_id"][0] == "81_1"
  assert np.isnan(batch["arousal"][0]) and batch["situation"][0] == -1
  assert batch["valence"][0] == 0.5 and batch["situational_emotion"][0].nonzero()[0].tolist() == [4]
  assert np.isnan(train["valence"][0]) and not train["situational_emotion"][0].any()
  assert train["arousal"][0] == 0.25 and train["situation"][0] == 7
  rng = np.random.default_rng(0)
  outputs = {"group_emotion": rng.normal(size=(2, 9)), "group_category": rng.normal(size=(2, 3)),
             "valence": rng.normal(size=2), "arousal": rng.normal(size=2),
             "situational_emotion": rng.normal(size=(2, 10)), "situation": rng.normal(size=(2, 10))}
  config = losses.default_loss_config()
  config["weights"].update(individual_emotion=0.0, individual_va=0.0)
  _, terms = losses.gems_losses(outputs, batch, config)
  assert np.isfinite(list(terms.values())).all()
  np.testing.assert_allclose(terms["arousal"], (outputs["arousal"][1] - batch["arousal"][1])**2,
                             rtol=1e-5)  # Clip 82_1 misses arousal: only 83_1 counts.


def test_predict_extracts_as_the_build_did_from_another_directory(odd, encoder, tmp_path,
                                                                   monkeypatch):
  """The build stored the relative --text_encoder as an absolute path, so the predict tool's
  extraction (a subprocess) finds it from any working directory."""
  root, _ = odd
  spec = input_pipeline.load_spec(root / "data")
  assert spec.extract_config["text_encoder"] == str(encoder)
  monkeypatch.chdir(tmp_path)
  record = predict.extract(str(root / "videos" / "81_1.mp4"), DESCRIPTION, spec, str(tmp_path))
  train = next(input_pipeline.iterate_split_once(root / "data", "train", batch_size=1,
                                                 decode=()))
  assert record["text_mask"].all()
  np.testing.assert_allclose(record["text_embedding"], train["text_embedding"][0], atol=1e-5)


@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_annotations_that_are_not_a_file_stop_before_any_work(kind, tmp_path, capsys):
  annotations = tmp_path / "annotations"
  if kind == "folder":
    annotations.mkdir()
  with pytest.raises(SystemExit) as stop:
    build.main(["--videos", str(tmp_path), "--annotations", str(annotations),
                "--data_dir", str(tmp_path / "out")])
  assert stop.value.code == 2
  message = {"folder": "is a folder, not a file", "missing": "no such file"}[kind]
  assert f"--annotations {annotations}: {message}" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def _cached_clips(data_dir):
  return sorted(p.stem for p in data_dir.glob("_work/media-*/*.npz"))


def _kill_after_one_more_clip(command, data_dir):
  """Runs the build until it has cached one more clip, then SIGKILLs it (not its workers)."""
  before = len(_cached_clips(data_dir))
  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  while len(_cached_clips(data_dir)) == before:
    assert proc.poll() is None, "the build ended before it could be killed"
    time.sleep(0.01)
  workers = psutil.Process(proc.pid).children(recursive=True)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  _, alive = psutil.wait_procs(workers, timeout=60)
  assert not alive, "a worker outlived the killed build"
  assert not (data_dir / "gems").exists()


def _dataset(data_dir):
  """{clip_id: example} of every split, faces as JPEG bytes."""
  out = {}
  for split in input_pipeline.split_names(data_dir):
    for batch in input_pipeline.iterate_split_once(data_dir, split, batch_size=1,
                                                   decode=()):
      out[batch["clip_id"][0]] = {k: v[0] for k, v in batch.items()}
  return out


@pytest.mark.slow
def test_killed_build_resumes_to_the_uninterrupted_dataset(tmp_path, encoder):
  subprocess.run([sys.executable, "-m", "preprocessing.make_synthetic", "--out", str(tmp_path),
                  "--num_clips", "5", "--seed", "1", "--frames_per_clip", "8", "--width", "160",
                  "--height", "96", "--workers", "1"], cwd=REPO, check=True,
                 stdout=subprocess.DEVNULL)
  args = ["--videos", str(tmp_path / "videos"), "--annotations", str(tmp_path / "annotations.csv"),
          "--descriptions", str(tmp_path / "descriptions.jsonl"), "--individual",
          str(tmp_path / "individual.csv"), "--text_encoder", str(encoder), *SMALL]
  resumed, reference = tmp_path / "resumed", tmp_path / "reference"
  command = [sys.executable, "-m", "preprocessing.build", *args, "--data_dir", str(resumed)]
  _kill_after_one_more_clip(command, resumed)
  _kill_after_one_more_clip(command, resumed)  # The rerun, killed after it cached a clip.
  cached = len(_cached_clips(resumed))
  assert 2 <= cached < 5
  subprocess.run(command, cwd=REPO, check=True, capture_output=True)
  assert build.main([*args, "--data_dir", str(reference)]) == 0

  got, want = _dataset(resumed), _dataset(reference)
  assert sorted(got) == sorted(want) and len(want) == 5
  for clip_id, example in want.items():
    assert sorted(got[clip_id]) == sorted(example)
    for key, value in example.items():
      np.testing.assert_array_equal(got[clip_id][key], value, err_msg=f"{clip_id} {key}")
  reports = [json.loads((d / "build_report.json").read_text()) for d in (resumed, reference)]
  assert (reports[0]["counts"]["from_cache"], reports[0]["counts"]["extracted"]) == (
      cached, 5 - cached)
  per_run = ("extracted", "from_cache", "text_encoded")
  counts = [{k: v for k, v in r["counts"].items() if k not in per_run} for r in reports]
  assert counts[0] == counts[1] and reports[0]["splits"] == reports[1]["splits"]
  outcomes = [{c: (e["status"], e.get("reason"), e.get("faces")) for c, e in r["clips"].items()}
              for r in reports]
  assert outcomes[0] == outcomes[1]
