r"""What does the model say about my clip? Writes a group emotion profile for any video.

  python -m gems_jax.predict --workdir runs/gems --video clip.mp4 [--description TEXT] --out DIR \
      [--face_emotions auto|pretrained|model]

Runs the PyTorch extraction stage (`python -m preprocessing.extract`: frames, MTCNN faces, tracks,
text embedding) in a subprocess with the settings the training dataset was built with (its
`extract_config`, stored in the dataset's metadata), then the trained GEMS model (best checkpoint of
--workdir; with a frozen, cached encoder its weights come from the stage-1 checkpoint named in the
run's config). The clip-level heads see the clip as training did (padded or truncated to the run's
`num_steps`); the per-face emotions cover every extracted frame. Writes DIR/profile.json and
DIR/contact_sheet.png. A clip without faces still gets a clip-level profile (from the description
alone) and says so. A file that is not a readable video exits with status 1 and a one-line reason.

Per-face emotions (--face_emotions): `model` takes them from this run (its face encoder and
individual-emotion head); `pretrained` from a pretrained FER2013 network (research-only data;
gems_jax/data/face_labels.py), which runs inside the extraction subprocess (this process never
imports torch) and whose probabilities are mapped into the dataset's emotion names: the dataset's
own labeller and mapping when it was built with --individual_labels, else fer_mini_xception and
the default mapping. `auto` (the default) picks `pretrained` when everything that trained this
run's per-face emotions is synthetic, else `model`. The rule: the datasets are the run's own
(config.input.data_dir: its individual-emotion head, and the encoder when not frozen) and, through
model.face_encoder.checkpoint, the stage-1 run's (a checkpoint without config.json, e.g. converted
timm weights, trained no emotion); each is synthetic when its spec name starts with
`gems_synthetic` (the name the demo builds the synthetic world under: `preprocessing.build --name
gems_synthetic`). profile.json's `face_emotions` and the contact sheet name the model used.
Per-face valence and arousal always come from the run.

A workdir of the privacy audio-visual family (`config.task='privacy_av'`) gets the clip's group
category distribution from its whole frames and sound (its dataset's extraction runs no face
detector), and profile.json says that no face was used; --face_emotions pretrained or model is
refused there (auto is ignored).
"""
import dataclasses
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
from PIL import Image

from gems_jax import tasks
from gems_jax.data import face_labels, input_pipeline
from gems_jax.data import npz_records
from gems_jax.evaluation import profile as profile_lib
from gems_jax.models.gems import GEMS
from gems_jax.training import checkpointing
from gems_jax.training.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
FACE_CHUNK = 16  # Face crops per encoder call.
FACE_EMOTIONS = ("auto", "pretrained", "model")
SYNTHETIC_PREFIX = "gems_synthetic"  # Dataset names of the synthetic world (see the docstring).
DEFAULT_LABELLER = "fer_mini_xception"


