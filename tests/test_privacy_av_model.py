"""gems_jax.models.privacy_av (and audio_cnn, training.focal, configs/privacy_av.py) against small
PyTorch reference modules written from the paper's facts (arXiv 2312.05265; the audio CNN's is
benchmarks.audio_cnn.torch_cnn, the benchmark's peer), weights copied from torch to Flax, to 1e-5
in float32; masks, missing audio, gradients, dropout, configs."""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
from torch import nn

from benchmarks.audio_cnn import cnn_params, torch_cnn
from configs import privacy_av as privacy_config
from gems_jax.models import audio_cnn, privacy_av
from gems_jax.training import focal, losses

torch.set_num_threads(1)
TOL = dict(rtol=1e-5, atol=1e-5)
SMALL_CHANNELS = ((4, 8, 8), (8, 8, 8), (8, 16, 16), (16, 16, 16))  # The paper's geometry, thin.


# --- PyTorch references (from the facts, not from any code) -----------------------------------
class TorchTemporal(nn.Module):
  """Sinusoidal positions, pre-LN single-head attention (dropout 0.2) and FF (ReLU, dropout 0.5)."""

  def __init__(self, d, d_ff, heads):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
    self.attention = nn.MultiheadAttention(d, heads, dropout=0.2, batch_first=True)
    self.ff1, self.ff2, self.drop = nn.Linear(d, d_ff), nn.Linear(d_ff, d), nn.Dropout(0.5)

  def forward(self, x, padded=None):
    t, d = x.shape[1:]
    position = torch.arange(t, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-np.log(10000.0) / d))
    pe = torch.zeros(t, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * rate), torch.cos(position * rate)
    x = x + pe
    y = self.norm1(x)
    x = x + self.attention(y, y, y, key_padding_mask=padded, need_weights=False)[0]
    return x + self.ff2(self.drop(torch.relu(self.ff1(self.norm2(x)))))


class TorchPrivacyAV(nn.Module):
  """Audio CNN + temporal block, video mean-pooled to the audio steps, cross-attention (audio
  queries), concat [audio, cross, video], mean over time or flatten, one Linear."""

  def __init__(self, mode, pooling, d_video, channels=SMALL_CHANNELS, d_ff=24, steps=5):
    super().__init__()
    self.mode, self.pooling, self.steps = mode, pooling, steps
    d_audio = channels[-1][-1] * 2
    self.cnn, self.temporal = torch_cnn(channels), TorchTemporal(d_audio, d_ff, 1)
    self.cross = nn.MultiheadAttention(d_audio, 1, dropout=0.1, kdim=d_video, vdim=d_video,
                                       batch_first=True)
    width = {"audio": d_audio, "video": d_video, "fusion": 2 * d_audio + d_video}[mode]
    self.head = nn.Linear(width * (steps if pooling == "flatten" else 1), 3)

  def forward(self, video, audio):
    if self.mode != "video":
      b, a = audio.shape[:2]
      audio = self.temporal(self.cnn(audio.reshape(b * a, 1, *audio.shape[2:])).reshape(b, a, -1))
    x = {"audio": audio, "video": video}.get(self.mode)
    if self.mode == "fusion":
      if video.shape[1] != audio.shape[1]:
        video = video.reshape(video.shape[0], audio.shape[1], -1, video.shape[2]).mean(2)
      x = torch.cat([audio, self.cross(audio, video, video, need_weights=False)[0], video], 2)
    if self.pooling == "flatten" and x.shape[1] != self.steps:  # 75 frames: 5 groups of 15.
      x = x.reshape(x.shape[0], self.steps, -1, x.shape[2]).mean(2)
    return self.head(x.mean(1) if self.pooling == "mean" else x.reshape(x.shape[0], -1))


def randomize_vectors(module: nn.Module) -> nn.Module:
  """torch zero-initialises attention biases and sets LayerNorm to 1/0: perturb every vector so
  that a bias or scale copied to the wrong place shows up."""
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in module.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn(p.shape, generator=generator))
  return module.eval()


# --- torch -> Flax weights ---------------------------------------------------------------------
def j(t: torch.Tensor) -> jnp.ndarray:
  return jnp.asarray(t.detach().numpy())


def dense(linear):
  return {"kernel": j(linear.weight.T), "bias": j(linear.bias)}


