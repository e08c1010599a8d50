"""The group emotion profile of one clip: `profile.json` and a PNG contact sheet.

`build_profile` turns the model outputs of a single clip (batch of 1) into a JSON-able dict:
per sampled frame the faces with box, track id and individual-emotion probabilities; for the clip
the group emotion distribution, category, valence, arousal, situational emotions and situation,
with class names from the dataset spec. `face_emotions` says which model labelled the faces: this
run's face encoder (its individual-emotion head), or a pretrained labeller whose probabilities
replace the head's (per-face valence and arousal always come from the run). `contact_sheet` draws
the sampled frames with boxes and per-face labels beside the clip-level profile and that source.
"""
import textwrap

import numpy as np

from gems_jax.evaluation.predictions import _softmax


def _named(probs: np.ndarray, names) -> dict[str, float]:
  return {name: round(float(p), 4) for name, p in zip(names, probs)}


def build_profile(outputs: dict, example: dict, spec, *, multilabel: bool, video: str,
                  face_emotions: dict, face_probs: np.ndarray | None = None) -> dict:
  """outputs: model outputs for batch 1 (numpy); example: the extracted clip (numpy, no batch dim).

  face_emotions: the profile's `face_emotions` entry ({"source": "model" | "pretrained",
  "labelled_by": "faces labelled by ...", ...}); face_probs float32 [T, K, V]: the pretrained
  labeller's probabilities over spec.emotion_names, used instead of outputs' individual_emotion.
  """
  face_mask, step_mask = example["face_mask"], example["step_mask"]
  frames = []
  for t in np.flatnonzero(step_mask):
    faces = []
    for k in np.flatnonzero(face_mask[t]):
      probs = (face_probs[t, k] if face_probs is not None
               else _softmax(outputs["individual_emotion"][0, t, k]))
      faces.append({
          "box": [round(float(v), 1) for v in example["face_boxes"][t, k]],
          "score": round(float(example["face_scores"][t, k]), 4),
          "track_id": int(example["face_track"][t, k]),
          "emotion": spec.emotion_names[int(np.argmax(probs))],
          "emotion_probabilities": _named(probs, spec.emotion_names),
          "valence": round(float(outputs["individual_valence"][0, t, k]), 4),
          "arousal": round(float(outputs["individual_arousal"][0, t, k]), 4)})
    frames.append({"step": int(t), "frame_index": int(example["frame_index"][t]), "faces": faces})
  group = _softmax(outputs["group_emotion"][0])
  category = _softmax(outputs["group_category"][0])
  situation = _softmax(outputs["situation"][0])
  logits = outputs["situational_emotion"][0]
  situational = 1 / (1 + np.exp(-logits)) if multilabel else _softmax(logits)
  chosen = (np.flatnonzero(situational > 0.5) if multilabel else [int(np.argmax(situational))])
  num_faces = int(face_mask.sum())
  clip = {
      "group_emotion": spec.emotion_names[int(np.argmax(group))],
      "group_emotion_probabilities": _named(group, spec.emotion_names),
      "group_category": spec.group_category_names[int(np.argmax(category))],
      "group_category_probabilities": _named(category, spec.group_category_names),
      "valence": round(float(outputs["valence"][0]), 4),
      "arousal": round(float(outputs["arousal"][0]), 4),
      "valence_range": list(spec.valence_range), "arousal_range": list(spec.arousal_range),
      "situational_emotions": [spec.situational_emotion_names[c] for c in chosen],
      "situational_emotion_probabilities": _named(situational, spec.situational_emotion_names),
      "situation": spec.situation_names[int(np.argmax(situation))],
      "situation_probabilities": _named(situation, spec.situation_names)}
  profile = {"video": video, "description": str(example.get("description", "")),
             "num_sampled_frames": int(step_mask.sum()), "num_faces": num_faces,
             "face_emotions": face_emotions, "clip": clip, "frames": frames}
  if num_faces == 0:
    profile["note"] = ("no faces were detected: the clip-level profile comes from the context "
                       "(the scene description) alone")
  return profile


def contact_sheet(path: str, frames: np.ndarray, scale: float, profile: dict) -> None:
  """Saves a PNG grid of the sampled frames (uint8 [T,h,w,3], boxes scaled by `scale`) with
  per-face labels, and a text panel with the clip-level profile."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = len(profile["frames"])
  cols = min(4, max(n, 1))
  rows = -(-max(n, 1) // cols)
  fig = plt.figure(figsize=(4 * cols + 4.5, 2.6 * rows + 0.5))
  grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [1.1])
  for i, frame in enumerate(profile["frames"]):
    ax = fig.add_subplot(grid[i // cols, i % cols])
    ax.imshow(frames[frame["step"]])
    for face in frame["faces"]:
      x1, y1, x2, y2 = (v * scale for v in face["box"])
      ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", lw=1.2))
      ax.text(x1, y1 - 2, f"#{face['track_id']} {face['emotion']}", color="black", fontsize=6,
              bbox=dict(facecolor="yellow", alpha=0.8, pad=0.5, lw=0))
    ax.set_title(f"frame {frame['frame_index']}", fontsize=8)
    ax.axis("off")
  clip = profile["clip"]
  top = sorted(clip["group_emotion_probabilities"].items(), key=lambda kv: -kv[1])[:3]
  lines = ["GROUP PROFILE", "",
           f"emotion: {clip['group_emotion']}",
           *(f"   {name}: {p:.2f}" for name, p in top),
           f"category: {clip['group_category']}",
           f"valence: {clip['valence']:+.2f}   arousal: {clip['arousal']:+.2f}",
           f"situation: {clip['situation']}",
           "situational emotions:", *(f"   {s}" for s in clip["situational_emotions"] or ["(none)"]),
           "", f"faces: {profile['num_faces']} in {profile['num_sampled_frames']} frames",
           *textwrap.wrap(profile["face_emotions"]["labelled_by"], 34)]
  if "note" in profile:
    lines += ["", "no faces detected:", "profile from context alone"]
  ax = fig.add_subplot(grid[:, cols])
  ax.axis("off")
  ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
