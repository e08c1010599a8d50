r"""Stage 1 of GEMS: fine-tune the Swin face encoder as an individual-emotion classifier.

The paper trains its Swin-B "emotion encoder" on face crops with individual emotion labels and then
freezes it inside GEMS ([paper] Fig. 3; the authors' release has no code for this stage). Same
training library, data and flags as configs/gems.py; only `task`, the optimiser and the loss
weights differ. Initialise from timm weights converted with `python -m gems_jax.tools.convert_swin`
via --config.model.face_encoder.checkpoint=DIR.

  python -m gems_jax.main --config configs/face_emotion.py --config.input.data_dir=DATA \
      --workdir runs/faces
  python -m gems_jax.main --config configs/gems.py --config.input.data_dir=DATA \
      --config.model.face_encoder.checkpoint=runs/faces --workdir runs/gems
"""
from configs import gems


def get_config(arg: str | None = None):
  config = gems.get_config(arg)
  config.task = "face"
  config.model.face_encoder.frozen = False
  config.input.face_embedding_cache = False
  for name in config.loss.weights:
    config.loss.weights[name] = 1.0 if name in ("individual_emotion", "individual_va") else 0.0
  config.loss.reduction = "masked_mean"
  config.optim.learning_rate = 1e-4  # [ours] AdamW fine-tuning of Swin, as is usual for timm models.
  config.optim.weight_decay = 0.05
  config.optim.schedule = "warmup_cosine"
  config.train.num_epochs = 20
  config.train.selection_metric = "individual_emotion/uar"
  if gems.parse_arg(arg, runlocal=False, variant="ours", attention="s3").runlocal:
    config.input.faces_per_batch = 64
    config.optim.learning_rate = 2e-3
    config.train.num_epochs = 4
  return config
