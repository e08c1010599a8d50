"""Model families, one `Task` object each, chosen once from `config.task` (see tasks/base.py)."""
from gems_jax.tasks.base import FrozenImageEncoder, Task
from gems_jax.tasks.face import FaceTask
from gems_jax.tasks.gems import GemsTask
from gems_jax.tasks.privacy_av import PrivacyAVTask

REGISTRY: dict[str, type[Task]] = {"gems": GemsTask, "face": FaceTask,
                                   "privacy_av": PrivacyAVTask}


def get_task(config, spec) -> Task:
  """The `Task` of `config.task`, bound to `config` and the dataset `spec`."""
  if config.task not in REGISTRY:
    raise ValueError(f"config.task must be one of {sorted(REGISTRY)}, got {config.task!r}")
  return REGISTRY[config.task](config, spec)
