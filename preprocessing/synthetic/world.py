"""One synthetic clip: who is in it, how they move, what they show, and the frames and labels that follow.

`make_clip(spec)` plans a clip from its seed, renders it and labels it with `rules.label_clip`:
- the venue (background layout) and the cast (8 appearances) come from the source video's `venue_seed`, so
  clips cut from one source share a place and people;
- 2-6 people stand at different depths (face height 52-92 px at 360 p, larger in front), each drifting
  sideways, bobbing, and slowly growing or shrinking (+-10 %); the camera pans across the background;
- each person shows the clip's dominant expression with probability P_DOMINANT, else a random one, and with
  probability P_CHANGE switches to another expression at a random frame in the middle half of the clip;
- the crowd's trajectory (`spec.trajectory`, rules.TRAJECTORIES): in a 'rising' or 'falling' clip everyone
  showing the dominant expression shows an arc expression of contrasting arousal (rules.arc_emotions)
  during the first or the last third of the clip (rules.ending_frames), together, and does not switch
  otherwise. The third is chosen so that the arousal rises or falls: a crowd of joy that ends in trust
  falls, one that starts in trust rises. A rising clip and a falling clip drawn from the same seed show the
  same expressions in the same numbers, in the opposite order (tests/test_synthetic_world.py);
- with probability P_PASSER a passer-by (a larger person in front) crosses the frame, hiding the people
  behind; with probability P_PROP an object of the situation (placard, balloon, umbrella, ...) crosses the
  frame at face height;
- a person-frame is visible when at least VISIBLE_FRACTION of the face's skin pixels are in the frame and
  not covered; only visible person-frames get individual labels and count for the group labels;
- the sound (`spec.audio_seed`; None = a silent clip) is `audio.synthesize`'s, as long as the frames
  (num_frames / fps s), with the event of the clip's group category, or of another category
  (`spec.audio_offset`) in a clip whose sound disagrees with its faces;
- in an audio-led clip (`spec.audio_led`, a category) everyone, the passer-by included, shows 'none' in
  every frame, and the sound plants the category, which is the clip's (rules.label_clip, rule 7).
"""
import dataclasses

import numpy as np
from PIL import Image

from preprocessing.synthetic import audio, faces, rules, scenes

