"""Small GEMS training configurations over the planted-signal dataset (the `planted_dir` fixture)."""
from configs import gems as gems_config


def small_config(data_dir: str, **overrides):
  """configs/gems.py:runlocal on `data_dir`, batch 16, frozen encoder; overrides 'section.key'."""
  config = gems_config.get_config("runlocal")
  config.input.data_dir = data_dir
  config.input.batch_size = 16
  config.eval.batch_size = 16
  config.model.face_encoder.frozen = True
  config.train.log_every_steps = 4
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config
