"""Training logs: TensorBoard event files and a JSON-lines file in the workdir (process 0 only).

`metrics.jsonl` is the record; the TensorBoard folder is derived from it. A resumed run first
drops what the killed run logged after its checkpoint (`MetricWriter.keep_only`) and rebuilds the
TensorBoard events from what is left, so neither has a step twice.
"""
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping

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
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = self._open_tensorboard(self.tensorboard_dir)

  @staticmethod
  def _open_tensorboard(directory: str, suffix: str = ""):
    from tensorboardX import SummaryWriter  # Pure Python; no TensorFlow needed.
    return SummaryWriter(directory, filename_suffix=suffix)

  def write(self, step: int, split: str, scalars: Mapping[str, object]) -> None:
    if not self.enabled:
      return
    clean = {}
    for name, value in scalars.items():
      value = _to_float(value)
      if value is None:
        continue
      clean[f"{split}/{name}"] = value if math.isfinite(value) else None
    record = {"step": int(step), "split": split, "time": time.time(), **clean}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    self._add_to_tensorboard(self._tb, record)
    self._tb.flush()

  @staticmethod
  def _add_to_tensorboard(tb, record: dict) -> None:
    for tag, value in record.items():
      if "/" in tag and value is not None:
        tb.add_scalar(tag, value, record["step"], walltime=record["time"])

  def records(self) -> list[dict]:
    """The JSONL records; a line cut short by a kill is skipped with a warning."""
    if not os.path.exists(self.jsonl_path):
      return []
    out = []
    with open(self.jsonl_path) as f:
      for number, line in enumerate(f, 1):
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          absl_logging.warning("%s:%d is not JSON (a write cut short?); dropped",
                               self.jsonl_path, number)
    return out

  def keep_only(self, keep: Callable[[dict], bool]) -> None:
    """Rewrites metrics.jsonl with the records `keep` accepts and rebuilds TensorBoard from them
    (each file replaced atomically; the JSONL is the source, so a kill in between is harmless)."""
    if not self.enabled:
      return
    kept = [r for r in self.records() if keep(r)]
    tmp = self.jsonl_path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.jsonl_path)
    self._tb.close()
    fresh = self.tensorboard_dir + ".tmp"
    shutil.rmtree(fresh, ignore_errors=True)
    tb = self._open_tensorboard(fresh)
    for record in kept:
      self._add_to_tensorboard(tb, record)
    tb.close()
    shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
    os.replace(fresh, self.tensorboard_dir)
    # File names hold the time in seconds: a suffix keeps the new file from replacing the rebuilt one.
    self._tb = self._open_tensorboard(self.tensorboard_dir, suffix=".resumed")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
