r"""The GEMS model trained on VGAF-GEMS: the paper's setup by default.

Sources cited per value:
  [paper]  Kataria et al., "GEMS: Group Emotion Profiling Through Multimodal Situational
           Understanding", arXiv 2507.22393 (2025).
  [code]   The authors' release, github.com/katariaak579/GEMS @5b6ff95, `run.py` (line numbers).
  [S3A]    Wang et al., "S3Attention: Improving Long Sequence Attention with Smoothed Skeleton
           Sketching" (KDD'23 submission) and github.com/wxie9/S3Attention @ef4351a.
  [ours]   A choice of this project where the sources are silent, broken or unsound (the README's
           "Differences from the authors' code" lists each one).

Usage:
  python -m gems_jax.main --config configs/gems.py --workdir runs/gems
  python -m gems_jax.main --config configs/gems.py:runlocal --workdir /tmp/gems   # tiny, CPU
  python -m gems_jax.main --config configs/gems.py --config.optim.learning_rate=1e-4 ...
Arguments after ':' are comma-separated flags or key=value pairs: `runlocal`, `variant=authors`
(the authors' choices, for comparison), `attention=dense` (the no-S3 ablation) and `attention=none`
(no temporal block at all: tokens go straight to the masked-mean pooling; benchmarks/ablation.py).
"""
import ml_collections

