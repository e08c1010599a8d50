r"""What does the model say about my clip? Writes a group emotion profile for any video.

  python -m gems_jax.predict --workdir runs/gems --video clip.mp4 [--description TEXT] --out DIR

Runs the PyTorch extraction stage (`python -m preprocessing.extract`: frames, MTCNN faces, tracks,
text embedding) in a subprocess with the settings the training dataset was built with, then the
trained GEMS model (best checkpoint of --workdir; with a frozen, cached encoder its weights come
from the stage-1 checkpoint named in the run's config). Writes DIR/profile.json and
DIR/contact_sheet.png. A clip without faces still gets a clip-level profile (from the description
alone) and says so. A file that is not a readable video exits with status 1 and a one-line reason.
"""
import io
import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from gems_jax import train
from gems_jax.data import input_pipeline
from gems_jax.evaluation import profile as profile_lib
from gems_jax.training import checkpointing, face_cache

FLAGS = flags.FLAGS

BUILD_REPORT = "build_report.json"  # Written by preprocessing.build in its --data_dir.
# Extraction settings of the build that predict repeats (the dataset spec gives T, K and S).
EXTRACT_FLAGS = ("fps", "face_margin", "jpeg_quality", "detect_max_side", "min_face_size",
                 "min_face_prob", "text_encoder", "text_pooling", "text_max_length")


def load_run(workdir: str):
  """(config, spec, extraction settings of the dataset's build) of a training run."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a gems_jax training workdir?")
  config = ml_collections.ConfigDict(json.load(open(path)))
  spec = input_pipeline.load_spec(config.input.data_dir)
  dataset_dir = input_pipeline.resolve_dataset_dir(config.input.data_dir)
  report = dataset_dir.parents[1] / BUILD_REPORT  # <data_dir>/<name>/<version>
  if not report.exists():
    raise FileNotFoundError(f"{report} not found: predict repeats the extraction settings of the "
                            f"build that made the training data")
  settings = json.load(open(report))["settings"]
  return config, spec, {k: settings[k] for k in EXTRACT_FLAGS if settings.get(k) is not None}


def extract(video: str, description: str, spec, build: dict, out_npz: str) -> dict:
  """Runs preprocessing.extract in a subprocess (the torch stage) and loads its output."""
  from preprocessing import cache  # numpy only
  args = [sys.executable, "-m", "preprocessing.extract", "--video", video, "--out", out_npz,
          "--description", description, "--num_frames", str(spec.num_frames),
          "--max_faces", str(spec.max_faces), "--face_size", str(spec.face_size)]
  for key, value in build.items():
    args += [f"--{key}", str(value)]
  proc = subprocess.run(args, capture_output=True, text=True)
  if proc.returncode != 0:
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    raise RuntimeError(lines[-1] if lines else f"extraction failed with status {proc.returncode}")
  return cache.load(out_npz)


def _decode(jpegs: np.ndarray, size: int) -> np.ndarray:
  out = np.zeros(jpegs.shape + (size, size, 3), np.uint8)
  for idx in zip(*np.nonzero([[len(b) > 0 for b in row] for row in jpegs])):
    out[idx] = np.asarray(Image.open(io.BytesIO(jpegs[idx])).convert("RGB"))
  return out


def model_and_variables(config, spec, workdir: str):
  """The GEMS module in crops mode and its best-checkpoint variables (+ the face encoder)."""
  model = train.create_model(config, spec)
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, checkpointing.BEST)))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no best checkpoint in {workdir}")
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  manager.close()
  params = dict(state["params"])
  branch = dict(params["face_branch"])
  if "encoder" not in branch:  # Trained on cached embeddings: the encoder is the stage-1 one.
    if not config.model.face_encoder.checkpoint:
      raise ValueError(f"{workdir} was trained on cached embeddings of a random encoder; "
                       "there are no face-encoder weights to predict with")
    branch["encoder"] = face_cache.read_face_encoder_params(
        config.model.face_encoder.checkpoint)["encoder"]
  params["face_branch"] = branch
  return model, {"params": params, **state["model_state"]}


def predict(workdir: str, video: str, description: str, out_dir: str) -> dict:
  config, spec, build = load_run(workdir)
  config.input.num_steps = max(config.input.num_steps, spec.num_frames)
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    example = extract(video, description, spec, build, os.path.join(tmp, "clip.npz"))
  model, variables = model_and_variables(config, spec, workdir)
  batch = {k: example[k][None] for k in ("step_mask", "face_mask", "text_embedding", "text_mask")}
  batch["faces"] = _decode(example["faces"], spec.face_size)[None]
  batch, _ = train.prepare_batch(config, batch)
  outputs = jax.jit(lambda v, b: model.apply(v, b, train=False))(
      variables, jax.tree.map(jnp.asarray, batch))
  outputs = jax.tree.map(np.asarray, outputs)
  result = profile_lib.build_profile(outputs, example, spec, video=os.path.abspath(video),
                                     multilabel=config.model.heads.situational == "multilabel")
  with open(os.path.join(out_dir, "profile.json"), "w") as f:
    json.dump(result, f, indent=1)
  thumbs = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) if len(b) else None
            for b in example["frame_jpegs"]]
  shape = next(t.shape for t in thumbs if t is not None)
  frames = np.stack([t if t is not None else np.zeros(shape, np.uint8) for t in thumbs])
  profile_lib.contact_sheet(os.path.join(out_dir, "contact_sheet.png"), frames,
                            shape[1] / float(example["frame_size"][0]), result)
  return result


def main(argv):
  del argv
  if not os.path.isfile(FLAGS.video):
    sys.exit(f"error: {FLAGS.video}: no such file")
  try:
    result = predict(FLAGS.workdir, FLAGS.video, FLAGS.description, FLAGS.out)
  except RuntimeError as e:  # The extraction stage's one-line reason (unreadable video, ...).
    sys.exit(f"error: {FLAGS.video}: {e}")
  clip = result["clip"]
  print(f"{FLAGS.video}: group emotion {clip['group_emotion']} ({clip['group_category']}), "
        f"valence {clip['valence']:+.2f}, arousal {clip['arousal']:+.2f}, situation "
        f"{clip['situation']}; {result['num_faces']} faces in {result['num_sampled_frames']} "
        f"frames -> {os.path.join(FLAGS.out, 'profile.json')}")


def define_flags():
  """Command-line flags (defined only when run as a program, so the demo can import `predict`)."""
  flags.DEFINE_string("workdir", None, "A GEMS training workdir (holds config.json and best/).")
  flags.DEFINE_string("video", None, "The clip (any container/codec PyAV reads).")
  flags.DEFINE_string("description", "", "Scene description (scene. Background: ... Event: ...).")
  flags.DEFINE_string("out", None, "Output folder for profile.json and contact_sheet.png.")
  flags.mark_flags_as_required(["workdir", "video", "out"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
