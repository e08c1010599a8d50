"""The frozen face encoder: loading its weights, and caching its embeddings once per dataset.

The paper trains the Swin-B emotion encoder on individual emotions first (stage 1, `config.task =
'face'`) and freezes it for the GEMS model. With a frozen encoder, running it on every crop in every
epoch is wasted work, so `prepare_input` encodes each split once into a sibling dataset with
`storage='embeddings'` (in `<workdir>/face_cache/`), and training reads that instead.

`config.model.face_encoder.checkpoint` may name
  * a stage-1 workdir (it has `best/`): its FaceEmotionClassifier parameters (encoder + heads), or
  * the output folder of `python -m gems_jax.tools.convert_swin` (timm weights): encoder only.
"""
import dataclasses
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gems_jax.data import input_pipeline
from gems_jax.data import tfds_writer
from gems_jax.models.gems import FaceEmotionClassifier

CACHE_DIR = "face_cache"


def read_face_encoder_params(path: str) -> dict:
  """FaceEmotionClassifier-shaped params {'encoder': ..., ['emotion', 'valence_arousal']}."""
  path = os.path.abspath(path)
  best = os.path.join(path, "best")
  if os.path.isdir(best):  # A stage-1 workdir.
    manager = ocp.CheckpointManager(best)
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"face encoder checkpoint: no saved step in {best}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    params = restored.state["params"]
    manager.close()
    return params
  from gems_jax.tools.convert_swin import restore_converted  # No torch import at module level.
  _, variables = restore_converted(path)
  encoder = dict(variables["params"])
  encoder.pop("head", None)  # GEMS uses the pooled features; the ImageNet head is not needed.
  return {"encoder": encoder}


def load_face_encoder(config: ml_collections.ConfigDict, state):
  """Copies the configured face-encoder weights into the train state (same shapes required)."""
  path = config.model.face_encoder.checkpoint
  if not path:
    return state
  loaded = read_face_encoder_params(path)
  params = dict(state.params)
  target = params if config.task == "face" else dict(params["face_branch"])
  for name, value in loaded.items():
    if name not in target:
      continue  # e.g. no 'encoder' in GEMS params when embeddings are cached.
    expected = jax.tree.map(lambda x: (x.shape, x.dtype), target[name])
    got = jax.tree.map(lambda x: (tuple(x.shape), x.dtype), value)
    if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
      raise ValueError(f"face encoder checkpoint {path}: '{name}' does not match the configured "
                       f"encoder {config.model.face_encoder.name} {dict(config.model.face_encoder.overrides)}")
    target[name] = jax.tree.map(lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding),
                                value, target[name])
  if config.task != "face":
    params["face_branch"] = target
  logging.info("loaded face encoder weights %s from %s", sorted(loaded), path)
  return state.replace(params=params)


def _needs_cache(config, spec) -> bool:
  fe = config.model.face_encoder
  return (config.task == "gems" and fe.frozen and config.input.face_embedding_cache
          and spec.storage == "crops")


def prepare_input(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """Returns the config to train with: input.data_dir switched to the embedding cache if needed."""
  if not config.input.data_dir:
    raise ValueError("config.input.data_dir is not set (the folder written by preprocessing.build)")
  spec = input_pipeline.load_spec(config.input.data_dir)
  if not _needs_cache(config, spec):
    return config
  cache_root = os.path.join(workdir, CACHE_DIR)
  info = {"source": os.path.abspath(config.input.data_dir),
          "encoder": config.model.face_encoder.name,
          "overrides": dict(config.model.face_encoder.overrides),
          "checkpoint": os.path.abspath(config.model.face_encoder.checkpoint or "") or None}
  info = json.loads(json.dumps(info))  # tuples -> lists, as they come back from disk.
  cached_spec = dataclasses.replace(spec, storage="embeddings", embed_dim=_feature_dim(config, spec))
  dataset_dir = tfds_writer.dataset_path(cache_root, cached_spec)
  info_path = os.path.join(cache_root, "cache_info.json")
  if jax.process_index() == 0:
    current = json.load(open(info_path)) if os.path.exists(info_path) else None
    if current != info or not dataset_dir.exists():
      if not config.model.face_encoder.checkpoint:
        logging.warning("caching embeddings of a randomly initialised frozen face encoder; set "
                        "config.model.face_encoder.checkpoint to a stage-1 workdir")
      _write_cache(config, spec, cached_spec, cache_root)
      os.makedirs(cache_root, exist_ok=True)
      with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("face_cache")
  config = ml_collections.ConfigDict(config.to_dict())
  config.input.data_dir = str(dataset_dir)
  return config


def _face_model(config, spec) -> FaceEmotionClassifier:
  fe = config.model.face_encoder
  return FaceEmotionClassifier(fe.name, dict(fe.overrides), len(spec.emotion_names),
                               dtype=jnp.dtype(fe.dtype))


def _feature_dim(config, spec) -> int:
  model = _face_model(config, spec)
  crops = jax.ShapeDtypeStruct((1, spec.face_size, spec.face_size, 3), jnp.uint8)
  shapes = jax.eval_shape(lambda c: model.init(jax.random.key(0), c, method=model.features,
                                              train=False), crops)
  out = jax.eval_shape(lambda v, c: model.apply(v, c, method=model.features, train=False),
                       shapes, crops)
  return int(out.shape[-1])


def _write_cache(config, spec, cached_spec, cache_root: str) -> None:
  """Encodes every face of every split once and writes the embeddings dataset (process 0)."""
  model = _face_model(config, spec)
  crops = jnp.zeros((1, spec.face_size, spec.face_size, 3), jnp.uint8)
  variables = model.init(jax.random.key(config.seed), crops, method=model.features, train=False)
  if config.model.face_encoder.checkpoint:
    loaded = read_face_encoder_params(config.model.face_encoder.checkpoint)
    variables = {"params": {**variables["params"], "encoder": loaded["encoder"]}}
  encode = jax.jit(lambda v, faces: model.apply(v, faces, method=model.features, train=False))

  def examples(split):
    it = input_pipeline.make_iterator(config.input.data_dir, split, batch_size=config.eval.batch_size,
                                      shuffle=False, seed=0, num_epochs=1, decode_faces=True)
    for batch in it:
      feats = np.asarray(encode(variables, batch["faces"]))
      feats = feats * batch["face_mask"][..., None]
      for i in np.flatnonzero(batch["valid"]):
        ex = {k: v[i] for k, v in batch.items() if k not in ("faces", "valid")}
        ex["face_embedding"] = feats[i].astype(np.float32)
        yield ex

  splits = {s: examples(s) for s in input_pipeline.split_names(config.input.data_dir)}
  logging.info("caching face embeddings of %s into %s", config.input.data_dir, cache_root)
  tfds_writer.write_dataset(cache_root, cached_spec, splits, overwrite=True)
