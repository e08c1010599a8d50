"""Checkpoints with orbax: the latest ones (for resuming) and the best one (for evaluation).

Layout in the workdir:
  checkpoints/<step>/  state (train state) + meta (JSON: epoch, data-iterator position, early-stopping
                       bookkeeping) — the newest `keep` are kept; a killed run resumes from the newest.
  best/<step>/         the same, saved when the validation selection metric improves (1 kept).
orbax writes each step to a temporary folder and renames it on success, so a killed save never
leaves a half-written checkpoint that looks complete. Restores go through abstract targets
(ShapeDtypeStruct + sharding) so optax NamedTuples and the parameter sharding come back intact.
"""
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"


class Checkpoints:
  """The 'latest' and 'best' checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True)
    self.latest = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, LATEST)),
                                        options=options(keep))
    self.best = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, BEST)),
                                      options=options(1))

  def save(self, step: int, state, meta: dict[str, Any], *, best: bool = False) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self.latest.save(step, args=args, force=True)
    if best:
      self.best.save(step, args=args, force=True)
    self.wait()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def restore(self, state_target, which: str = LATEST, step: int | None = None):
    """Restores (state, meta) onto `state_target` (arrays or ShapeDtypeStructs with shardings).

    Returns None when the chosen manager holds no checkpoint.
    """
    manager = self.latest if which == LATEST else self.best
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(_abstract, state_target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