def mha_params(mha):
  e = mha.embed_dim
  weights = (mha.in_proj_weight.split(e) if mha._qkv_same_embed_dim
             else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
  out = {name: {"kernel": j(w.T), "bias": j(b)}
         for name, w, b in zip(("query", "key", "value"), weights, mha.in_proj_bias.split(e))}
  return out | {"out": dense(mha.out_proj)}


def temporal_params(block):
  ln = lambda m: {"scale": j(m.weight), "bias": j(m.bias)}
  return {"norm1": ln(block.norm1), "norm2": ln(block.norm2),
          "attention": mha_params(block.attention), "ff1": dense(block.ff1), "ff2": dense(block.ff2)}


def model_params(ref: TorchPrivacyAV, channels=SMALL_CHANNELS):
  params = {"head": dense(ref.head)}
  if ref.mode != "video":
    params |= {"audio_cnn": cnn_params(ref.cnn, channels), "temporal": temporal_params(ref.temporal)}
  if ref.mode == "fusion":
    params["fusion"] = {"cross_attention": mha_params(ref.cross)}
  return {"params": params}


def model_config(mode, pooling, channels=SMALL_CHANNELS, d_ff=24):
  config = privacy_config.get_config(f"mode={mode},pooling={pooling}").model
  config.audio.channels, config.audio.d_ff = channels, d_ff
  return ml_collections.FrozenConfigDict(config)


def reference_pair(mode, pooling, d_video=24, seed=0):
  torch.manual_seed(seed)
  ref = randomize_vectors(TorchPrivacyAV(mode, pooling, d_video))
  return ref, privacy_av.PrivacyAV(model_config(mode, pooling)), model_params(ref)


def inputs(b=2, a=5, t_video=5, d_video=24, size=(106, 106), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, t_video, d_video)).astype(np.float32),
          rng.normal(size=(b, a) + size).astype(np.float32))


def classify(model, params, video, audio, video_mask=None, audio_mask=None):
  video_mask = np.ones(video.shape[:2], bool) if video_mask is None else video_mask
  audio_mask = np.ones(audio.shape[:2], bool) if audio_mask is None else audio_mask
  run = jax.jit(lambda *args: model.apply(params, *args, method=privacy_av.PrivacyAV.classify))
  return np.asarray(run(video, video_mask, audio, audio_mask))


# --- PyTorch equality ------------------------------------------------------------------------
@pytest.mark.parametrize("size, bins", [((5, 7), (2, 3)), ((3, 5), (1, 2)), ((1, 1), (1, 2)),
                                        ((2, 2), (1, 2)), ((7, 4), (3, 3))])
def test_adaptive_avg_pool_matches_torch(size, bins):
  x = np.random.default_rng(0).normal(size=(2, 3) + size).astype(np.float32)  # NCHW
  expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), bins).numpy()
  got = audio_cnn.adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), bins)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), expected, **TOL)


@pytest.mark.parametrize("size", [(106, 106), (128, 128), (115, 140)])  # Last: 1 x 3 before the
def test_audio_cnn_matches_torch(size):                                  # pool, overlapping bins.
  torch.manual_seed(0)
  ref = randomize_vectors(torch_cnn(SMALL_CHANNELS))
  images = np.random.default_rng(0).normal(size=(3,) + size).astype(np.float32)
  expected = ref(torch.from_numpy(images)[:, None]).detach().numpy()
  got = audio_cnn.AudioCNN(SMALL_CHANNELS).apply({"params": cnn_params(ref, SMALL_CHANNELS)},
                                                  images)
  assert got.shape == (3, 32)
  np.testing.assert_allclose(np.asarray(got), expected, **TOL)


def test_audio_cnn_paper_shapes_and_minimum_size():
  model = audio_cnn.AudioCNN()
  for size in ((106, 106), (128, 128)):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 5) + size))
    out = jax.eval_shape(model.apply, variables, jnp.zeros((2, 5) + size))
    assert out.shape == (2, 5, 1024)
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables)) == 7_799_872
  assert audio_cnn.min_input_side(audio_cnn.PAPER_CHANNELS) == 106
  with pytest.raises(ValueError, match="at least 106"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 105, 128)))


@pytest.mark.parametrize("heads", [1, 2])
def test_temporal_block_matches_torch(heads):
  torch.manual_seed(0)
  ref = randomize_vectors(TorchTemporal(16, 24, heads))
  x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
  mask = np.array([[True] * 5, [True] * 3 + [False] * 2])
  expected = ref(torch.from_numpy(x), torch.from_numpy(~mask)).detach().numpy()
  got = privacy_av.TemporalBlock(d_ff=24, num_heads=heads).apply(
      {"params": temporal_params(ref)}, x, mask)
  np.testing.assert_allclose(np.asarray(got)[mask], expected[mask], **TOL)
  assert not np.asarray(got)[~mask].any()


