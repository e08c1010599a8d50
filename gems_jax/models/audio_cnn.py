"""The audio CNN of Augusma et al. 2023 (arXiv 2312.05265): one log-mel "audio frame" -> one vector.

    image [M, W] (mel bands x STFT frames, gems_jax.data.log_mel's segments)
      -> blocks: ([3x3 valid conv + ReLU] x len(block), then 2x2 max-pool, floor) per block
      -> PyTorch AdaptiveAvgPool2d(pool_size) -> flatten channel-major (torch's NCHW order)
      -> [C_last * pool_size[0] * pool_size[1]]

The paper's widths (`PAPER_CHANNELS`) give 512 x 1 x 2 = 1024 features and 7,799,872 parameters;
no BatchNorm, no padding. Each block shrinks a side s to floor((s - 2 * convs) / 2), so the paper's
four blocks need at least 106 x 106 (106 -> 50 -> 22 -> 8 -> 1) and a 128 x 128 frame ends 2 x 2.
Layers are initialised as torch's Conv2d defaults (U(+-1/sqrt(fan_in)) weights and biases), the
distributions the authors trained from.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gems_jax.models import pytorch_init

# [paper]/[code] channels of the three convolutions of each of the four blocks.
PAPER_CHANNELS = ((32, 64, 64), (128, 128, 128), (256, 256, 256), (512, 512, 512))


def adaptive_bins(length: int, bins: int) -> list[tuple[int, int]]:
  """torch's adaptive pooling windows: bin i covers [floor(i L / n), ceil((i + 1) L / n)).

  Windows overlap when n does not divide L (L=3, n=2: [0, 2) and [1, 3)) and repeat when n > L.
  """
  return [(i * length // bins, -(-(i + 1) * length // bins)) for i in range(bins)]


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d(output_size) on NHWC: [N, H, W, C] -> [N, oh, ow, C].

  The sizes are static, so each window is a plain slice (a handful: (1, 2) in the paper).
  """
  rows = jnp.stack([x[:, a:b].mean(axis=1) for a, b in adaptive_bins(x.shape[1], output_size[0])],
                   axis=1)
  return jnp.stack([rows[:, :, a:b].mean(axis=2)
                    for a, b in adaptive_bins(x.shape[2], output_size[1])], axis=2)


def min_input_side(channels: Sequence[Sequence[int]]) -> int:
  """The smallest input side that leaves >= 1 pixel after the last pool (106 for the paper's CNN)."""
  side = 1
  for block in reversed(channels):
    side = 2 * side + 2 * len(block)
  return side


class AudioCNN(nn.Module):
  """Log-mel images [..., M, W] -> features [..., C_last * prod(pool_size)] (module docstring).

  Attributes:
    channels: output channels of each convolution, grouped by block (a 2x2 max-pool ends a block).
    pool_size: (height, width) bins of the final adaptive average pool.
  """
  channels: Sequence[Sequence[int]] = PAPER_CHANNELS
  pool_size: tuple[int, int] = (1, 2)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    lead, (height, width) = images.shape[:-2], images.shape[-2:]
    if min(height, width) < min_input_side(self.channels):
      raise ValueError(
          f"AudioCNN: audio frames of {height} x {width} are too small for blocks "
          f"{[len(b) for b in self.channels]} (at least {min_input_side(self.channels)} per side; "
          "raise log_mel n_mels / segment_frames or use fewer blocks)")
    x = images.reshape((-1, height, width, 1)).astype(jnp.float32)
    for i, block in enumerate(self.channels):
      for j, features in enumerate(block):
        fan_in = x.shape[-1] * 9
        x = nn.Conv(features, (3, 3), padding="VALID", kernel_init=pytorch_init.torch_kernel_init(),
                    bias_init=pytorch_init.torch_bias_init(fan_in), name=f"conv{i}_{j}")(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # floor, as torch's default.
    x = adaptive_avg_pool(x, tuple(self.pool_size))
    x = jnp.transpose(x, (0, 3, 1, 2))  # NCHW, so the flatten order is torch's.
    return x.reshape(lead + (-1,))