VISIBLE_FRACTION = 0.7
P_DOMINANT = 0.6
P_CHANGE = 0.3
P_PASSER = 0.3
P_PROP = 0.4
CAST_SIZE = 8
PEOPLE_PER_CLIP = (2, 3, 4, 5, 6)
PEOPLE_WEIGHTS = (0.1, 0.25, 0.3, 0.25, 0.1)
_MAX_SCALE = 1.1


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What the dataset decides about a clip; everything else follows from `seed`."""
  clip_id: str
  situation: int
  dominant_emotion: int
  venue_seed: int
  seed: tuple            # entropy for np.random.SeedSequence, e.g. (dataset seed, 2, clip index)
  width: int = 640
  height: int = 360
  num_frames: int = 40
  trajectory: str = "steady"              # one of rules.TRAJECTORIES
  described_situation: int | None = None  # what the description paraphrases; None = the drawn one
  fps: int = 10                           # frames per second: the sound lasts num_frames / fps s
  audio_seed: tuple | None = None         # entropy of the sound, e.g. (dataset seed, 3, clip); None = silent
  audio_offset: int = 0                   # the sound plants category (group category + offset) mod 3
  audio_led: int | None = None            # audio-led: faces all 'none', this category only the sound tells


@dataclasses.dataclass(frozen=True)
class ClipResult:
  """A rendered, labelled clip. P = people (passer-by included), T = frames."""
  spec: ClipSpec
  frames: np.ndarray          # uint8 [T, H, W, 3]
  expressions: np.ndarray     # int [P, T], index in EMOTIONS
  visible: np.ndarray         # bool [P, T]
  visible_fraction: np.ndarray  # float [P, T]
  boxes: np.ndarray           # float [P, T, 4] face boxes x1, y1, x2, y2 in frame pixels, clipped
  labels: rules.ClipLabels
  description: str
  arc_emotion: int            # index in EMOTIONS of the crowd's arc expression, -1 in a steady clip
  sound: np.ndarray | None    # int16 [round(T / fps * audio.SAMPLE_RATE)], None in a silent clip
  sound_category: int         # index in GROUP_CATEGORIES of the event planted in the sound, -1 if silent


@dataclasses.dataclass(eq=False)
class _Actor:
  """A person or prop moving across the frame; positions are of the face-box (or prop) centre."""
  sprites: dict               # emotion index (or -1 for a prop) -> faces.Sprite at _MAX_SCALE
  x0: float
  y0: float
  vx: float
  bob: tuple                  # amplitude px, angular frequency per frame, phase
  drift: float                # relative size change over the clip
  depth: float
  expressions: np.ndarray     # int [T] (-1 for a prop)


def _arc(spec: ClipSpec, rng: np.random.Generator):
  """(arc expression, frames it covers) of a rising or falling clip, None for a steady one. The arc covers
  the first third when it leads up to the dominant expression's arousal, else the last third; the draw
  does not depend on the direction, so a rising and a falling clip of one seed share their arc expression."""
  if spec.trajectory not in rules.TRAJECTORIES:
    raise ValueError(f"trajectory must be one of {rules.TRAJECTORIES}, got {spec.trajectory!r}")
  if spec.trajectory == "steady":
    return None
  choices = rules.arc_emotions(spec.dominant_emotion)
  emotion = choices[int(rng.integers(len(choices)))]
  arousal = lambda e: rules.EMOTION_VALENCE_AROUSAL[faces.EMOTIONS[e]][1]
  # A lower start rises to the dominant arousal, a higher one falls; the other way round at the end.
  arc_first = (arousal(emotion) < arousal(spec.dominant_emotion)) == (spec.trajectory == "rising")
  n = rules.ending_frames(spec.num_frames)
  return emotion, slice(0, n) if arc_first else slice(spec.num_frames - n, spec.num_frames)


def _timeline(spec: ClipSpec, arc, rng: np.random.Generator) -> np.ndarray:
  """Expression index per frame [T] of one person; `arc` as `_arc` returns it."""
  dominant, t = spec.dominant_emotion, spec.num_frames
  if spec.audio_led is not None:
    return np.full(t, faces.EMOTIONS.index("none"), np.int64)
  first = dominant if rng.random() < P_DOMINANT else int(rng.integers(len(faces.EMOTIONS)))
  line = np.full(t, first, np.int64)
  if arc is not None and first == dominant:   # the crowd turns together
    line[arc[1]] = arc[0]
  elif rng.random() < P_CHANGE:
    other = int(rng.integers(len(faces.EMOTIONS) - 1))
    line[int(rng.integers(t // 4, 3 * t // 4 + 1)):] = other + (other >= first)
  return line


def _person(appearance, face_height, x0, y0, vx, depth, spec, arc, rng) -> _Actor:
  expressions = _timeline(spec, arc, rng)
  body = (spec.height - y0) / (face_height / 2) + 1.0   # torso down past the bottom of the frame
  sprites = {int(e): faces.draw_person(appearance, faces.EMOTIONS[e], face_height * _MAX_SCALE, body)
             for e in np.unique(expressions)}
  bob = (float(rng.uniform(0, 3)), float(rng.uniform(0.1, 0.4)), float(rng.uniform(0, 2 * np.pi)))
  return _Actor(sprites, x0, y0, vx, bob, float(rng.uniform(-0.1, 0.1)), depth, expressions)


def _plan(spec: ClipSpec, rng: np.random.Generator) -> tuple:
  """(the actors of a clip back to front, its arc as `_arc` returns it)."""
  w, h, t = spec.width, spec.height, spec.num_frames
  unit = h / 360.0
  cast_rng = np.random.default_rng([spec.venue_seed, 1])
  cast = [faces.sample_appearance(cast_rng) for _ in range(CAST_SIZE)]
  arc = _arc(spec, rng)
  n = int(rng.choice(PEOPLE_PER_CLIP, p=PEOPLE_WEIGHTS))
  order = rng.permutation(CAST_SIZE)
  actors = []
  for k in range(n):
    depth = float(rng.uniform(0, 1))
    x0 = (k + 0.5 + rng.uniform(-0.25, 0.25)) * w / n
    y0 = h * (0.3 + 0.12 * depth + rng.uniform(-0.04, 0.04))
    vx = float(rng.normal(0, 0.6)) * w / 640
    actors.append(_person(cast[order[k]], (52 + 40 * depth) * unit, x0, y0, vx, depth, spec, arc, rng))
  if rng.random() < P_PASSER:
    face_height = rng.uniform(95, 105) * unit
    side = 1 if rng.random() < 0.5 else -1
    start = -side * 1.0 * face_height + (w if side < 0 else 0)
    speed = (w + 2.0 * face_height) / t * rng.uniform(0.8, 1.2)
    actors.append(_person(cast[order[n]], face_height, start, h * rng.uniform(0.45, 0.52), side * speed, 1.5,
                          spec, arc, rng))
  if rng.random() < P_PROP:
    size = int(rng.uniform(70, 110) * unit)
    rgba = scenes.draw_prop(spec.situation, size, rng)
    sprite = faces.Sprite(rgba, np.zeros(rgba.shape[:2], bool), (0.0, 0.0, float(size), float(size)))
    target = actors[int(rng.integers(n))]
    side = 1 if rng.random() < 0.5 else -1
    start = (-size if side > 0 else w + size) + rng.uniform(-0.2, 0.2) * w
    speed = (w + 2 * size) / t * rng.uniform(0.7, 1.1)
    actors.append(_Actor({-1: sprite}, start, target.y0 + rng.uniform(-0.3, 0.3) * size, side * speed,
                         (0.0, 0.0, 0.0), 0.0, 2.0, np.full(t, -1)))
  return sorted(actors, key=lambda a: a.depth), arc


@dataclasses.dataclass(frozen=True)
class _Scaled:
  image: Image.Image          # RGBA sprite
  opaque: np.ndarray          # bool [h, w], alpha >= 128
  face: np.ndarray            # bool [h, w]
  face_area: int
  face_box: tuple


def _scaled(sprite: faces.Sprite, scale: float, cache: dict, key) -> _Scaled:
  """The sprite resized by scale / _MAX_SCALE (quantised to 1 %, cached)."""
  q = round(scale / _MAX_SCALE, 2)
  if (key, q) not in cache:
    h, w = sprite.rgba.shape[:2]
    size = (max(1, round(w * q)), max(1, round(h * q)))
    image = Image.fromarray(sprite.rgba, "RGBA").resize(size, Image.BILINEAR)
    face = np.asarray(Image.fromarray(sprite.face).resize(size, Image.NEAREST))
    box = tuple(v * size[0] / w if i % 2 == 0 else v * size[1] / h for i, v in enumerate(sprite.face_box))
    cache[(key, q)] = _Scaled(image, np.asarray(image)[..., 3] >= 128, face, max(1, int(face.sum())), box)
  return cache[(key, q)]


def _paste(frame: Image.Image, owner: np.ndarray, sprite: _Scaled, cx: float, cy: float, label: int):
  """Alpha-blends `sprite` with its face-box centre at (cx, cy) into `frame` and marks in `owner` which
  pixels it covers (-1) and which show its face (`label`). Returns the face box in frame pixels."""
  fx1, fy1, fx2, fy2 = sprite.face_box
  ox, oy = int(round(cx - (fx1 + fx2) / 2)), int(round(cy - (fy1 + fy2) / 2))
  frame.paste(sprite.image, (ox, oy), sprite.image)
  sh, sw = sprite.opaque.shape
  fh, fw = owner.shape
  x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + sw, fw), min(oy + sh, fh)
  if x0 < x1 and y0 < y1:
    own = owner[y0:y1, x0:x1]
    own[sprite.opaque[y0 - oy:y1 - oy, x0 - ox:x1 - ox]] = -1
    own[sprite.face[y0 - oy:y1 - oy, x0 - ox:x1 - ox]] = label
  return (fx1 + ox, fy1 + oy, fx2 + ox, fy2 + oy)


def _render(spec: ClipSpec, actors: list, background: np.ndarray, pan: np.ndarray):
  """Frames [T,H,W,3], visible fraction [P,T] and face boxes [P,T,4] of the people (actors with faces)."""
  w, h, t = spec.width, spec.height, spec.num_frames
  people = [a for a in actors if a.expressions[0] >= 0]
  index = {id(a): p for p, a in enumerate(people)}
  frames = np.empty((t, h, w, 3), np.uint8)
  fraction = np.zeros((len(people), t))
  boxes = np.zeros((len(people), t, 4))
  cache = {}
  for i in range(t):
    frame = Image.fromarray(np.ascontiguousarray(background[:, pan[i]:pan[i] + w]))
    owner = np.full((h, w), -1, np.int8)
    areas = np.ones(len(people))
    for k, a in enumerate(actors):
      e = int(a.expressions[i])
      scale = _MAX_SCALE if e < 0 else 1.0 + a.drift * i / max(1, t - 1)
      sprite = _scaled(a.sprites[e], scale, cache, (k, e))
      amp, freq, phase = a.bob
      label = index[id(a)] if e >= 0 else -2
      box = _paste(frame, owner, sprite, a.x0 + a.vx * i, a.y0 + amp * np.sin(freq * i + phase), label)
      if label >= 0:
        boxes[label, i], areas[label] = box, sprite.face_area
    fraction[:, i] = np.bincount(owner[owner >= 0], minlength=len(people)) / areas
    frames[i] = np.asarray(frame)
  boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, w)
  boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, h)
  return frames, fraction, boxes, people


def make_clip(spec: ClipSpec) -> ClipResult:
  """Plans, renders and labels the clip `spec` (deterministic in spec)."""
  if spec.width % 2 or spec.height % 2:
    raise ValueError(f"width and height must be even for H.264 (got {spec.width}x{spec.height})")
  agrees = spec.audio_offset % len(rules.GROUP_CATEGORIES) == 0
  if spec.audio_led is not None and (spec.audio_seed is None or not agrees or spec.trajectory != "steady"):
    raise ValueError(f"an audio-led clip needs a sound that agrees and a steady trajectory: {spec}")
  plan_ss, light_ss, label_ss, text_ss = np.random.SeedSequence(spec.seed).spawn(4)
  rng = np.random.default_rng(plan_ss)
  actors, arc = _plan(spec, rng)
  margin = spec.width // 10
  background = scenes.draw_background(spec.situation, spec.width + margin, spec.height, spec.venue_seed,
                                      np.random.default_rng(light_ss))
  start, end = rng.integers(0, margin + 1, 2)
  pan = np.round(np.linspace(start, end, spec.num_frames)).astype(int)
  frames, fraction, boxes, people = _render(spec, actors, background, pan)
  expressions = np.stack([a.expressions for a in people])
  visible = fraction >= VISIBLE_FRACTION
  labels = rules.label_clip(expressions, visible, spec.situation, np.random.default_rng(label_ss),
                            spec.audio_led)
  described = spec.situation if spec.described_situation is None else spec.described_situation
  description = rules.describe_clip(len(people), described, labels.face_category,
                                    np.random.default_rng(text_ss))
  sound, sound_category = None, -1
  if spec.audio_seed is not None:
    sound_category = (labels.group_category + spec.audio_offset) % len(rules.GROUP_CATEGORIES)
    sound = audio.synthesize(spec.audio_seed, sound_category, spec.num_frames / spec.fps)
  return ClipResult(spec, frames, expressions, visible, fraction, boxes, labels, description,
                    -1 if arc is None else arc[0], sound, sound_category)