def load_run(workdir: str):
  """(config, spec of the dataset the run was built from) of a GEMS training workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a gems_jax training workdir?")
  config = ml_collections.ConfigDict(json.load(open(path)))
  if config.task not in PREDICTORS:
    raise ValueError(f"{workdir} trained config.task={config.task!r}; predict knows "
                     f"{sorted(PREDICTORS)}")
  spec = input_pipeline.load_spec(config.input.data_dir)
  if not spec.extract_config:
    raise ValueError(f"the dataset {config.input.data_dir} records no extract_config (it was not "
                     "made by preprocessing.build from videos), so its extraction cannot be repeated")
  return config, spec


def extract(video: str, description: str, spec, tmp: str, labeller: str = face_labels.NONE
            ) -> dict:
  """Runs preprocessing.extract in a subprocess (the torch stage) and loads its record; with a
  labeller (face_labels.LABELLERS key) the record has face_fer_probs float32 [T, K, 7]."""
  config_path, out = os.path.join(tmp, "extract_config.json"), os.path.join(tmp, "clip.npz")
  extract_config = dict(spec.extract_config)
  if spec.kind == "faces":  # The build's labeller is only needed when its labels are wanted.
    extract_config["individual_labels"] = labeller
  with open(config_path, "w") as f:
    json.dump(extract_config, f)
  args = [sys.executable, "-m", "preprocessing.extract", "--video", video, "--out", out,
          "--description", description, "--extract_config", config_path]
  proc = subprocess.run(args, capture_output=True, text=True)
  if proc.returncode != 0:
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    raise RuntimeError(lines[-1] if lines else f"extraction failed with status {proc.returncode}")
  return npz_records.load(out)


def _decode(jpegs: np.ndarray, height: int, width: int) -> np.ndarray:
  """JPEG bytes [...] -> uint8 [..., H, W, 3] (zeros where a slot is empty)."""
  out = np.zeros(jpegs.shape + (height, width, 3), np.uint8)
  for idx in np.ndindex(jpegs.shape):
    if len(jpegs[idx]):
      out[idx] = np.asarray(Image.open(io.BytesIO(jpegs[idx])).convert("RGB"))
  return out


def model_and_variables(config, spec, workdir: str):
  """The run's task on face crops, and its best-checkpoint variables (+ the face encoder)."""
  crops_spec = dataclasses.replace(spec, storage="crops", embed_dim=0)
  task = tasks.get_task(config, crops_spec)
  variables, _ = checkpointing.read_variables(workdir, checkpointing.BEST)
  params = dict(variables["params"])
  branch = dict(params["face_branch"])
  if "encoder" not in branch:  # Trained on cached embeddings: the encoder is the stage-1 one.
    if not config.model.face_encoder.checkpoint:
      raise ValueError(f"{workdir} was trained on cached embeddings of a random encoder; "
                       "there are no face-encoder weights to predict with")
    branch["encoder"] = checkpointing.read_face_encoder_params(
        config.model.face_encoder.checkpoint)["encoder"]
  params["face_branch"] = branch
  return task, {"params": params, **variables["model_state"]}


def encode_faces(task, variables, crops: np.ndarray, face_mask: np.ndarray, chunk: int = FACE_CHUNK
                 ) -> np.ndarray:
  """Face features [T,K,E] (0 in empty slots) of the real faces only, `chunk` crops per call, so
  memory does not depend on T x K (the paper's 96 steps x 8 slots would be 768 Swin-B images)."""
  encode = jax.jit(lambda v, c: task.model.apply(v, c, method=GEMS.encode_faces))
  slots = np.argwhere(face_mask)
  rows = []
  for start in range(0, len(slots), chunk):
    part = slots[start:start + chunk]
    batch = np.zeros((chunk,) + crops.shape[-3:], np.uint8)
    batch[:len(part)] = crops[tuple(part.T)]
    rows.append(np.asarray(encode(variables, batch))[:len(part)])
  width = jax.eval_shape(encode, variables, jax.ShapeDtypeStruct((chunk,) + crops.shape[-3:],
                                                                  jnp.uint8)).shape[-1]
  feats = np.zeros(face_mask.shape + (width,), np.float32)
  if rows:
    feats[tuple(slots.T)] = np.concatenate(rows)
  return feats


def _emotion_datasets(config) -> list[str]:
  """Names of the datasets that trained a run's per-face emotions (see the module docstring),
  '<unreadable DIR>' for one whose spec cannot be read."""
  names, seen = [], set()
  while True:
    try:
      names.append(input_pipeline.load_spec(config.input.data_dir).name)
    except (OSError, ValueError):
      names.append(f"<unreadable {config.input.data_dir}>")
    checkpoint = config.model.face_encoder.get("checkpoint", "")
    stage1 = os.path.join(checkpoint, "config.json")
    if not checkpoint or checkpoint in seen or not os.path.exists(stage1):
      return names
    seen.add(checkpoint)
    with open(stage1) as f:
      config = ml_collections.ConfigDict(json.load(f))


