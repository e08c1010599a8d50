r"""The privacy-compliant audio-visual model (gems_jax.models.privacy_av) on VGAF-style clips.

Sources cited per value:
  [paper]  Augusma, Vaufreydaz, Letué, "Multimodal Group Emotion Recognition In-the-wild Using
           Privacy-Compliant Features", ICMI 2023 (EmotiW 2023 audio-visual winner), arXiv 2312.05265.
  [code]   The authors' release, github.com/augusmaa/Emotiw2023 (models/, scripts/train.py, losses.py).
  [timm]   timm's `vit_large_patch14_clip_224.laion2b`, the authors' video encoder.
  [ours]   A choice of this project where the sources are silent or broken.
Reference VGAF test accuracy: EmotiW 2020 baseline 47.88 %, Pinto et al. 2020 65.74 %, Sun et al.
2020 70.77 %, this model 75.13 % (79.24 % val, selected on val: optimistic).

Usage:
  python -m gems_jax.main --config configs/privacy_av.py --workdir runs/privacy_av
  python -m gems_jax.main --config configs/privacy_av.py:mode=audio,pooling=flatten --workdir ...
  python -m gems_jax.main --config configs/privacy_av.py:runlocal --workdir /tmp/pav   # tiny, CPU
Arguments after ':' are comma-separated flags or key=value pairs: `mode=audio|video|fusion`,
`pooling=mean|flatten`, `frozen=none|blocks|all` (the ViT: the paper fine-tunes it; the code means
to freeze its 24 blocks and fails on a misspelt attribute, `vit.block`), `runlocal`.
"""
import ml_collections

from configs import gems
from gems_jax.data import log_mel
from gems_jax.models.privacy_av import MODES, POOLINGS

