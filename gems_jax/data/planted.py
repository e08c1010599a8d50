"""Planted-signal GEMS examples, made in memory: tests and quick runs without any video.

`make_planted_examples(spec, n, seed)` returns contract-conformant examples (`validation.validate_example`
accepts them) whose labels follow fixed, learnable rules. The "world" (prototypes and tables) comes
from `world_seed` only, so splits drawn with different `seed`s share it; `seed` draws the clips.
With C emotions, G group categories, M situational emotions and Z situations:

  * Value tables: emotion c has valence v[c] = the (c + 0.5) / C quantile of the valence range, and
    arousal a[c] = the same levels in a fixed random order.
  * People: a clip has 1..K people (tracks). A dominant emotion g ~ uniform(C); each person shows g
    with probability 0.6, otherwise a uniform other emotion, constant over the clip, except:
  * Trajectory (the temporal rule, as in the synthetic video world): a clip is steady, rising or
    falling (uniform). In a rising or falling clip the people showing g show an arc emotion instead
    during the first or the last w = max(1, round(n / 3)) of its n real steps: the arc emotion is
    the one closest to g in valence among those whose arousal lies on the other side of the range's
    middle, and the third is chosen so that the arousal rises or falls over the clip. Rising and
    falling thus differ only in the order of the steps, never in how many faces show which emotion.
  * Steps: with probability 0.5 all T steps are real, otherwise 1 + uniform(T // 2 .. T - 2) steps
    (the rest padded). Each person is visible at each real step with probability 0.85 (at least one
    face per clip), in a random slot; boxes drift slowly, track id = person index.
  * Faces: storage='embeddings': face_embedding = prototype[emotion] (unit norm) + a per-person
    offset (std 0.2 / sqrt(E) per dim) + per-step noise (std 0.5 / sqrt(E) per dim).
    storage='crops': an S x S JPEG filled with the emotion's colour (hues evenly spaced), with
    per-person brightness jitter and per-pixel noise.
  * Individual labels: emotion and v/a of the face's emotion (v/a plus a per-person noise of 5% of
    the range, clipped); each visible face is unlabelled (-1 / NaN) with probability 0.1.
  * group_emotion = the most frequent true emotion over the clip's visible faces (ties: lowest id).
  * valence = the mean over visible faces of their (noisy) true valence; arousal = the same mean of
    arousal over the visible faces of the last w real steps (where the crowd ends up: only the order
    of the steps tells it apart in a rising and a falling clip). At least one face is visible there.
  * group_category = the bin of the clip valence, highest valence first (so with the default names
    positive / neutral / negative the name matches); G equal-width bins over the central 60% of the
    valence range, the outer bins reaching its ends (G=3: edges at 40% and 60%, which balances the
    categories because clip means gather near the middle).
  * situation ~ uniform(Z). Text part 0 (scene) = a situation prototype + noise (std 0.5 / sqrt(D)),
    part 1 (background, present w.p. 0.8) and part 2 (event, present w.p. 0.7) the same with their
    own prototypes; absent parts are zero with text_mask False. The description string has
    matching "Background:" / "Event:" parts.
  * situational_emotion = multi-hot of {situation mod M, (situation + 1 + group_category) mod M}:
    a fixed pattern per situation plus a bit that depends on the faces through the category.

Clip ids look like VGAF's: `p<seed>v<video>_<clip>` with two clips per source video.
"""
from __future__ import annotations

import colorsys
import io
from typing import Any

import numpy as np
from PIL import Image

from gems_jax.data import spec as spec_lib

_DOMINANT_PROB = 0.6
_TRAJECTORIES = ("steady", "rising", "falling")
_VISIBLE_PROB = 0.85
_UNLABELLED_PROB = 0.1
_TEXT_PRESENT_PROB = (1.0, 0.8, 0.7)
_FACE_NOISE, _PERSON_NOISE, _TEXT_NOISE = 0.5, 0.2, 0.5
_CATEGORY_SPAN = 0.6  # Category bins split the central 60% of the valence range.
_FRAME_SIZE = (640.0, 360.0)  # Width, height of the imaginary frames the boxes live in.


def planted_spec(**overrides: Any) -> spec_lib.DatasetSpec:
  """A small embeddings spec for tests (T=8, K=4, E=D=32); keyword arguments override fields."""
  fields = dict(name="gems_planted", num_frames=8, max_faces=4, text_dim=32, storage="embeddings",
                face_size=16, embed_dim=32)
  fields.update(overrides)
  if fields["storage"] == "crops" and "embed_dim" not in overrides:
    fields["embed_dim"] = 0
  return spec_lib.DatasetSpec(**fields)


