"""Host-side batch preparation: fixed sequence length, numeric keys only, face-level batches.

Batches arrive from `gems_jax.data.input_pipeline` as dicts of numpy arrays with a leading batch
dim b (see the data contract in gems_jax/data/spec.py). Before they go to devices:
  * the step axis T of the dataset is padded or truncated to the model's N (`fit_steps`);
  * strings stay on the host (`split_host_keys`);
  * for stage-1 face training, the labelled faces of a batch are gathered into a fixed-size
    face batch (`face_batch`), so the encoder never runs on empty slots.
"""
from collections.abc import Mapping

import numpy as np

from gems_jax.data.spec import FILL_VALUES, STRING_KEYS

# Keys whose axis 1 is the step axis T.
STEP_KEYS = ("frame_index", "step_mask", "faces", "face_embedding", "face_boxes", "face_scores",
             "face_track", "face_mask", "individual_emotion", "individual_valence",
             "individual_arousal", "individual_emotion_probs", "individual_emotion_auto")


def fit_steps(batch: Mapping[str, np.ndarray], num_steps: int) -> dict[str, np.ndarray]:
  """Pads (with masked, unlabelled steps) or truncates the step axis to `num_steps`."""
  out = dict(batch)
  for key in STEP_KEYS:
    if key not in batch:
      continue
    x = batch[key]
    t = x.shape[1]
    if t > num_steps:
      out[key] = x[:, :num_steps]
    elif t < num_steps:
      pad = np.full((x.shape[0], num_steps - t) + x.shape[2:], FILL_VALUES.get(key, 0), x.dtype)
      out[key] = np.concatenate([x, pad], axis=1)
  return out


def split_host_keys(batch: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
  """(numeric arrays for devices, host-only values such as clip ids)."""
  numeric = {k: v for k, v in batch.items() if k not in STRING_KEYS and v.dtype != object}
  host = {k: v for k, v in batch.items() if k not in numeric}
  return numeric, host


def labelled_faces(batch: Mapping[str, np.ndarray]) -> np.ndarray:
  """int [n, 3]: (b, t, k) of every face whose slot is filled, example valid, emotion labelled."""
  labelled = batch["face_mask"] & (batch["individual_emotion"] >= 0) & batch["valid"][:, None, None]
  return np.argwhere(labelled)


def face_batch(batch: Mapping[str, np.ndarray], size: int, rng: np.random.Generator | None = None,
               start: int = 0) -> dict[str, np.ndarray]:
  """Gathers up to `size` labelled faces of a clip batch into a batch of one-face "clips".

  Output shapes keep the [b, T, K] convention with T = K = 1 (faces [size,1,1,S,S,3], labels and
  face_mask [size,1,1], valid [size]), so the same losses and metrics apply. A face counts when its
  slot holds a face, its example is valid and its emotion is labelled. With `rng`, a random subset
  is taken when there are more; without, the `size` faces from the `start`-th on, in order.
  """
  idx = labelled_faces(batch)
  if rng is not None and len(idx) > size:
    idx = idx[np.sort(rng.choice(len(idx), size, replace=False))]
  idx = idx[start:start + size]
  sel = tuple(idx.T)
  n = len(idx)

  def gather(key):
    src = batch[key]
    out = np.full((size, 1, 1) + src.shape[3:], FILL_VALUES.get(key, 0), src.dtype)
    out[:n, 0, 0] = src[sel]
    return out

  out = {key: gather(key) for key in ("faces", "individual_emotion", "individual_valence",
                                      "individual_arousal")}
  out["valid"] = np.arange(size) < n
  out["face_mask"] = out["valid"][:, None, None].copy()
  return out
