"""Atomic per-clip cache files: dicts of numpy arrays, strings and JPEG byte strings in one .npz.

    save(path, {"faces": faces_obj_array, "face_boxes": boxes, "clip_id": "70_25", ...})
    record = load(path)          # the same dict back (object arrays of bytes, str, arrays)

Object arrays of byte strings (the [T, K] JPEG crops) are stored as one uint8 buffer plus offsets
and the shape, so no pickle is involved and empty slots cost nothing. A file is written to a
temporary name in the same folder and renamed into place, so a killed build never leaves a
half-written cache entry that a rerun would trust.

It is part of the data contract, beside `spec.py`: the PyTorch stage (`preprocessing`) writes its
per-clip caches and the one-clip output of `python -m preprocessing.extract` with `save`, and the
JAX side reads an extracted clip with `load` (numpy only, no torch).
"""
from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any, Mapping

import numpy as np

_BYTES = "__bytes__"  # Suffixes of the three arrays that hold one byte-string array.
_STR = "__str__"


def _pack(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in record.items():
    if isinstance(value, str):
      out[key + _STR] = np.array(value)
    elif isinstance(value, np.ndarray) and value.dtype == object:
      items = [bytes(v) for v in value.ravel()]
      lengths = np.array([len(v) for v in items], np.int64)
      out[key + _BYTES + "data"] = np.frombuffer(b"".join(items), np.uint8)
      out[key + _BYTES + "offsets"] = np.concatenate([[0], np.cumsum(lengths)])
      out[key + _BYTES + "shape"] = np.array(value.shape, np.int64)
    else:
      out[key] = np.asarray(value)
  return out


def save(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
  """Writes `record` to `path` atomically (temp file in the same folder + rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **_pack(record))
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; caches may be shared between users/machines.
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def load(path: str | os.PathLike) -> dict[str, Any]:
  """The dict `save` wrote (raises ValueError naming the file if it is unreadable)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"{path}: unreadable cache file: {e}") from e
  out: dict[str, Any] = {}
  for key, value in arrays.items():
    if key.endswith(_STR):
      out[key[:-len(_STR)]] = str(value)
    elif key.endswith(_BYTES + "data"):
      name = key[:-len(_BYTES + "data")]
      offsets = arrays[name + _BYTES + "offsets"]
      buffer = value.tobytes()
      items = np.empty(len(offsets) - 1, dtype=object)
      items[:] = [buffer[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
      out[name] = items.reshape(tuple(arrays[name + _BYTES + "shape"]))
    elif _BYTES not in key:
      out[key] = value
  return out