def face_emotion_source(config, spec, choice: str = "auto") -> dict:
  """The profile's `face_emotions`: {"source": "model" | "pretrained", "labelled_by": "faces
  labelled by ...", "rule": why} and, for "pretrained", "labeller" and "mapping".

  Raises ValueError for an unknown choice, or for "pretrained"/"model" on a workdir whose dataset
  has no faces (a privacy audio-visual run); "auto" there gives {"source": None, ...}.
  """
  if choice not in FACE_EMOTIONS:
    raise ValueError(f"--face_emotions {choice!r}: choose one of {list(FACE_EMOTIONS)}")
  if config.task != "gems":
    if choice != "auto":
      raise ValueError(f"--face_emotions {choice} is refused: the workdir's dataset "
                       f"({spec.name!r}, kind {spec.kind!r}) has no faces; predict uses none")
    return {"source": None, "labelled_by": "no face is used", "rule": "no faces"}
  if choice == "auto":
    names = _emotion_datasets(config)
    synthetic = all(name.startswith(SYNTHETIC_PREFIX) for name in names)
    choice = "pretrained" if synthetic else "model"
    rule = (f"auto: this run's per-face emotions were trained on {', '.join(dict.fromkeys(names))}, "
            + ("synthetic only" if synthetic else f"not only synthetic ({SYNTHETIC_PREFIX}*)"))
  else:
    rule = f"--face_emotions {choice}"
  if choice == "model":
    return {"source": "model", "labelled_by": "faces labelled by this run's face encoder",
            "rule": rule}
  labeller = spec.individual_labels if spec.individual_labels != face_labels.NONE else (
      DEFAULT_LABELLER)
  mapping = spec.individual_label_mapping or face_labels.DEFAULT_MAPPING
  face_labels.mapping_matrix(mapping, spec.emotion_names)  # Fails now, not after extraction.
  return {"source": "pretrained", "labeller": labeller, "mapping": dict(mapping),
          "labelled_by": f"faces labelled by {face_labels.describe(labeller)}", "rule": rule,
          "note": "FER2013 is generally treated as research-only data"}


def predict(workdir: str, video: str, description: str, out_dir: str,
            face_emotions: str = "auto") -> dict:
  """Writes out_dir/profile.json (and a contact sheet) for `video`; returns the profile.
  face_emotions: 'auto' | 'pretrained' | 'model' (see the module docstring)."""
  config, spec = load_run(workdir)
  source = face_emotion_source(config, spec, face_emotions)
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    example = extract(video, description, spec, tmp, source.get("labeller", face_labels.NONE))
  result = PREDICTORS[config.task](config, spec, workdir, example, os.path.abspath(video), out_dir,
                                   source)
  with open(os.path.join(out_dir, "profile.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result


def _predict_gems(config, spec, workdir, example, video, out_dir, source) -> dict:
  """The GEMS profile (clip heads, per-face emotions from `source`: face_emotion_source) and its
  contact sheet."""
  task, variables = model_and_variables(config, spec, workdir)
  clip = {k: example[k][None] for k in ("step_mask", "face_mask", "text_embedding", "text_mask")}
  crops = _decode(example["faces"], spec.face_size, spec.face_size)
  clip["face_embedding"] = encode_faces(task, variables, crops, example["face_mask"])[None]
  batch, _ = task.prepare_batch(clip)  # The training rule: pad or truncate to the run's steps.
  apply = jax.jit(lambda v, b, **kw: task.model.apply(v, b, train=False, **kw),
                  static_argnames="method")
  outputs = jax.tree.map(np.asarray, apply(variables, jax.tree.map(jnp.asarray, batch)))
  faces = {k: jnp.asarray(clip[k]) for k in ("face_embedding", "face_mask")}
  outputs.update(jax.tree.map(np.asarray, apply(variables, faces, method=GEMS.individual)))
  face_probs = (face_labels.to_vocabulary(example["face_fer_probs"], source["mapping"],
                                          spec.emotion_names)
                if source["source"] == "pretrained" else None)
  result = profile_lib.build_profile(outputs, example, spec, video=video,
                                     multilabel=config.model.heads.situational == "multilabel",
                                     face_emotions=source, face_probs=face_probs)
  result["model_steps"] = config.input.num_steps
  thumbs = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) if len(b) else None
            for b in example["frame_jpegs"]]
  shape = next(t.shape for t in thumbs if t is not None)
  frames = np.stack([t if t is not None else np.zeros(shape, np.uint8) for t in thumbs])
  profile_lib.contact_sheet(os.path.join(out_dir, "contact_sheet.png"), frames,
                            shape[1] / float(example["frame_size"][0]), result)
  return result