@pytest.mark.parametrize("mode, pooling, t_video, d_video", [
    ("fusion", "mean", 15, 32), ("fusion", "flatten", 5, 24), ("fusion", "mean", 5, 24),
    ("audio", "mean", 5, 24), ("audio", "flatten", 5, 24), ("video", "flatten", 15, 24)])
def test_model_matches_torch(mode, pooling, t_video, d_video):
  """D_v = D_a = 32 uses torch's packed in-projection; 24 its separate k/v projections; 15 video
  frames are mean-pooled in 5 groups (75 -> 5 in the paper)."""
  ref, model, params = reference_pair(mode, pooling, d_video)
  video, audio = inputs(t_video=t_video, d_video=d_video)
  expected = ref(torch.from_numpy(video), torch.from_numpy(audio)).detach().numpy()
  np.testing.assert_allclose(classify(model, params, video, audio), expected, **TOL)


# --- Masks and missing audio -----------------------------------------------------------------
def test_padding_equals_the_unpadded_reference():
  """Audio / video steps past the real ones (garbage in them) give torch's output on the real
  steps alone."""
  video, audio = inputs(b=1, t_video=5)
  garbage_video, garbage_audio = inputs(b=1, t_video=5, seed=1)
  for mode, real in (("audio", 3), ("video", 2)):
    ref, model, params = reference_pair(mode, "mean")
    expected = ref(torch.from_numpy(video[:, :real]), torch.from_numpy(audio[:, :real]))
    mask = np.arange(5)[None] < real
    padded_video = np.where(mask[..., None], video, garbage_video)
    padded_audio = np.where(mask[..., None, None], audio, garbage_audio)
    got = classify(model, params, padded_video, padded_audio, mask, mask)
    np.testing.assert_allclose(got, expected.detach().numpy(), **TOL)


@pytest.mark.parametrize("pooling", ["mean", "flatten"])
def test_fusion_padding_changes_no_real_output(pooling):
  _, model, params = reference_pair("fusion", pooling)
  video, audio = inputs(b=3)
  garbage_video, garbage_audio = inputs(b=3, seed=1)
  video_mask = np.array([[True] * 5, [True] * 4 + [False], [False] * 5])  # 3rd: no real frame.
  audio_mask = np.array([[True] * 3 + [False] * 2, [True] * 5, [True] * 5])
  padded_video = np.where(video_mask[..., None], video, garbage_video)
  padded_audio = np.where(audio_mask[..., None, None], audio, garbage_audio)
  np.testing.assert_allclose(classify(model, params, video, audio, video_mask, audio_mask),
                             classify(model, params, padded_video, padded_audio, video_mask,
                                      audio_mask), **TOL)


def test_missing_audio_falls_back_to_the_video_part():
  video, audio = inputs()
  no_audio = np.zeros((2, 5), bool)
  _, model, params = reference_pair("fusion", "mean")
  head = params["params"]["head"]
  video_part = video.mean(1) @ np.asarray(head["kernel"])[-24:] + np.asarray(head["bias"])
  np.testing.assert_allclose(classify(model, params, video, audio, audio_mask=no_audio),
                             video_part, **TOL)
  _, model, params = reference_pair("audio", "mean")
  np.testing.assert_allclose(classify(model, params, video, audio, audio_mask=no_audio),
                             np.tile(params["params"]["head"]["bias"], (2, 1)), **TOL)