FROZEN = ("none", "blocks", "all")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = gems.parse_arg(arg, runlocal=False, mode="fusion", pooling="mean", frozen="none")
  for key, allowed in (("mode", MODES), ("pooling", POOLINGS), ("frozen", FROZEN)):
    if args[key] not in allowed:
      raise ValueError(f"{key} must be one of {allowed}, got {args[key]!r}")
  config = ml_collections.ConfigDict()
  config.task = "privacy_av"
  config.seed = 2023  # [code] scripts/train.py --seed.

  # --- Input -------------------------------------------------------------------------------
  config.input = ml_collections.ConfigDict()
  config.input.data_dir = ""  # Folder given to `preprocessing.build --data_dir` (must be set).
  config.input.train_split = "train"
  config.input.eval_split = "val"  # Model selection uses this split only.
  config.input.test_split = "test"  # Evaluated once, at the end, with the best checkpoint.
  config.input.batch_size = 4  # [code] --batch_size.
  config.input.num_frames = 5  # T_v whole frames, uniformly spread. [paper] (75 explored, overfits).
  config.input.frame_size = 224  # Frames squashed to 224 x 224. [paper]/[timm]
  config.input.worker_count = 0  # grain worker processes per host (0 = in-process).
  # A fully frozen ViT (frozen=all) encodes each frame once per dataset, not once per epoch. [ours]
  config.input.frame_embedding_cache = True
  config.input.frame_cache_chunk = 32  # Frames per encoder call over all devices.

  # --- Model -------------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.mode = args.mode  # 'audio', 'video' or 'fusion'. [code] --train_corpus.
  config.model.num_classes = 3  # positive / neutral / negative. [paper]

  ve = config.model.video_encoder = ml_collections.ConfigDict()
  ve.name = "vit_large_patch14_clip_224"  # CLIP ViT-L/14 (timm tag .laion2b), 1024-d. [code]/[timm]
  # Extra ViT kwargs: L/14 is patch 14, width 1024, 24 blocks, 16 heads, MLP 4096, GELU, pre-norm,
  # LayerNorm eps 1e-5, class-token pooling after the final LayerNorm, head removed. [timm]
  ve.overrides = ml_collections.ConfigDict()
  ve.checkpoint = ""  # Converted timm weights (none ship offline: random weights until given).
  ve.frozen = args.frozen  # 'none' [paper] fine-tuned; 'blocks' what [code] means; 'all' frozen.
  ve.mean = (0.5, 0.5, 0.5)  # [timm] CLIP normalisation; later work of the authors uses ImageNet's.
  ve.std = (0.5, 0.5, 0.5)
  ve.dtype = "float32"
  # > 0: the ViT runs its frames in rematerialised chunks of this many (gems_jax.models.vit): a
  # fine-tuning step holds one chunk's activations (~0.9 GiB a frame at ViT-L/14) instead of all
  # b x T_v frames', for ~1/3 more compute (benchmarks/av_train.py). 0: off. [ours]
  ve.remat_chunk = 0

  au = config.model.audio = ml_collections.ConfigDict()
  au.log_mel = log_mel.default_config()  # [ours] parameters never published (log_mel docstring).
  # [paper]/[code] four blocks of three 3x3 valid convs + 2x2 max-pool, no BatchNorm.
  au.channels = ((32, 64, 64), (128, 128, 128), (256, 256, 256), (512, 512, 512))
  au.pool_size = (1, 2)  # AdaptiveAvgPool2d((1, 2)): 512 x 1 x 2 = 1024 features. [code]
  au.d_ff = 2048  # [code] --hidden_ff_audio.
  au.num_heads = 1  # [code] --num_heads_audio.
  au.attention_dropout = 0.2  # [code] --dropout_att.
  au.ff_dropout = 0.5  # [code] --dropout_ff.
  au.layer_norm_eps = 1e-6  # [code] models/transformer.py.

  fu = config.model.fusion = ml_collections.ConfigDict()
  fu.pooling = args.pooling  # 'mean' over time, or 'flatten' ([code] --flatten). Also unimodal.
  fu.flatten_steps = 5  # Steps the flatten head sees (75 are mean-pooled in 5 groups). [code]
  fu.num_heads = 1  # [code] --num_heads_crossatt.
  fu.dropout_rate = 0.1  # Cross-attention dropout. [code] models/fusion.py.

  # --- Loss --------------------------------------------------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "cross_entropy"  # or 'focal' ([code] --use_focal; gems_jax.training.focal).
  config.loss.focal_alpha = 1.0  # [code] --alpha.
  config.loss.focal_gamma = 2.0  # [code] --gamma.

  # --- Optimisation ------------------------------------------------------------------------
  config.optim = ml_collections.ConfigDict()
  config.optim.name = "sgd"  # [code] torch.optim.SGD.
  config.optim.learning_rate = 1e-5  # [code] --lr.
  config.optim.momentum = 0.9  # [code] --momentum.
  config.optim.b1, config.optim.b2, config.optim.eps = 0.9, 0.999, 1e-8  # Used with name='adam'.
  config.optim.weight_decay = 0.0  # [code] none.
  config.optim.schedule = "constant"  # [code] no schedule.
  config.optim.grad_clip_norm = 0.0  # [code] none.

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 100  # [code] --num_epochs.
  config.train.eval_every_epochs = 1
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 0  # Extra mid-epoch checkpoints (0 = at evaluations only).
  config.train.patience = 100  # = num_epochs: no early stopping. [code]
  config.train.selection_metric = "group_category/accuracy"  # Best val accuracy kept. [code]

  # --- Mesh, checkpoints, evaluation --------------------------------------------------------
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # data-parallel axis; -1 = all devices left over.
  config.mesh.fsdp = 1  # parameter sharding axis (the ViT's large kernels).
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 2  # latest checkpoints kept, besides the best one.
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 4

  if args.runlocal:
    _runlocal(config)
  return config


def _runlocal(config):
  """Shrinks everything so that a laptop CPU trains it in about a minute. [ours]"""
  config.input.batch_size = 4
  config.eval.batch_size = 4
  config.input.frame_size = 32
  config.model.video_encoder.overrides = dict(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                              num_heads=2, mlp_ratio=2.0)
  au = config.model.audio
  au.log_mel.n_mels = 32  # 32 x 32 audio frames: two blocks of two convs leave 5 x 5.
  au.log_mel.segment_frames = 32
  au.channels = ((8, 8), (16, 16))  # 16 x 1 x 2 = 32 features, the tiny ViT's width.
  au.d_ff = 64
  # SGD (1e-5, or even 1e-2) does not move a tiny model in a few epochs; Adam learns the planted
  # world's sound in ~12 (tests/test_privacy_av_train.py).
  config.optim.name = "adam"
  config.optim.learning_rate = 3e-3
  config.train.num_epochs = 12
  config.train.patience = 12
  config.train.log_every_steps = 5