def _predict_audio_visual(config, spec, workdir, example, video, out_dir, source) -> dict:
  """The group category distribution of the privacy audio-visual model (no face is used)."""
  del out_dir, source
  frames_spec = dataclasses.replace(spec, whole_frame_embed_dim=0)
  task = tasks.get_task(config, frames_spec)
  variables, _ = checkpointing.read_variables(workdir, checkpointing.BEST)
  params = dict(variables["params"])
  uses_video = config.model.mode != "audio"
  if uses_video and "video_encoder" not in params:  # Trained on cached frame embeddings.
    if not config.model.video_encoder.checkpoint:
      raise ValueError(f"{workdir} was trained on cached embeddings of a random video encoder; "
                       "there are no encoder weights to predict with")
    params["video_encoder"] = task.video_encoder_params()
  batch = {k: np.asarray(example[k])[None] for k in ("audio", "audio_length", "has_audio",
                                                       "whole_frame_mask") if k in example}
  if uses_video:
    batch["whole_frames"] = _decode(example["whole_frames"], *spec.whole_frame_size)[None]
  logits = task.model.apply({"params": params, **variables["model_state"]},
                            jax.tree.map(jnp.asarray, batch), train=False)["group_category"]
  probs = np.asarray(jax.nn.softmax(logits[0].astype(jnp.float32)))
  names = spec.group_category_names
  return {"video": video, "model": "privacy_av", "mode": config.model.mode, "faces_used": False,
          "clip": {"group_category": names[int(np.argmax(probs))],
                   "group_category_probabilities": dict(zip(names, np.round(probs, 4).tolist()))},
          "has_audio": bool(example.get("has_audio", False)),
          "audio_note": str(example.get("audio_reason", "")),
          "num_whole_frames": int(np.sum(example.get("whole_frame_mask", 0)))}


PREDICTORS = {"gems": _predict_gems, "privacy_av": _predict_audio_visual}


def main(argv):
  del argv
  quiet_library_logs()
  if not os.path.isfile(FLAGS.video):
    sys.exit(f"error: {FLAGS.video}: no such file")
  try:
    result = predict(FLAGS.workdir, FLAGS.video, FLAGS.description, FLAGS.out,
                     FLAGS.face_emotions)
  except RuntimeError as e:  # The extraction stage's one-line reason (unreadable video, ...).
    sys.exit(f"error: {FLAGS.video}: {e}")
  except ValueError as e:  # A flag or workdir that does not fit (e.g. --face_emotions).
    sys.exit(f"error: {e}")
  clip = result["clip"]
  if not result.get("faces_used", True):
    print(f"{FLAGS.video}: group category {clip['group_category']} "
          f"{clip['group_category_probabilities']} (no face used; audio: {result['has_audio']}) -> "
          f"{os.path.join(FLAGS.out, 'profile.json')}")
    return
  print(f"{FLAGS.video}: group emotion {clip['group_emotion']} ({clip['group_category']}), "
        f"valence {clip['valence']:+.2f}, arousal {clip['arousal']:+.2f}, situation "
        f"{clip['situation']}; {result['num_faces']} faces in {result['num_sampled_frames']} "
        f"frames ({result['face_emotions']['labelled_by']}) -> "
        f"{os.path.join(FLAGS.out, 'profile.json')}")


def define_flags():
  """Command-line flags (defined only when run as a program, so the demo can import `predict`)."""
  flags.DEFINE_string("workdir", None, "A GEMS training workdir (holds config.json and best/).")
  flags.DEFINE_string("video", None, "The clip (any container/codec PyAV reads).")
  flags.DEFINE_string("description", "", "Scene description (scene. Background: ... Event: ...).")
  flags.DEFINE_string("out", None, "Output folder for profile.json and contact_sheet.png.")
  flags.DEFINE_enum("face_emotions", "auto", FACE_EMOTIONS,
                    "Per-face emotions from a pretrained FER2013 network (research-only data), "
                    "from this run's face encoder (model), or auto: pretrained when the run's "
                    "per-face emotions were trained on synthetic data only (gems_synthetic*).")
  flags.mark_flags_as_required(["workdir", "video", "out"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
