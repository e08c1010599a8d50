"""Every checkpoint the project reads or writes, with orbax: one module, one set of rules.

Layout in a training workdir:
  checkpoints/<step>/  state (train state) + meta (JSON: data-iterator position, early-stopping
                       bookkeeping) — the newest `keep` are kept; a killed run resumes from the newest.
  best/<step>/         the same, saved when the validation selection metric improves (1 kept).
A converted timm Swin (`python -m gems_jax.tools.convert_swin`) is a folder with `variables/` (orbax)
and `swin_config.json`; a converted timm ViT (`gems_jax.tools.convert_vit`) the same with `vit_config.json`.

orbax writes each step to a temporary folder and renames it on success, so a killed save never
leaves a half-written checkpoint that looks complete. After a save, `gems_sha256.json` in the step
folder records the SHA-256 of every file: orbax does not notice a flipped bit or a few truncated
bytes (it restores them silently), we do. A restore walks from the newest step to older ones,
skipping (and moving to `<workdir>/damaged/`) a step whose files do not match or that orbax cannot
read, with a warning that names the file. Every restore goes through an abstract target
(ShapeDtypeStruct + sharding): the train state onto the arrays of a freshly initialised state
(`Checkpoints.restore`), and parts of a saved state (`read_variables`: params and model state, no
optimizer moments) onto any sharding, built from the checkpoint's own metadata, so a checkpoint
written on one mesh is read on another.
"""
import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

LATEST, BEST = "latest", "best"  # The names users pass (`--checkpoint latest`).
FOLDERS = {LATEST: "checkpoints", BEST: "best"}
SWIN_CONFIG, SWIN_VARIABLES = "swin_config.json", "variables"
# Converted timm models: family -> the JSON config that names the model (variables: SWIN_VARIABLES).
CONVERTED_CONFIGS = {"swin": SWIN_CONFIG, "vit": "vit_config.json"}
CHECKSUMS = "gems_sha256.json"
DAMAGED = "damaged"


def _which(which: str) -> str:
  if which not in FOLDERS:
    raise ValueError(f"checkpoint must be one of {sorted(FOLDERS)}, got {which!r}")
  return which


class DamagedCheckpointError(RuntimeError):
  """A checkpoint folder whose files do not match their checksums, or that orbax cannot read."""


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _file_digests(step_dir: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(step_dir)): _sha256(p) for p in sorted(step_dir.rglob("*"))
          if p.is_file() and p.name != CHECKSUMS}


def write_checksums(step_dir: str | os.PathLike) -> None:
  """Records the SHA-256 of every file of a finished checkpoint step (atomically: tmp + rename)."""
  step_dir = pathlib.Path(step_dir)
  tmp = step_dir / (CHECKSUMS + ".tmp")
  tmp.write_text(json.dumps(_file_digests(step_dir), indent=0))
  os.replace(tmp, step_dir / CHECKSUMS)


def verify_checksums(step_dir: str | os.PathLike) -> None:
  """Raises DamagedCheckpointError naming the first missing, extra or changed file. A step without
  a checksum file (written before it existed, or killed between orbax's rename and ours) passes."""
  step_dir = pathlib.Path(step_dir)
  if not (step_dir / CHECKSUMS).is_file():
    logging.info("%s has no %s; not verified", step_dir, CHECKSUMS)
    return
  expected = json.loads((step_dir / CHECKSUMS).read_text())
  for name, digest in sorted(expected.items()):
    path = step_dir / name
    if not path.is_file():
      raise DamagedCheckpointError(f"checkpoint {step_dir} is damaged: {path} is missing")
    if _sha256(path) != digest:
      raise DamagedCheckpointError(
          f"checkpoint {step_dir} is damaged: {path} does not match its SHA-256 in {CHECKSUMS} "
          f"(size now {path.stat().st_size} bytes)")