# --- The whole model from its config: raw audio in, logits out -------------------------------
def dummy_batch(config, b=2, seconds=2.0, seed=0):
  """b clips of `seconds` of noise, the second one half as long; 5 video embeddings each."""
  rng = np.random.default_rng(seed)
  samples = int(seconds * config.audio.log_mel.sample_rate)
  width = config.audio.channels[-1][-1] * 2
  return {"audio": rng.integers(-8000, 8000, (b, samples)).astype(np.int16),
          "audio_length": np.where(np.arange(b) == 1, samples // 2, samples).astype(np.int32),
          "has_audio": np.ones(b, bool),
          "whole_frame_embedding": rng.normal(size=(b, 5, width)).astype(np.float32),
          "whole_frame_mask": np.ones((b, 5), bool), "group_category": np.arange(b) % 3}


def runlocal_model(mode="fusion", pooling="mean"):
  config = privacy_config.get_config(f"runlocal,mode={mode},pooling={pooling}")
  return privacy_av.PrivacyAV(ml_collections.FrozenConfigDict(config.model)), config.model


@pytest.mark.parametrize("frozen", privacy_config.FROZEN)
@pytest.mark.parametrize("pooling", privacy_av.POOLINGS)
@pytest.mark.parametrize("mode", privacy_av.MODES)
def test_every_config_variant_builds_and_runs(mode, pooling, frozen):
  """The paper-size model is traced (no compute); the runlocal one runs (the model does not
  depend on `frozen`: once per mode and pooling), and a clip without audio ignores its waveform."""
  config = privacy_config.get_config(f"mode={mode},pooling={pooling},frozen={frozen}")
  assert config.task == "privacy_av" and config.model.video_encoder.frozen == frozen
  model = privacy_av.PrivacyAV(ml_collections.FrozenConfigDict(config.model))
  out = jax.eval_shape(lambda b: model.init_with_output(jax.random.key(0), b)[0],
                       dummy_batch(config.model, b=1))
  assert out[privacy_av.OUTPUT_KEY].shape == (1, 3)
  if frozen != "none":
    return
  model, config = runlocal_model(mode, pooling)
  batch = dummy_batch(config, b=4)  # Clips 2 and 3: the same frames, no audio, other waveforms.
  batch["has_audio"][2:] = False
  batch["whole_frame_embedding"][3] = batch["whole_frame_embedding"][2]
  logits = np.asarray(jax.jit(lambda b: model.init_with_output(jax.random.key(0), b)[0])(batch)[
      privacy_av.OUTPUT_KEY])
  assert logits.shape == (4, 3) and np.isfinite(logits).all()
  np.testing.assert_allclose(logits[2], logits[3], **TOL)
  assert not np.allclose(logits[0], logits[1])


def test_gradients_reach_every_parameter():
  model, config = runlocal_model("fusion", "flatten")
  batch = dummy_batch(config)
  variables = jax.jit(model.init)(jax.random.key(0), batch)

  @jax.jit
  @jax.grad
  def grad(params):
    logits = model.apply({"params": params}, batch, train=True,
                         rngs={"dropout": jax.random.key(1)})[privacy_av.OUTPUT_KEY]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["group_category"]).sum()

  grads = flax.traverse_util.flatten_dict(grad(variables["params"]), sep="/")
  dead = [name for name, g in grads.items() if not np.abs(np.asarray(g)).max() > 0]
  # 4 convs, temporal (2 LayerNorms, 4 attention Dense, 2 FF Dense), 4 cross Dense, the head.
  assert not dead and len(grads) == 2 * (4 + 8 + 4 + 1)


def test_train_mode_dropout_uses_the_rng():
  model, config = runlocal_model("fusion", "mean")
  batch = dummy_batch(config)
  variables = jax.jit(model.init)(jax.random.key(0), batch)
  apply = jax.jit(lambda rngs, train: model.apply(variables, batch, train=train, rngs=rngs)[
      privacy_av.OUTPUT_KEY], static_argnums=1)
  run = lambda seed: np.asarray(apply({"dropout": jax.random.key(seed)}, True))
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.allclose(run(1), run(2))
  evaluated = np.asarray(apply({}, False))
  assert not np.allclose(run(1), evaluated)
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(variables, batch, train=True)


# --- Focal loss ------------------------------------------------------------------------------
def focal_reference(logits, labels, mask, alpha, gamma):
  """(sum, count) in float64 NumPy: alpha (1 - p_t)^gamma (-log p_t) over the masked-in rows."""
  x = logits.astype(np.float64)
  p = np.exp(x - x.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  pt = p[np.arange(len(x)), np.where(mask, labels, 0)]
  loss = alpha * (1 - pt) ** gamma * -np.log(pt)
  return loss[mask].sum(), mask.sum()


@pytest.mark.parametrize("alpha, gamma", [(1.0, 2.0), (0.25, 2.0), (1.0, 0.5)])
def test_focal_loss_matches_numpy(alpha, gamma):
  rng = np.random.default_rng(0)
  logits = (3 * rng.normal(size=(16, 3))).astype(np.float32)
  labels = rng.integers(0, 3, 16)
  mask = rng.random(16) > 0.25
  labels[~mask] = -1
  got = focal.masked_focal_loss(logits, labels, mask, alpha=alpha, gamma=gamma)
  np.testing.assert_allclose(np.asarray(got), focal_reference(logits, labels, mask, alpha, gamma),
                             rtol=1e-5)
  ce = losses.masked_cross_entropy(logits, labels, mask)
  np.testing.assert_allclose(np.asarray(focal.masked_focal_loss(logits, labels, mask, gamma=0.0)),
                             np.asarray(ce), rtol=1e-6)
  certain = np.array([[200.0, 0.0, 0.0]], np.float32)  # p_t is exactly 1: finite gradients.
  grad = jax.grad(lambda x: focal.masked_focal_loss(x, np.array([0]), np.array([True]),
                                                    alpha=alpha, gamma=gamma)[0])(certain)
  assert np.isfinite(np.asarray(grad)).all()
