"""Every checkpoint the project reads or writes, with orbax: one module, one set of rules.

Layout in a training workdir:
  checkpoints/<step>/  state (train state) + meta (JSON: data-iterator position, early-stopping
                       bookkeeping) — the newest `keep` are kept; a killed run resumes from the newest.
  best/<step>/         the same, saved when the validation selection metric improves (1 kept).
A converted timm Swin (`python -m gems_jax.tools.convert_swin`) is a folder with `variables/` (orbax)
and `swin_config.json`.

orbax writes each step to a temporary folder and renames it on success, so a killed save never
leaves a half-written checkpoint that looks complete. Every restore goes through an abstract target
(ShapeDtypeStruct + sharding): the train state onto the arrays of a freshly initialised state
(`Checkpoints.restore`), and parts of a saved state (`read_variables`: params and model state, no
optimizer moments) onto any sharding, built from the checkpoint's own metadata, so a checkpoint
written on one mesh is read on another.
"""
import json
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST, BEST = "latest", "best"  # The names users pass (`--checkpoint latest`).
FOLDERS = {LATEST: "checkpoints", BEST: "best"}
SWIN_CONFIG, SWIN_VARIABLES = "swin_config.json", "variables"


def _which(which: str) -> str:
  if which not in FOLDERS:
    raise ValueError(f"checkpoint must be one of {sorted(FOLDERS)}, got {which!r}")
  return which


class Checkpoints:
  """The 'latest' and 'best' checkpoint managers of one training workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True)
    self.workdir = os.path.abspath(workdir)
    self.managers = {which: ocp.CheckpointManager(os.path.join(self.workdir, folder),
                                                  options=options(keep if which == LATEST else 1))
                     for which, folder in FOLDERS.items()}

  @property
  def latest(self) -> ocp.CheckpointManager:
    return self.managers[LATEST]

  @property
  def best(self) -> ocp.CheckpointManager:
    return self.managers[BEST]

  def save(self, step: int, state, meta: dict[str, Any], *, best: bool = False) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self.latest.save(step, args=args, force=True)
    if best:
      self.best.save(step, args=args, force=True)
    self.wait()

  def wait(self) -> None:
    for manager in self.managers.values():
      manager.wait_until_finished()

  def latest_step(self, which: str = LATEST) -> int | None:
    return self.managers[_which(which)].latest_step()

  def restore(self, state_target, which: str = LATEST, step: int | None = None):
    """Restores (state, meta) onto `state_target` (arrays or ShapeDtypeStructs with shardings).

    Returns None when the chosen manager holds no checkpoint.
    """
    manager = self.managers[_which(which)]
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(_abstract, state_target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def close(self) -> None:
    self.wait()
    for manager in self.managers.values():
      manager.close()


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def _default_sharding() -> jax.sharding.Sharding:
  """Replicated over this process's first device: what inference on one host needs."""
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def read_variables(workdir: str, which: str = BEST, keys=("params", "model_state"),
                   sharding: jax.sharding.Sharding | None = None) -> tuple[dict, dict]:
  """({key: tree} of a saved train state, meta) without the optimizer state, onto `sharding`.

  The abstract target comes from the checkpoint's metadata, so no model needs to be built first
  and the mesh it was written on does not matter.
  """
  folder = os.path.join(os.path.abspath(workdir), FOLDERS[_which(which)])
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"no {which!r} checkpoint in {workdir} (no folder {folder})")
  manager = ocp.CheckpointManager(folder, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no {which!r} checkpoint in {workdir} ({folder} holds no step)")
    saved = manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
    missing = [k for k in keys if k not in saved]
    if missing:
      raise KeyError(f"{folder}/{step}: the saved state has no {missing} (has {sorted(saved)})")
    sharding = sharding or _default_sharding()
    abstract = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                                saved[k]) for k in keys}
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                     restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
        meta=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return dict(restored.state), dict(restored.meta or {}, step=step)


def abstract_variables(module) -> dict:
  """ShapeDtypeStructs of a SwinTransformer's `module.init(...)`, without computing anything."""
  height, width = (module.img_size,) * 2 if isinstance(module.img_size, int) else module.img_size
  dummy = jax.ShapeDtypeStruct((1, height, width, module.in_chans), jax.numpy.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), dummy)


def save_converted(directory: str | os.PathLike, model_name: str, variables: dict,
                   kwargs: dict[str, Any]) -> pathlib.Path:
  """Writes a converted Swin: `DIR/variables` (orbax) and `DIR/swin_config.json`; returns DIR."""
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / SWIN_VARIABLES, variables, force=True)
  checkpointer.wait_until_finished()
  (directory / SWIN_CONFIG).write_text(
      json.dumps({"model_name": model_name, "kwargs": dict(kwargs)}, indent=2) + "\n")
  return directory


def restore_converted(directory: str | os.PathLike):
  """(SwinTransformer module, variables) from a folder written by `save_converted`."""
  from gems_jax.models.swin import create_swin
  directory = pathlib.Path(directory).absolute()
  config_path = directory / SWIN_CONFIG
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path} not found; is {directory} a converted Swin?")
  config = json.loads(config_path.read_text())
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config["kwargs"].items()}
  module = create_swin(config["model_name"], **kwargs)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_default_sharding()),
                          abstract_variables(module))
  variables = ocp.StandardCheckpointer().restore(directory / SWIN_VARIABLES, abstract)
  return module, variables


def read_face_encoder_params(path: str) -> dict:
  """FaceEmotionClassifier-shaped params {'encoder': ..., ['emotion', 'valence_arousal']} from
  a stage-1 workdir (its best checkpoint: encoder + heads) or a converted timm Swin (encoder)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, FOLDERS[BEST])):  # A stage-1 workdir.
    variables, _ = read_variables(path, BEST, keys=("params",))
    return dict(variables["params"])
  _, variables = restore_converted(path)
  encoder = dict(variables["params"])
  encoder.pop("head", None)  # GEMS uses the pooled features; the ImageNet head is not needed.
  return {"encoder": encoder}