class Checkpoints:
  """The 'latest' and 'best' checkpoint managers of one training workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True,
                                                     cleanup_tmp_directories=True)
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

  def step_dir(self, which: str, step: int) -> pathlib.Path:
    return pathlib.Path(self.workdir, FOLDERS[_which(which)], str(step))

  def save(self, step: int, state, meta: dict[str, Any], *, best: bool = False) -> None:
    """Saves to 'latest', then (if `best`) to 'best'; each step is complete or absent on disk.

    'latest' goes first: a kill between the two saves leaves a latest checkpoint whose meta names
    itself as best, which `ensure_best` repairs on resume. A failed write (e.g. a full disk)
    raises; the checkpoints saved before stay readable.
    """
    for which in (LATEST, BEST) if best else (LATEST,):
      self.save_only(which, step, state, meta)

  def ensure_best(self, state, meta: dict[str, Any]) -> None:
    """After a resume: if the restored step is the best one but 'best' does not hold it (killed
    between the two saves of `save`), saves it there."""
    step = int(state.step)
    if meta.get("best_step") == step and self.best.latest_step() != step:
      logging.warning("the run was killed between its latest and best saves of step %d; saving "
                      "the best checkpoint again", step)
      self.save_only(BEST, step, state, meta)

  def save_only(self, which: str, step: int, state, meta: dict[str, Any]) -> None:
    """Saves one step to one manager and records its checksums."""
    manager = self.managers[_which(which)]
    if step in manager.all_steps():  # A resumed run re-reaching a step it saved before it died.
      manager.delete(step)
    try:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
      manager.wait_until_finished()
      if jax.process_index() == 0:
        write_checksums(self.step_dir(which, step))
    except Exception as e:  # e.g. a full disk: orbax raises ValueError('RESOURCE_EXHAUSTED ...').
      raise OSError(f"saving checkpoint step {step} to {manager.directory} failed ({e}); the "
                    f"checkpoints saved before it are intact") from e

  def wait(self) -> None:
    for manager in self.managers.values():
      manager.wait_until_finished()

  def latest_step(self, which: str = LATEST) -> int | None:
    return self.managers[_which(which)].latest_step()

  def restore(self, state_target, which: str = LATEST, step: int | None = None):
    """Restores (state, meta) onto `state_target` (arrays or ShapeDtypeStructs with shardings).

    Without `step`, the newest step whose files match their checksums; a damaged one is moved
    aside with a warning naming the file. Returns None when the manager holds no checkpoint; raises
    DamagedCheckpointError when it holds only damaged ones (or `step` is damaged). An orbax error
    on intact files (e.g. a target whose shapes differ from the saved ones) is raised as it is.
    """
    manager = self.managers[_which(which)]
    candidates = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    problems = []
    for candidate in candidates:
      try:
        verify_checksums(self.step_dir(which, candidate))
      except DamagedCheckpointError as e:
        if step is not None:
          raise
        problems.append(str(e))
        logging.warning("%s; falling back to the previous checkpoint", e)
        self._move_aside(which, candidate)
        continue
      restored = manager.restore(candidate, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(jax.tree.map(_abstract, state_target)),
          meta=ocp.args.JsonRestore()))
      return restored.state, restored.meta
    if problems:
      raise DamagedCheckpointError(f"every {which!r} checkpoint in {self.workdir} is damaged:\n"
                                   + "\n".join(problems))
    return None

  def _move_aside(self, which: str, step: int) -> None:
    """Moves a damaged step out of the manager's folder (kept for inspection, never read again)."""
    if jax.process_index() == 0:
      target = pathlib.Path(self.workdir, DAMAGED, f"{FOLDERS[which]}-{step}-{int(time.time())}")
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.step_dir(which, step)), str(target))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"gems_move_aside_{which}_{step}")
    self.managers[which].reload()

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
    verify_checksums(os.path.join(folder, str(step)))
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
  """ShapeDtypeStructs of `module.init(...)` for an image model with `img_size` and `in_chans` fields
  (Swin, ViT), without computing anything."""
  height, width = (module.img_size,) * 2 if isinstance(module.img_size, int) else module.img_size
  dummy = jax.ShapeDtypeStruct((1, height, width, module.in_chans), jax.numpy.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), dummy)


def save_converted(directory: str | os.PathLike, model_name: str, variables: dict,
                   kwargs: dict[str, Any], family: str = "swin") -> pathlib.Path:
  """Writes a converted timm model: `DIR/variables` (orbax) and `DIR/<family>_config.json`
  (`family` a key of CONVERTED_CONFIGS); returns DIR."""
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / SWIN_VARIABLES, variables, force=True)
  checkpointer.wait_until_finished()
  (directory / CONVERTED_CONFIGS[family]).write_text(
      json.dumps({"model_name": model_name, "kwargs": dict(kwargs)}, indent=2) + "\n")
  return directory


def restore_converted(directory: str | os.PathLike):
  """(module, variables) from a folder written by `save_converted`: a SwinTransformer or, for a
  folder with `vit_config.json`, a VisionTransformer."""
  from gems_jax.models.swin import create_swin
  from gems_jax.models.vit import create_vit
  directory = pathlib.Path(directory).absolute()
  family = next((f for f, name in CONVERTED_CONFIGS.items() if (directory / name).is_file()), None)
  if family is None:
    raise FileNotFoundError(f"{directory / SWIN_CONFIG} not found; is {directory} a converted Swin "
                            f"(or ViT: {CONVERTED_CONFIGS['vit']})?")
  config = json.loads((directory / CONVERTED_CONFIGS[family]).read_text())
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config["kwargs"].items()}
  module = (create_vit if family == "vit" else create_swin)(config["model_name"], **kwargs)
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
