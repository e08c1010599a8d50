"""Automatic per-face emotion labels: the pretrained labellers and their classes in our vocabulary.

    matrix = mapping_matrix(DEFAULT_MAPPING, spec.emotion_names)   # float32 [7, V]
    probs = fer_probs @ matrix                                      # [..., 7] -> [..., V]
    describe("fer_mini_xception")   # 'fer_mini_xception (FER2013, pretrained)'

NumPy only: the networks run in `preprocessing/fer.py` (PyTorch, inside the build and inside the
predict tool's extraction subprocess), which hand back FER probabilities; the build and
`gems_jax.predict` (which must not import torch) map them here into a dataset's emotion names.

Labellers (`--individual_labels` of preprocessing.build; `individual_labels` of ExtractConfig and
DatasetSpec): 'none', or a key of `LABELLERS`. Both FER networks were trained on FER2013, which is
generally treated as research-only data: use their labels for research, not in a product.

FER2013 classes (the networks' output order): angry, disgust, fear, happy, sad, surprise, neutral.
`DEFAULT_MAPPING` sends each to one of the default emotion names (spec.DEFAULT_EMOTION_NAMES):
angry -> anger, disgust -> disgust, fear -> fear, happy -> joy, sad -> sadness, surprise ->
surprise, neutral -> none. What does not fit:
  * our classes no FER class expresses: trust and anticipation (`UNEXPRESSED`; probability 0,
    never an automatic label);
  * FER classes our vocabulary cannot express: none lacks a target, but one is approximate: FER's
    'neutral' (a calm, expressionless face) goes to our 'none' (no emotion shown).
A mapping may send several FER classes to one name (their probabilities add up); every FER class
needs a target in the dataset's vocabulary (a custom labels.json without 'none' must say where
'neutral' goes, e.g. `--fer_mapping neutral=trust`).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Mapping, Sequence

import numpy as np

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
DEFAULT_MAPPING = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "joy",
                   "sad": "sadness", "surprise": "surprise", "neutral": "none"}
UNEXPRESSED = ("trust", "anticipation")  # Default emotion names no FER class maps to.
NONE = "none"


@dataclasses.dataclass(frozen=True)
class Labeller:
  model: str  # The preprocessing.fer.MODELS key of its network.
  training_data: str  # What its weights were trained on.


LABELLERS = {"fer_mini_xception": Labeller("mini_xception", "FER2013"),
             "fer_big_xception": Labeller("big_xception", "FER2013")}
CHOICES = (NONE, *LABELLERS)


def check_labeller(name: str) -> str:
  """`name` if it is 'none' or a labeller; else ValueError listing the choices."""
  if name not in CHOICES:
    raise ValueError(f"unknown individual labeller {name!r}; choose one of {list(CHOICES)}")
  return name


def describe(name: str) -> str:
  """'fer_mini_xception (FER2013, pretrained)' for a labeller."""
  return f"{name} ({LABELLERS[check_labeller(name)].training_data}, pretrained)"


def mapping_matrix(mapping: Mapping[str, str], emotion_names: Sequence[str]) -> np.ndarray:
  """float32 [7, len(emotion_names)]: 1 where a FER class goes to an emotion (FER_CLASSES order).

  Every FER class must map to one name of `emotion_names`; an unknown key or target is an error.
  """
  unknown = set(mapping) - set(FER_CLASSES)
  missing = [c for c in FER_CLASSES if c not in mapping]
  if unknown or missing:
    raise ValueError(f"FER mapping: unknown classes {sorted(unknown)}, missing {missing}")
  matrix = np.zeros((len(FER_CLASSES), len(emotion_names)), np.float32)
  for i, fer_class in enumerate(FER_CLASSES):
    if mapping[fer_class] not in emotion_names:
      raise ValueError(f"FER mapping: {fer_class!r} -> {mapping[fer_class]!r}, which is not one "
                       f"of the emotion names {list(emotion_names)}")
    matrix[i, list(emotion_names).index(mapping[fer_class])] = 1.0
  return matrix


def parse_mapping(text: str) -> dict[str, str]:
  """DEFAULT_MAPPING with the overrides of `text`: 'fer=ours,...' (e.g. 'neutral=trust') or the
  path of a JSON object {fer class: emotion name}. Checked against the FER classes only (the
  vocabulary is checked by `mapping_matrix`)."""
  if pathlib.Path(text).is_file():
    overrides = json.loads(pathlib.Path(text).read_text())
    if not isinstance(overrides, dict):
      raise ValueError(f"FER mapping file {text}: expected a JSON object")
  else:
    pairs = [item.split("=") for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
      raise ValueError(f"FER mapping {text!r}: expected fer_class=emotion[,...] or a JSON file")
    overrides = {k.strip(): v.strip() for k, v in pairs}
  unknown = sorted(set(overrides) - set(FER_CLASSES))
  if unknown:
    raise ValueError(f"FER mapping: unknown FER classes {unknown}; they are {list(FER_CLASSES)}")
  return {**DEFAULT_MAPPING, **{k: str(v) for k, v in overrides.items()}}


def to_vocabulary(fer_probs: np.ndarray, mapping: Mapping[str, str],
                  emotion_names: Sequence[str]) -> np.ndarray:
  """FER probabilities float32 [..., 7] -> probabilities over emotion_names float32 [..., V]
  (a row of zeros stays zeros: an empty slot)."""
  return np.asarray(fer_probs, np.float32) @ mapping_matrix(mapping, emotion_names)
