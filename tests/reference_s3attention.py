"""Plain-NumPy float64 reference of the S3Attention block, written from the formulas.

Independent of gems_jax.models.s3attention: explicit DFT sums instead of FFTs, the paper's segment
matrix S, selection matrices P1 (tokens) and P2 (features), an explicit loop over the conv taps and
over heads. Formulas: the authors' `Attention.forward` (GEMS run.py:112-201) and the paper (§3, eq. 1-4).
"""
import numpy as np


def to_float64(tree: dict) -> dict:
  """A nested dict of arrays as float64 NumPy arrays."""
  return {k: to_float64(v) if isinstance(v, dict) else np.asarray(v, np.float64)
          for k, v in tree.items()}


def segment_matrix(channels: int, segments: int, segment_map: str) -> np.ndarray:
  """S [C, C]: (X S)[:, c] is the mean of the channels of the segment that channel c reads.

  Segment j holds channels j*w .. j*w+w-1 (w = C/r). 'block': channel c reads segment c // w (paper
  eq. 4). 'mod': channel c reads segment c mod r (the authors' tiling).
  """
  width = channels // segments
  s = np.zeros((channels, channels))
  for c in range(channels):
    seg = c // width if segment_map == "block" else c % segments
    s[seg * width:(seg + 1) * width, c] = 1.0 / width
  return s


def smooth(x: np.ndarray, filt: np.ndarray, segments: int, segment_map: str) -> np.ndarray:
  """F^-1[F(X S) * L] with the orthonormal real DFT written out; x [L, C], filt [C, L//2+1, 2]."""
  length, channels = x.shape
  u = x @ segment_matrix(channels, segments, segment_map)
  freqs = length // 2 + 1
  t = np.arange(length)
  spectrum = np.stack([(u * np.exp(-2j * np.pi * k * t / length)[:, None]).sum(0)
                       for k in range(freqs)]) / np.sqrt(length)
  filtered = spectrum * (filt[..., 0] + 1j * filt[..., 1]).T
  out = np.zeros((length, channels))
  for k in range(freqs):
    # Hermitian weight: bins with a mirror image count twice; DC and Nyquist once (real part).
    mirrored = 0 < k and not (length % 2 == 0 and k == length // 2)
    weight = 2.0 if mirrored else 1.0
    out += weight * np.real(filtered[k][None, :] * np.exp(2j * np.pi * k * t / length)[:, None])
  return out / np.sqrt(length)


def conv3(y: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """Conv1d, kernel 3, zero padding 1: z[t] = b + sum_k y[t+k-1] W[k]; W [3, C_in, C_out]."""
  length = y.shape[0]
  z = np.tile(bias, (length, 1)).astype(np.float64)
  for t in range(length):
    for k in range(3):
      if 0 <= t + k - 1 < length:
        z[t] += y[t + k - 1] @ kernel[k]
  return z


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def softmax(z: np.ndarray, axis: int) -> np.ndarray:
  e = np.exp(z - z.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def first_real_in_order(order: np.ndarray, real: np.ndarray, count: int) -> list[int]:
  """Positions of the first `count` real tokens, walking the stored permutation."""
  picked = [int(p) for p in order if real[p]]
  return picked[:count]


def position_batch_stats(z: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-position mean and biased variance over (batch, channels) of the real entries; z [B,L,C]."""
  b, length, c = z.shape
  mean, var = np.zeros(length), np.ones(length)
  for p in range(length):
    values = np.concatenate([z[i, p] for i in range(b) if real[i, p]] or [np.zeros(0)])
    if values.size:
      mean[p], var[p] = values.mean(), values.var()
  return mean, var


def s3attention(variables: dict, x: np.ndarray, mask: np.ndarray | None, *, num_heads: int,
                num_segments: int, num_landmark_tokens: int, segment_map: str, combine: str,
                norm: str, use_output_proj: bool, train: bool = False, max_len: int | None = None):
  """Reference forward (no dropout). Returns (y [B,N,C], batch statistics (mean, var) or None)."""
  p = to_float64(variables["params"])
  order = np.asarray(variables["constants"]["token_order"])
  features = np.asarray(variables["constants"]["feature_index"])
  x = np.asarray(x, np.float64)
  b, n, c = x.shape
  length = max_len or n
  real = np.ones((b, n), bool) if mask is None else np.asarray(mask, bool)
  real = np.pad(real, ((0, 0), (0, length - n)))
  x = np.concatenate([x, np.zeros((b, length - n, c))], 1) * real[..., None]
  head_dim = c // num_heads

  z = np.stack([conv3(np.concatenate([smooth(x[i], p["fourier_filter"], num_segments, segment_map)
                                      * real[i][:, None], x[i]], -1),
                      p["stem_kernel"], p["stem_bias"]) for i in range(b)])
  stats = None
  if norm == "batch_positions":
    bn = p["norm"]
    if train:
      mean, var = stats = position_batch_stats(z, real)
    else:
      mean = np.asarray(variables["batch_stats"]["norm"]["mean"], np.float64)
      var = np.asarray(variables["batch_stats"]["norm"]["var"], np.float64)
    z = (z - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5)
    z = z * bn["scale"][None, :, None] + bn["bias"][None, :, None]
  else:
    z = layer_norm(z, p["norm"]["scale"], p["norm"]["bias"])
  xt = np.where(z > 0, z, np.expm1(np.minimum(z, 0))) * real[..., None]

  qkv = xt @ p["qkv"]["kernel"] + p["qkv"].get("bias", 0.0)
  y = np.zeros((b, length, c))
  for i in range(b):
    landmarks = first_real_in_order(order, real[i], num_landmark_tokens)
    p1 = np.zeros((len(landmarks), length))
    p1[np.arange(len(landmarks)), landmarks] = 1.0
    p2 = np.zeros((head_dim, len(features)))
    p2[features, np.arange(len(features))] = 1.0
    n_real = max(int(real[i].sum()), 1)
    o1, o2 = np.zeros((length, c)), np.zeros((length, c))
    for h in range(num_heads):
      cols = slice(h * head_dim, (h + 1) * head_dim)
      q = qkv[i, :, 0 * c:1 * c][:, cols] * real[i][:, None]
      k = qkv[i, :, 1 * c:2 * c][:, cols]
      v = qkv[i, :, 2 * c:3 * c][:, cols]
      o1[:, cols] = softmax(q @ k.T @ p1.T / np.sqrt(head_dim), axis=1) @ p1 @ v
      o2[:, cols] = v @ p2 @ softmax(p2.T @ k.T @ q / np.sqrt(n_real), axis=0)
    yi = (layer_norm(o1, p["ln_row"]["scale"], p["ln_row"]["bias"])
          + layer_norm(o2, p["ln_col"]["scale"], p["ln_col"]["bias"]))
    if combine == "mean":
      yi = yi / 2.0
    if use_output_proj:
      yi = yi @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
    y[i] = yi * real[i][:, None]
  return y[:, :n], stats
