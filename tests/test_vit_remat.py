"""`VisionTransformer(remat_chunk=n)` (the batch in a loop of rematerialised chunks) computes the same
function and the same gradients as without, with the same parameters; and
`config.model.video_encoder.remat_chunk` reaches the privacy model's ViT."""
import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import privacy_av
from gems_jax.models import vit
from gems_jax.models.privacy_av import AudioVisualModel

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
            num_classes=3)
DROPOUT = dict(drop_rate=0.1, attn_drop_rate=0.1, proj_drop_rate=0.1, drop_path_rate=0.2)


def _loss_and_grads(module, params, x, rng):
  def loss(p):
    out = module.apply({"params": p}, x, train=True, rngs={"dropout": rng}, return_features=True)
    return jnp.sum(jnp.sin(out["logits"])) + jnp.mean(out["tokens"] ** 2)
  return jax.jit(jax.value_and_grad(loss))(params)


def test_remat_chunks_give_the_same_outputs_and_gradients():
  plain = vit.create_vit("vit_large_patch14_clip_224", **TINY)
  remat = vit.create_vit("vit_large_patch14_clip_224", **TINY, remat_chunk=2)
  x = jax.random.normal(jax.random.key(0), (5, 32, 32, 3))  # 3 chunks, the last one padded.
  params = plain.init(jax.random.key(1), x)["params"]
  chex.assert_trees_all_equal_shapes_and_dtypes(params, remat.init(jax.random.key(1), x)["params"])
  loss, grads = _loss_and_grads(plain, params, x, jax.random.key(2))
  loss_r, grads_r = _loss_and_grads(remat, params, x, jax.random.key(2))
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  chex.assert_trees_all_close(grads_r, grads, atol=1e-6, rtol=1e-5)
  assert float(jnp.abs(grads["blocks_0"]["attn"]["qkv"]["kernel"]).max()) > 0  # Not vacuous.
  np.testing.assert_allclose(remat.apply({"params": params}, x), plain.apply({"params": params}, x),
                             atol=1e-6)


def test_remat_chunks_draw_dropout_per_chunk():
  remat = vit.create_vit("vit_large_patch14_clip_224", **TINY, **DROPOUT, remat_chunk=2)
  x = jnp.ones((4, 32, 32, 3))  # Equal images: only the dropout draws tell them apart.
  params = remat.init(jax.random.key(1), x)["params"]
  out = remat.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert np.isfinite(np.asarray(out)).all()
  assert float(jnp.abs(out[0] - out[2]).max()) > 0  # Chunks 0 and 1 draw different masks.
  loss, grads = _loss_and_grads(remat, params, x, jax.random.key(3))
  assert np.isfinite(float(loss)) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def _has_remat(remat_chunk: int) -> bool:
  """Whether the privacy model's train-mode forward holds a remat primitive ('remat2' in JAX 0.10,
  'checkpoint' in others) with `config.model.video_encoder.remat_chunk` set as given."""
  config = privacy_av.get_config("runlocal,mode=video")
  config.model.video_encoder.remat_chunk = remat_chunk
  model = AudioVisualModel(ml_collections.FrozenConfigDict(config.model.to_dict()))
  batch = {"whole_frames": jnp.zeros((1, 2, 32, 32, 3), jnp.uint8),
           "whole_frame_mask": jnp.ones((1, 2), bool)}
  variables = model.init(jax.random.key(0), batch)
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, batch, train=True))(variables))
  return bool(re.search(r"= (remat\w*|checkpoint)\[", jaxpr))


def test_the_privacy_config_flag_reaches_the_video_encoder():
  assert privacy_av.get_config().model.video_encoder.remat_chunk == 0
  assert _has_remat(1) and not _has_remat(0)