class _World:
  """The fixed tables and prototypes shared by every split."""

  def __init__(self, spec: spec_lib.DatasetSpec, world_seed: int):
    rng = np.random.default_rng([world_seed, 7919])
    c = spec.num_emotions
    levels = (np.arange(c) + 0.5) / c
    v_lo, v_hi = spec.valence_range
    a_lo, a_hi = spec.arousal_range
    self.valence = (v_lo + (v_hi - v_lo) * levels).astype(np.float32)
    self.arousal = (a_lo + (a_hi - a_lo) * levels[rng.permutation(c)]).astype(np.float32)
    self.face_proto = _unit_rows(rng, c, max(spec.embed_dim, 1))
    self.text_proto = np.stack([_unit_rows(rng, spec.num_situations, spec.text_dim)
                                for _ in range(spec.text_parts)])
    self.colours = np.array([colorsys.hsv_to_rgb(i / c, 0.8, 0.9) for i in range(c)]) * 255.0


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
  rows = rng.normal(size=(n, dim))
  return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _jpeg(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def _mode(values: np.ndarray, num_classes: int) -> int:
  return int(np.argmax(np.bincount(values, minlength=num_classes)))  # argmax: ties -> lowest id.


def _category(valence: float, spec: spec_lib.DatasetSpec) -> int:
  lo, hi = spec.valence_range
  g = spec.num_group_categories
  edges = 0.5 + (np.arange(1, g) / g - 0.5) * _CATEGORY_SPAN  # In units of the range.
  return g - 1 - int(np.searchsorted(edges, (valence - lo) / (hi - lo), side="right"))


def _make_example(spec: spec_lib.DatasetSpec, world: _World, rng: np.random.Generator,
                  seed: int, index: int) -> dict[str, Any]:
  t_max, k_max, c = spec.num_frames, spec.max_faces, spec.num_emotions
  full = rng.random() < 0.5 or t_max < 3
  n_steps = t_max if full else int(rng.integers(t_max // 2, t_max - 1)) + 1
  n_people = int(rng.integers(1, k_max + 1))
  dominant = int(rng.integers(c))
  others = (dominant + rng.integers(1, c, size=n_people)) % c
  shows_dominant = rng.random(n_people) < _DOMINANT_PROB
  emotion = np.tile(np.where(shows_dominant, dominant, others), (t_max, 1))  # [T, people]
  w = max(1, round(n_steps / 3))
  trajectory = _TRAJECTORIES[int(rng.integers(3))]
  if trajectory != "steady":
    middle = np.mean(spec.arousal_range)
    choices = np.flatnonzero((world.arousal > middle) != (world.arousal[dominant] > middle))
    arc = int(choices[np.argmin(np.abs(world.valence[choices] - world.valence[dominant]))])
    arc_first = (world.arousal[arc] < world.arousal[dominant]) == (trajectory == "rising")
    arc_steps = slice(0, w) if arc_first else slice(n_steps - w, n_steps)
    emotion[arc_steps, shows_dominant] = arc
  noise_v = 0.05 * (spec.valence_range[1] - spec.valence_range[0]) * rng.normal(size=n_people)
  noise_a = 0.05 * (spec.arousal_range[1] - spec.arousal_range[0]) * rng.normal(size=n_people)
  step_v = np.clip(world.valence[emotion] + noise_v, *spec.valence_range).astype(np.float32)
  step_a = np.clip(world.arousal[emotion] + noise_a, *spec.arousal_range).astype(np.float32)
  visible = rng.random((n_steps, n_people)) < _VISIBLE_PROB
  if not visible[n_steps - w:].any():
    visible[n_steps - 1, 0] = True

  step_mask = np.arange(t_max) < n_steps
  stride = int(rng.integers(4, 13))
  frame_index = np.where(step_mask, np.arange(t_max) * stride, -1).astype(np.int32)
  face_mask = np.zeros((t_max, k_max), bool)
  track = np.full((t_max, k_max), -1, np.int32)
  for t in range(n_steps):
    people = np.flatnonzero(visible[t])
    slots = rng.permutation(k_max)[:len(people)]
    face_mask[t, slots] = True
    track[t, slots] = people
  person_of = np.maximum(track, 0)
  labelled = face_mask & (rng.random((t_max, k_max)) >= _UNLABELLED_PROB)

  width, height = _FRAME_SIZE
  centre = rng.uniform([0.1 * width, 0.2 * height], [0.9 * width, 0.8 * height], (n_people, 2))
  side = rng.uniform(24, 64, n_people)
  drift = np.arange(t_max)[:, None, None] * rng.normal(0, 2.0, (1, n_people, 2))
  centres = (centre[None] + drift)[np.arange(t_max)[:, None], person_of]  # [T, K, 2]
  half = side[person_of][..., None] / 2
  boxes = np.concatenate([centres - half, centres + half], axis=-1)
  boxes = np.where(face_mask[..., None], boxes, 0).astype(np.float32)
  scores = np.where(face_mask, rng.uniform(0.9, 1.0, (t_max, k_max)), 0).astype(np.float32)

  steps = np.arange(t_max)[:, None]
  faces_emotion, faces_v, faces_a = (x[steps, person_of] for x in (emotion, step_v, step_a))  # [T, K]
  ending = face_mask & (steps >= n_steps - w)
  group_emotion = _mode(faces_emotion[face_mask], c)
  valence = float(faces_v[face_mask].mean())
  arousal = float(faces_a[ending].mean())
  group_category = _category(valence, spec)
  situation = int(rng.integers(spec.num_situations))
  m = spec.num_situational_emotions
  situational = np.zeros(m, np.float32)
  situational[[situation % m, (situation + 1 + group_category) % m]] = 1.0

  text_mask = rng.random(spec.text_parts) < np.resize(_TEXT_PRESENT_PROB, spec.text_parts)
  text_mask[0] = True
  text = world.text_proto[:, situation] + _TEXT_NOISE / np.sqrt(spec.text_dim) * rng.normal(
      size=(spec.text_parts, spec.text_dim))
  text = np.where(text_mask[:, None], text, 0).astype(np.float32)
  place = spec.situation_names[situation]
  parts = [f"People gathered at a {place}.", f"Background: the {place} scene.",
           f"Event: a {place} moment."][:spec.text_parts]
  description = " ".join(p for p, present in zip(parts, text_mask) if present)

  video = f"p{seed}v{index // 2}"
  example = {
      "clip_id": f"{video}_{index % 2}", "source_video": video, "description": description,
      "frame_index": frame_index, "step_mask": step_mask,
      "face_boxes": boxes, "face_scores": scores, "face_track": track, "face_mask": face_mask,
      "individual_emotion": np.where(labelled, faces_emotion, -1).astype(np.int32),
      "individual_valence": np.where(labelled, faces_v, np.nan).astype(np.float32),
      "individual_arousal": np.where(labelled, faces_a, np.nan).astype(np.float32),
      "text_embedding": text, "text_mask": text_mask,
      "group_emotion": np.int32(group_emotion), "group_category": np.int32(group_category),
      "valence": np.float32(valence), "arousal": np.float32(arousal),
      "situational_emotion": situational, "situation": np.int32(situation),
  }
  if spec.storage == "embeddings":
    e = spec.embed_dim
    offset = _PERSON_NOISE / np.sqrt(e) * rng.normal(size=(n_people, e))
    emb = (world.face_proto[faces_emotion] + offset[person_of]
           + _FACE_NOISE / np.sqrt(e) * rng.normal(size=(t_max, k_max, e)))
    example["face_embedding"] = np.where(face_mask[..., None], emb, 0).astype(np.float32)
  else:
    s = spec.face_size
    brightness = rng.uniform(0.8, 1.2, n_people)
    faces = np.full((t_max, k_max), b"", dtype=object)
    for t, k in zip(*np.nonzero(face_mask)):
      person = track[t, k]
      pixels = world.colours[emotion[t, person]] * brightness[person] + rng.normal(0, 12, (s, s, 3))
      faces[t, k] = _jpeg(np.clip(pixels, 0, 255).astype(np.uint8))
    example["faces"] = faces
  return example


def make_planted_examples(spec: spec_lib.DatasetSpec, num_examples: int, seed: int, *,
                          world_seed: int = 0) -> list[dict[str, Any]]:
  """`num_examples` planted examples (rules in the module docstring), deterministic per seed."""
  world = _World(spec, world_seed)
  rng = np.random.default_rng([seed, 104729])
  return [_make_example(spec, world, rng, seed, i) for i in range(num_examples)]
