"""An independent NumPy (float64, NHWC) forward of a Keras 2 HDF5 model, the FER parity reference.

It shares no code with preprocessing/fer.py: it reads the file with h5py itself, keeps Keras'
own layouts (NHWC activations, HWIO kernels, [kh, kw, in, multiplier] depthwise kernels) and
writes each layer from Keras' definition, with TensorFlow's 'same' padding computed per axis.

    probs = forward(path, x)   # x float [n, 64, 64, 1] (NHWC, the model's input) -> float64 [n, 7]
"""
import json

import h5py
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def read(path):
  """(layer list of model_config, {layer: {weight short name: float64 array}})."""
  with h5py.File(path, "r") as f:
    layers = json.loads(f.attrs["model_config"])["config"]["layers"]
    weights = {}
    for layer in layers:
      group = f["model_weights"][layer["name"]]
      weights[layer["name"]] = {
          name.decode().rsplit("/", 1)[1].split(":")[0]: np.asarray(group[name], np.float64)
          for name in group.attrs["weight_names"]}
  return layers, weights


def _pad_same(x, kernel, stride, value):
  """TF 'same': output ceil(size / stride), total padding split with the extra pixel after."""
  widths = [(0, 0)]
  for size, k, s in zip(x.shape[1:3], kernel, stride):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    widths.append((total // 2, total - total // 2))
  return np.pad(x, widths + [(0, 0)], constant_values=value)


def _windows(x, kernel, stride, padding, value=0.0):
  """[n, oh, ow, C, kh, kw]: the input patch under each output pixel."""
  if padding == "same":
    x = _pad_same(x, kernel, stride, value)
  patches = sliding_window_view(x, tuple(kernel), axis=(1, 2))
  return patches[:, ::stride[0], ::stride[1]]


def conv2d(x, kernel, stride, padding, bias=None):
  """x [n, H, W, Cin], kernel HWIO [kh, kw, Cin, Cout] -> [n, oh, ow, Cout]."""
  y = np.einsum("nhwcij,ijco->nhwo", _windows(x, kernel.shape[:2], stride, padding), kernel)
  return y if bias is None else y + bias


def depthwise_conv2d(x, kernel, stride, padding):
  """x [n, H, W, C], kernel [kh, kw, C, m] -> [n, oh, ow, C * m] (channel c * m + j)."""
  y = np.einsum("nhwcij,ijcm->nhwcm", _windows(x, kernel.shape[:2], stride, padding), kernel)
  return y.reshape(*y.shape[:3], -1)


def _activation(x, name):
  if name == "linear":
    return x
  if name == "relu":
    return np.maximum(x, 0.0)
  if name == "softmax":
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
  raise ValueError(name)


def apply_layer(kind, c, w, inputs):
  if kind == "Conv2D":
    y = conv2d(inputs[0], w["kernel"], c["strides"], c["padding"], w.get("bias"))
    return _activation(y, c["activation"])
  if kind == "SeparableConv2D":
    y = depthwise_conv2d(inputs[0], w["depthwise_kernel"], c["strides"], c["padding"])
    y = conv2d(y, w["pointwise_kernel"], (1, 1), "valid", w.get("bias"))
    return _activation(y, c["activation"])
  if kind == "BatchNormalization":
    scale = w["gamma"] / np.sqrt(w["moving_variance"] + c["epsilon"])
    return (inputs[0] - w["moving_mean"]) * scale + w["beta"]
  if kind == "MaxPooling2D":
    patches = _windows(inputs[0], c["pool_size"], c["strides"], c["padding"], value=-np.inf)
    return patches.max(axis=(-2, -1))
  if kind == "Activation":
    return _activation(inputs[0], c["activation"])
  if kind == "Add":
    return sum(inputs)
  if kind == "GlobalAveragePooling2D":
    return inputs[0].mean(axis=(1, 2))
  raise ValueError(f"reference has no {kind}")


def forward(path, x):
  """The model's output (softmax probabilities) for NHWC input x [n, 64, 64, 1], in float64."""
  layers, weights = read(path)
  values = {}
  for layer in layers:
    name = layer["name"]
    if layer["class_name"] == "InputLayer":
      values[name] = np.asarray(x, np.float64)
      continue
    inputs = [values[node[0]] for node in layer["inbound_nodes"][0]]
    values[name] = apply_layer(layer["class_name"], layer["config"], weights[name], inputs)
  return values[layers[-1]["name"]]