def parse_arg(arg: str | None, **defaults):
  """Parses 'runlocal,variant=authors' into a ConfigDict over `defaults` (big_vision style)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    if not value:
      value = True
    elif isinstance(defaults[key], bool):
      value = value.lower() in ("1", "true", "yes")
    out[key] = type(defaults[key])(value)
  return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False, variant="ours", attention="s3")
  if args.variant not in ("ours", "authors"):
    raise ValueError(f"variant must be 'ours' or 'authors', got {args.variant!r}")
  if args.attention not in ("s3", "dense", "none"):
    raise ValueError(f"attention must be 's3', 'dense' or 'none', got {args.attention!r}")
  config = ml_collections.ConfigDict()
  config.task = "gems"  # 'gems' (clip-level multi-task model) or 'face' (stage-1 face emotion).
  config.seed = 2021  # [code] run.py:1848-1851.

  # --- Input -------------------------------------------------------------------------------
  config.input = ml_collections.ConfigDict()
  config.input.data_dir = ""  # Folder given to `preprocessing.build --data_dir` (must be set).
  config.input.train_split = "train"
  config.input.eval_split = "val"  # Model selection and early stopping use this split only.
  config.input.test_split = "test"  # Evaluated once, at the end, with the best checkpoint.
  config.input.batch_size = 32  # Global batch. [code] run.py:1900.
  config.input.num_steps = 96  # Sequence length N. [code] seq_len, run.py:1876.
  config.input.worker_count = 0  # grain worker processes per host (0 = in-process).
  config.input.face_embedding_cache = True  # Encode faces once when the encoder is frozen. [paper]
  # Faces per encoder call over all devices when caching (rounded up to whole faces per device):
  # bounds the cache build's device memory; empty slots are never encoded. [ours]
  config.input.face_cache_chunk = 64
  config.input.faces_per_batch = 256  # Stage 1 ('face' task): labelled faces per step.

  # --- Model -------------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  fe = config.model.face_encoder = ml_collections.ConfigDict()
  fe.name = "swin_base_patch4_window7_224"  # Swin-B, 1024-d features. [paper] Fig. 3.
  fe.overrides = ml_collections.ConfigDict()  # Extra SwinTransformer kwargs (small CPU encoders).
  fe.checkpoint = ""  # orbax checkpoint from `gems_jax.tools.convert_swin` or a stage-1 workdir.
  fe.frozen = True  # [paper] the encoder is trained on individual emotions first, then frozen.
  fe.dtype = "float32"

  fu = config.model.fusion = ml_collections.ConfigDict()
  fu.d_model = 512  # [code] run.py:1884.
  fu.num_heads = 8  # [code] run.py:1885.
  fu.num_layers = 2  # [code] e_layers, run.py:1886.
  fu.dropout_rate = 0.05  # [code] run.py:1891, used at every dropout site.
  fu.attention = args.attention  # 's3' [code], 'dense' (ablation; cf. run_without_s3.py) or 'none'.
  fu.autocorrelation = False  # Autoformer block before S3 as in the paper's figure; absent in [code].
  fu.autocorrelation_factor = 1  # top-k = factor * ln(N). [code] layers/AutoCorrelation.py:47.
  fu.moving_avg = 25  # Autoformer series decomposition kernel. [code] Autoformer_EncDec.py.
  fu.d_ff = 2048  # Autoformer feed-forward width. [code] run.py:1887 (unused there).
  fu.num_segments = 8  # r. [code] fold, run.py:66.
  fu.num_landmark_tokens = 8  # s1. [code] dp_rank, run.py:1071.
  fu.num_landmark_features = 8  # s2. [code] dp_rank, run.py:79-81.
  fu.segment_map = "mod"  # [code] channel c uses segment c mod r (the paper's S uses blocks).
  fu.combine = "mean"  # [code] averages the two branches; the paper (eq. 1) sums them.
  fu.norm = "layer"  # [ours] masked LayerNorm; [code] BatchNorm1d over the 96 positions.
  fu.use_output_proj = False  # [code] `proj` is defined but never applied.
  fu.landmark_seed = 0  # Landmarks are drawn from this seed and saved in checkpoints. [ours]
  fu.pooling = "masked_mean"  # [ours]; [code] reads the last step (often a zero-padded one).
  fu.use_mask = True  # [ours]; [code] has no padding mask.
  fu.face_pooling = "masked_mean"  # One token per frame from its faces. [ours]

  hd = config.model.heads = ml_collections.ConfigDict()
  hd.num_emotions = 9  # group and individual emotion. [code] run.py:1077-1079.
  hd.num_group_categories = 3  # positive / neutral / negative. [code] run.py:1078.
  hd.num_situational_emotions = 10  # [code] run.py:1082.
  hd.num_situations = 10  # [code] run.py:1083-1085 (changed from 9).
  hd.situational = "multilabel"  # [paper] multi-label; [code] single-label CE ('single').
  hd.forecast = False  # The authors' auxiliary next-step forecasting head. [code] run.py:651-715.

  # --- Loss --------------------------------------------------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.reduction = "masked_mean"  # [ours]; 'authors_sum' = [code] run.py:1315-1349.
  config.loss.va_loss = "mse"  # 'mse' [code] or 'ccc'.
  config.loss.weights = ml_collections.ConfigDict(dict(
      individual_emotion=1.0, individual_va=1.0, group_emotion=1.0, group_category=1.0,
      valence=1.0, arousal=1.0, situational_emotion=1.0, situation=1.0, forecast=0.0))  # forecast > 0 needs heads.forecast.

  # --- Optimisation ------------------------------------------------------------------------
  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 5e-5  # [code] run.py:1902. Adam(0.9, 0.999, 1e-8), no decay.
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.weight_decay = 0.0
  config.optim.schedule = "warmup_cosine"  # [ours]; 'halve_per_epoch' = [code] lradj type1.
  config.optim.warmup_epochs = 1.0
  config.optim.grad_clip_norm = 1.0  # [ours]; 0 disables. [code] has none.

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 100  # [ours]; [code] 10000 epochs with early stopping effectively off.
  config.train.eval_every_epochs = 1
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 0  # Extra mid-epoch checkpoints (0 = at evaluations only).
  config.train.patience = 10  # epochs without val improvement; [code] 300000 (effectively off).
  config.train.selection_metric = "group_emotion/uar"  # [ours] maximised on the val split.

  # --- Mesh, checkpoints, evaluation --------------------------------------------------------
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # data-parallel axis; -1 = all devices left over.
  config.mesh.fsdp = 1  # parameter sharding axis (Swin and large Dense kernels).
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 2  # latest checkpoints kept, besides the best one.
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 32

  if args.variant == "authors":
    _authors_choices(config)
  if args.runlocal:
    _runlocal(config)
  return config


def _authors_choices(config):
  """The authors' code, where it differs from our defaults ([code] run.py). What stays different
  is listed in the README ("Differences from the authors' code")."""
  config.model.fusion.norm = "batch_positions"
  config.model.fusion.pooling = "last"
  config.model.fusion.use_mask = False
  config.model.heads.situational = "single"
  # Forecast the step after the N input steps ([code] run.py:823-824: 97 read, 96 in, 97th target).
  config.model.heads.forecast = True
  config.loss.weights.forecast = 1.0
  # The authors' loss has no individual-emotion terms (no face encoder in their code).
  config.loss.weights.individual_emotion = 0.0
  config.loss.weights.individual_va = 0.0
  config.loss.reduction = "authors_sum"
  config.optim.schedule = "halve_per_epoch"
  config.optim.grad_clip_norm = 0.0
  config.train.selection_metric = "loss"  # The checkpoint with the lowest validation loss.
  # [code] 10000 epochs, patience 300000: no early stopping. After epoch 30 the halving schedule's
  # learning rate is below 2e-13 and Adam's updates vanish in float32, so 30 epochs train the same
  # model; patience = epochs keeps early stopping off.
  config.train.num_epochs = 30
  config.train.patience = 30


def _runlocal(config):
  """Shrinks everything so that a laptop CPU runs the whole loop in a minute or two."""
  config.input.batch_size = 8
  config.input.num_steps = 8
  config.eval.batch_size = 8
  fe = config.model.face_encoder
  fe.name = "swin_tiny_patch4_window7_224"
  fe.overrides = dict(img_size=32, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                      drop_path_rate=0.0)
  fu = config.model.fusion
  fu.d_model, fu.num_heads, fu.num_layers, fu.d_ff = 32, 4, 1, 64
  fu.num_segments, fu.num_landmark_tokens, fu.num_landmark_features = 4, 4, 4
  fu.moving_avg = 3
  config.optim.learning_rate = 3e-3
  config.optim.warmup_epochs = 0.5
  config.train.num_epochs = 4
  config.train.patience = 3
  config.train.log_every_steps = 5
