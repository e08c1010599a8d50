"""Training logs: TensorBoard event files and a JSON-lines file in the workdir (process 0 only)."""
import json
import logging
import math
import os
import time
from collections.abc import Mapping

from absl import logging as absl_logging
import jax
import numpy as np


class _DropLibraryInfo(logging.Filter):
  """Drops INFO records of orbax/grain/tfds (dozens per checkpoint); keeps their warnings."""
  NOISY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/")

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not any(n in record.pathname for n in self.NOISY)


def quiet_library_logs() -> None:
  """Keeps the log readable: the libraries' INFO lines are dropped, unless --verbosity >= 1."""
  if absl_logging.get_verbosity() >= absl_logging.DEBUG:
    return
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
      handler.addFilter(_DropLibraryInfo())


def _to_float(value) -> float | None:
  try:
    value = float(np.asarray(value))
  except (TypeError, ValueError):
    return None
  return value


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tensorboard`.

  Each JSONL line is `{"step": s, "split": name, "time": unix_seconds, "<split>/<name>": value,
  ...}`; non-finite values are written as null so that the file stays valid JSON. TensorBoard tags
  are the same `<split>/<name>`.
  """

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # Pure Python; no TensorFlow needed.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, scalars: Mapping[str, object]) -> None:
    if not self.enabled:
      return
    clean = {}
    for name, value in scalars.items():
      value = _to_float(value)
      if value is None:
        continue
      tag = f"{split}/{name}"
      clean[tag] = value if math.isfinite(value) else None
      if math.isfinite(value):
        self._tb.add_scalar(tag, value, step)
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps({"step": int(step), "split": split, "time": time.time(), **clean}) + "\n")
    self._tb.flush()

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, f"<pre>{text}</pre>", step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
