"""Per-clip predictions of an evaluated split, written as JSONL (everything) and CSV (one row a clip).

Each JSONL line holds the clip id, and per head the predicted class name, the class probabilities
(softmax; sigmoid for multi-label situational emotions), the ground truth, and for valence/arousal
the predicted and true values on the dataset's declared scale. A label the clip does not have (a
partially labelled clip: situation -1, no situational emotion, NaN valence/arousal; see
`spec.MISSING_LABELS`) is written as null.
"""
import csv
import json
import os

import numpy as np

HEADS = (("group_emotion", "emotion_names"), ("group_category", "group_category_names"),
         ("situation", "situation_names"), ("situational_emotion", "situational_emotion_names"))


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def clip_rows(outputs: dict, labels: dict, host: dict, spec, multilabel: bool) -> list[dict]:
  """One dict per valid clip of a batch (outputs, labels: numpy arrays with batch dim b)."""
  rows = []
  for i in np.flatnonzero(labels["valid"]):
    row = {"clip_id": str(host["clip_id"][i]) if "clip_id" in host else str(i)}
    for head, names_field in HEADS:
      names = getattr(spec, names_field)
      logits = outputs[head][i]
      if head == "situational_emotion":
        probs = 1 / (1 + np.exp(-logits)) if multilabel else _softmax(logits)
        chosen = np.flatnonzero(probs > 0.5) if multilabel else [int(np.argmax(probs))]
        true = [names[c] for c in np.flatnonzero(labels[head][i] > 0.5)]
        row[head] = {"predicted": [names[c] for c in chosen],
                     "probabilities": dict(zip(names, np.round(probs, 4).tolist())),
                     "true": true or None}
      else:
        probs = _softmax(logits)
        label = int(labels[head][i])
        row[head] = {"predicted": names[int(np.argmax(probs))],
                     "probabilities": dict(zip(names, np.round(probs, 4).tolist())),
                     "true": names[label] if label >= 0 else None}
    for head in ("valence", "arousal"):
      true = float(labels[head][i])
      row[head] = {"predicted": round(float(outputs[head][i]), 4),
                   "true": true if np.isfinite(true) else None}
    rows.append(row)
  return rows


def face_rows(outputs: dict, labels: dict, spec) -> list[dict]:
  """Stage-1 ('face' task) predictions: one row per labelled face (face batches are [n,1,1])."""
  rows = []
  for i in np.flatnonzero(labels["valid"]):
    probs = _softmax(outputs["individual_emotion"][i].reshape(-1))
    rows.append({"face": len(rows), "predicted": spec.emotion_names[int(np.argmax(probs))],
                 "true": spec.emotion_names[int(labels["individual_emotion"][i].item())],
                 "confidence": round(float(probs.max()), 4),
                 "valence": round(float(outputs["individual_valence"][i].item()), 4),
                 "arousal": round(float(outputs["individual_arousal"][i].item()), 4)})
  return rows


def write_predictions(out_dir: str, rows: list[dict]) -> str:
  """Writes predictions.jsonl (the rows) and predictions.csv (one column a field, the predicted
  value of each head); rows come from `clip_rows` or `face_rows`, through the run's task."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  flat = [{k: (v["predicted"] if isinstance(v, dict) else v) for k, v in row.items()} for row in rows]
  with open(os.path.join(out_dir, "predictions.csv"), "w", newline="") as f:
    if flat:
      writer = csv.DictWriter(f, fieldnames=list(flat[0]))
      writer.writeheader()
      for row in flat:
        writer.writerow({k: ";".join(v) if isinstance(v, list) else v for k, v in row.items()})
  return os.path.join(out_dir, "predictions.jsonl")
