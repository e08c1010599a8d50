"""Drawn people with a known facial expression, as RGBA sprites.

A person is a head (skin oval with light falloff and eye-socket/nose shadows, ears, eyes with whites and
irises, brows, nose, mouth, cheek tint, hair, optional glasses or hat) above a neck and shoulders. The head
is drawn `SUPERSAMPLE` times larger as polygons (rotated by the head roll in geometry, so no image
rotation is needed), box-filtered down, then shaded at final size. The structure is realistic enough for
MTCNN to find the faces (measured in tests/test_synthetic_world.py; rates in docs/synthetic_world.md).

Each of the 9 emotion classes has its own expression (`EXPRESSIONS`). The cues are large parts of the face
(brow slope and height, eye opening and gaze, mouth shape and openness, face/cheek tint, tear, forehead or
nose lines), so they survive downscaling to a 48 px crop.

Geometry is in head units u = half the face height (forehead to chin): the head centre is the origin,
x points right and y down; angles follow PIL (degrees, clockwise from 3 o'clock).
"""
import dataclasses

import numpy as np
from PIL import Image, ImageDraw

EMOTIONS = ("fear", "anger", "joy", "sadness", "disgust", "surprise", "trust", "anticipation", "none")
SUPERSAMPLE = 3

SKIN_TONES = ((255, 224, 196), (241, 194, 167), (231, 180, 140), (214, 160, 110), (190, 130, 85),
              (160, 102, 62), (122, 76, 44), (96, 60, 36))
HAIR_COLOURS = ((30, 22, 16), (60, 40, 25), (110, 70, 35), (170, 120, 60), (215, 185, 120),
                (150, 150, 150), (120, 40, 20))
CLOTHES = ((40, 60, 120), (150, 30, 40), (30, 110, 60), (230, 230, 230), (30, 30, 30), (200, 150, 40),
           (100, 60, 140), (90, 90, 100), (200, 100, 150), (60, 140, 170))
HAIR_STYLES = ("short", "long", "bald", "bun", "curly")

# The box MTCNN reports for a drawn face, in head units before roll and aspect scaling (calibrated by
# measuring MTCNN on drawn faces; see docs/synthetic_world.md).
FACE_BOX_U = (-0.635, -0.78, 0.675, 0.975)
# Head canvas extent in head units (hair, bun and hat included).
_HEAD_HALF_WIDTH_U, _HEAD_TOP_U, _HEAD_BOTTOM_U = 1.35, -1.65, 1.4


@dataclasses.dataclass(frozen=True)
class Expression:
  """Drawing parameters of one emotion (offsets in head units; a negative dy moves up)."""
  brow_inner_dy: float      # inner brow end, from rest
  brow_outer_dy: float      # outer brow end, from rest
  brow_right_dy: float      # extra offset of the right brow only (asymmetric expressions)
  eye_open: float           # eye height factor (1 = rest)
  gaze: tuple               # iris offset (dx, dy)
  happy_eyes: bool          # lower lids pushed up into an arc
  mouth: str                # shape drawn by _draw_mouth
  tint: tuple               # RGB tint of the face
  tint_strength: float
  blush: float = 0.0        # strength of red cheeks
  tear: bool = False
  forehead_lines: bool = False
  nose_wrinkle: bool = False


EXPRESSIONS = {
    "fear": Expression(-0.17, -0.03, 0.0, 1.4, (0.0, 0.0), False, "grimace", (200, 215, 235), 0.22,
                       forehead_lines=True),
    "anger": Expression(0.14, -0.1, 0.0, 0.6, (0.0, 0.0), False, "clenched", (225, 40, 30), 0.2),
    "joy": Expression(-0.06, -0.06, 0.0, 0.8, (0.0, 0.0), True, "open_smile", (255, 255, 255), 0.0,
                      blush=0.5),
    "sadness": Expression(-0.17, 0.08, 0.0, 0.7, (0.0, 0.05), False, "frown", (140, 150, 200), 0.15,
                          tear=True),
    "disgust": Expression(0.1, 0.03, -0.16, 0.65, (0.0, 0.0), False, "snarl", (140, 190, 70), 0.18,
                          nose_wrinkle=True),
    "surprise": Expression(-0.22, -0.2, 0.0, 1.45, (0.0, 0.0), False, "o", (255, 255, 255), 0.0,
                           forehead_lines=True),
    "trust": Expression(-0.07, 0.02, 0.0, 0.85, (0.0, 0.0), False, "soft_smile", (255, 255, 255), 0.0,
                        blush=0.4),
    "anticipation": Expression(-0.1, -0.02, 0.0, 1.15, (0.085, -0.03), False, "parted", (255, 205, 120),
                               0.15),
    "none": Expression(0.0, 0.0, 0.0, 1.0, (0.0, 0.0), False, "line", (255, 255, 255), 0.0),
}


@dataclasses.dataclass(frozen=True)
class Appearance:
  """What stays fixed for one person across a clip."""
  skin: tuple
  hair: tuple
  hair_style: str
  clothes: tuple
  face_aspect: float        # face half-width / half-height
  eye_spacing: float
  mouth_width: float
  glasses: bool
  hat: tuple | None         # hat colour or None
  angle: float              # head roll in degrees (counter-clockwise on screen)


def sample_appearance(rng: np.random.Generator) -> Appearance:
  """A random person; every draw comes from `rng`, so a seed fixes the cast."""
  return Appearance(
      skin=SKIN_TONES[rng.integers(len(SKIN_TONES))],
      hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
      hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
      clothes=CLOTHES[rng.integers(len(CLOTHES))],
      face_aspect=float(rng.uniform(0.72, 0.84)),
      eye_spacing=float(rng.uniform(0.3, 0.35)),
      mouth_width=float(rng.uniform(0.28, 0.34)),
      glasses=bool(rng.random() < 0.15),
      hat=CLOTHES[rng.integers(len(CLOTHES))] if rng.random() < 0.12 else None,
      angle=float(rng.uniform(-10.0, 10.0)),
  )


@dataclasses.dataclass(frozen=True)
class Sprite:
  """A person at final size.

  rgba: uint8 [h, w, 4]. face: bool [h, w], skin pixels of the face not covered by hair (occlusion is
  measured on them). face_box: (x1, y1, x2, y2) in sprite pixels, the box MTCNN reports for this face.
  """
  rgba: np.ndarray
  face: np.ndarray
  face_box: tuple


def _shade(colour, factor):
  return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)


def _mix(a, b, t):
  return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))


class _Pen:
  """Draws head-unit polygons, rotated by the head roll, into an image and a face mask at once."""

  def __init__(self, img: Image.Image, mask: Image.Image, u: float, centre, angle: float):
    self.draw, self.mask = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    self.u, self.centre = u, np.asarray(centre, np.float64)
    t = np.deg2rad(angle)
    self.rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])

  def pts(self, points):
    xy = np.asarray(points, np.float64) @ self.rot.T * self.u + self.centre
    return [tuple(p) for p in xy]

  def width(self, w_u):
    return max(1, int(round(w_u * self.u)))

  def polygon(self, points, fill, mask=None):
    self.draw.polygon(self.pts(points), fill=fill)
    if mask is not None:
      self.mask.polygon(self.pts(points), fill=mask)

  def line(self, points, fill, width_u):
    self.draw.line(self.pts(points), fill=fill, width=self.width(width_u), joint="curve")

  def ellipse(self, cx, cy, rx, ry, fill, mask=None):
    self.polygon(_arc_points(cx, cy, rx, ry, 0, 360), fill, mask)

  def chord(self, cx, cy, rx, ry, start, end, fill, mask=None):
    self.polygon(_arc_points(cx, cy, rx, ry, start, end), fill, mask)

  def arc(self, cx, cy, rx, ry, start, end, fill, width_u):
    self.line(_arc_points(cx, cy, rx, ry, start, end), fill, width_u)


def _arc_points(cx, cy, rx, ry, start, end, n=40):
  t = np.deg2rad(np.linspace(start, end, n))
  return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _draw_hair_back(pen: _Pen, a: Appearance):
  fa = a.face_aspect
  if a.hair_style == "long" and a.hat is None:
    top = _arc_points(0, -0.05, fa + 0.2, 1.1, 180, 360)
    pen.polygon(np.concatenate([[(-fa - 0.2, 1.25)], top, [(fa + 0.2, 1.25)]]), a.hair)
  elif a.hair_style == "bun" and a.hat is None:
    pen.ellipse(0, -1.22, 0.34, 0.3, a.hair)


def _draw_hair_front(pen: _Pen, a: Appearance):
  fa = a.face_aspect
  if a.hat is not None:
    pen.chord(0, -0.68, fa + 0.06, 0.62, 180, 360, a.hat, mask=0)
    pen.polygon([(-fa - 0.28, -0.78), (fa + 0.28, -0.78), (fa + 0.28, -0.64), (-fa - 0.28, -0.64)],
                _shade(a.hat, 0.7), mask=0)
    return
  if a.hair_style == "bald":
    for side in (-1, 1):
      pen.chord(side * (fa - 0.05), -0.3, 0.1, 0.3, 90 - side * 90, 270 - side * 90, a.hair, mask=0)
    return
  outer = _arc_points(0, -0.02, fa + 0.05, 1.14, 180, 360)
  hairline = _arc_points(0, -0.3, fa - 0.04, 0.38 if a.hair_style != "curly" else 0.42, 360, 180)
  pen.polygon(np.concatenate([outer, hairline]), a.hair, mask=0)
  if a.hair_style == "curly":
    for x in np.linspace(-fa, fa, 7):
      y = -1.02 * np.sqrt(max(0.0, 1 - (x / (fa + 0.05)) ** 2)) - 0.02
      pen.ellipse(x, y, 0.2, 0.17, a.hair, mask=0)


def _draw_eyes(pen: _Pen, a: Appearance, e: Expression, skin):
  """Almond eyes: white, iris and pupil, then skin lids over the iris' overflow and a dark lash line."""
  s, y0, rx = a.eye_spacing, -0.12, 0.16
  up, low = 0.095 * e.eye_open, 0.06 * e.eye_open
  if e.happy_eyes:
    low = -0.35 * up
  xs = np.linspace(-rx, rx, 24)
  bulge = np.sqrt(1 - (xs / rx) ** 2)
  for side in (-1, 1):
    x0 = side * s
    lift = -0.025 * side * xs / rx   # outer corner slightly higher
    upper = np.stack([x0 + xs, y0 + lift - up * bulge ** 0.8], 1)
    lower = np.stack([x0 + xs, y0 + lift + low * bulge ** 0.9], 1)[::-1]
    pen.polygon(np.concatenate([upper, lower]), (242, 240, 232))
    ir = 0.082
    gx, gy = x0 + e.gaze[0], y0 + e.gaze[1] + 0.01
    pen.ellipse(gx, gy, ir, ir, (80, 50, 30))
    pen.ellipse(gx, gy, ir * 0.5, ir * 0.5, (8, 8, 8))
    pen.ellipse(gx - 0.03, gy - 0.03, 0.018, 0.018, (250, 250, 250))
    # Lids: skin above the upper curve and below the lower one hide what spills out of the almond.
    pen.polygon(np.concatenate([upper, [(x0 + rx + 0.02, y0 - 0.23), (x0 - rx - 0.02, y0 - 0.23)]]), skin)
    pen.polygon(np.concatenate([lower, [(x0 - rx - 0.02, y0 + 0.14), (x0 + rx + 0.02, y0 + 0.14)]]), skin)
    pen.line(upper, (30, 20, 16), 0.04 if e.eye_open >= 0.8 else 0.055)
    pen.line(lower, _shade(skin, 0.6), 0.018)
  if e.tear:
    pen.polygon([(s + 0.04, 0.0), (s + 0.1, 0.13), (s + 0.04, 0.18), (s - 0.02, 0.13)], (110, 165, 240))


def _draw_brows(pen: _Pen, a: Appearance, e: Expression):
  s = a.eye_spacing
  colour = _mix(a.hair if a.hair_style != "bald" else (60, 45, 35), (25, 18, 12), 0.5)
  for side in (-1, 1):
    extra = e.brow_right_dy if side > 0 else 0.0
    inner = (side * (s - 0.16), -0.33 + e.brow_inner_dy + extra)
    mid = (side * s, -0.39 + (e.brow_inner_dy + e.brow_outer_dy) / 2 + extra)
    outer = (side * (s + 0.19), -0.31 + e.brow_outer_dy + extra)
    pen.line([inner, mid, outer], colour, 0.085)
  if e.forehead_lines:
    for k in range(2):
      pen.arc(0, -0.6 - 0.09 * k, 0.32, 0.08, 200, 340, _shade(a.skin, 0.68), 0.025)


def _draw_nose(pen: _Pen, a: Appearance, e: Expression):
  pen.arc(0, 0.2, 0.13, 0.09, 20, 160, _shade(a.skin, 0.55), 0.035)
  for side in (-1, 1):
    pen.ellipse(side * 0.07, 0.23, 0.035, 0.025, _shade(a.skin, 0.4))
  if e.nose_wrinkle:
    for k in range(3):
      y = -0.03 + 0.055 * k
      pen.line([(-0.11, y), (0.11, y)], _shade(a.skin, 0.62), 0.022)


def _draw_mouth(pen: _Pen, a: Appearance, e: Expression):
  w, y = a.mouth_width, 0.5
  lip = _mix(a.skin, (120, 25, 40), 0.55)
  dark, teeth = (55, 12, 18), (245, 240, 230)
  m = e.mouth
  if m == "line":
    pen.line([(-w, y), (w, y)], lip, 0.07)
  elif m == "soft_smile":   # closed lips curving up, with dimples at the corners
    pen.arc(0, y - 0.16, w + 0.03, 0.22, 15, 165, lip, 0.09)
    for side in (-1, 1):
      centre = 90 - 90 * side   # "(" left of the mouth, ")" right of it
      pen.arc(side * (w + 0.07), y - 0.06, 0.04, 0.07, centre - 80, centre + 80, _shade(a.skin, 0.6), 0.025)
  elif m == "open_smile":
    pen.chord(0, y - 0.04, w + 0.06, 0.22, 0, 180, lip)
    pen.chord(0, y - 0.02, w + 0.02, 0.18, 0, 180, dark)
    pen.polygon([(-w + 0.02, y - 0.02), (w - 0.02, y - 0.02), (w - 0.06, y + 0.05),
                 (-w + 0.06, y + 0.05)], teeth)
  elif m == "frown":
    pen.arc(0, y + 0.14, w, 0.15, 200, 340, lip, 0.08)
  elif m == "o":
    pen.ellipse(0, y + 0.03, 0.15, 0.19, lip)
    pen.ellipse(0, y + 0.03, 0.11, 0.15, dark)
  elif m == "grimace":
    pen.polygon([(-w - 0.08, y + 0.02), (-w + 0.05, y - 0.06), (w - 0.05, y - 0.06), (w + 0.08, y + 0.02),
                 (w - 0.03, y + 0.16), (-w + 0.03, y + 0.16)], lip)
    pen.polygon([(-w - 0.03, y + 0.02), (-w + 0.07, y - 0.03), (w - 0.07, y - 0.03), (w + 0.03, y + 0.02),
                 (w - 0.05, y + 0.12), (-w + 0.05, y + 0.12)], dark)
    pen.polygon([(-w + 0.05, y + 0.06), (w - 0.05, y + 0.06), (w - 0.07, y + 0.11), (-w + 0.07, y + 0.11)],
                teeth)
  elif m == "clenched":
    pen.polygon([(-w - 0.03, y + 0.05), (-w + 0.02, y - 0.07), (w - 0.02, y - 0.07), (w + 0.03, y + 0.05),
                 (w - 0.02, y + 0.1), (-w + 0.02, y + 0.1)], lip)
    pen.polygon([(-w + 0.03, y - 0.035), (w - 0.03, y - 0.035), (w - 0.03, y + 0.06), (-w + 0.03, y + 0.06)],
                teeth)
    pen.line([(-w + 0.03, y + 0.012), (w - 0.03, y + 0.012)], (90, 80, 75), 0.02)
  elif m == "snarl":
    pen.polygon([(-w, y + 0.05), (-0.05, y + 0.02), (w * 0.55, y - 0.13), (w + 0.02, y - 0.03),
                 (0.12, y + 0.1), (-w + 0.05, y + 0.09)], lip)
    pen.polygon([(-w + 0.06, y + 0.05), (-0.04, y + 0.035), (w * 0.55, y - 0.09), (w - 0.03, y - 0.02),
                 (0.1, y + 0.065)], dark)
    pen.line([(-0.02, y + 0.03), (w * 0.55, y - 0.08)], teeth, 0.03)
  elif m == "parted":
    pen.ellipse(0, y, w * 0.62, 0.075, lip)
    pen.ellipse(0, y + 0.005, w * 0.45, 0.04, dark)
  else:
    raise ValueError(f"unknown mouth shape {m!r}")


def _draw_glasses(pen: _Pen, a: Appearance):
  s, frame = a.eye_spacing, (25, 25, 25)
  for side in (-1, 1):
    x0 = side * s
    box = [(x0 - 0.2, -0.25), (x0 + 0.2, -0.25), (x0 + 0.2, 0.0), (x0 - 0.2, 0.0), (x0 - 0.2, -0.25)]
    pen.line(box, frame, 0.03)
  pen.line([(-s + 0.2, -0.15), (s - 0.2, -0.15)], frame, 0.03)


def _draw_head(a: Appearance, e: Expression, u: float):
  """The head at SUPERSAMPLE x final size: RGBA image, face mask (L) and the head centre in pixels."""
  w = int(np.ceil(2 * _HEAD_HALF_WIDTH_U * u))
  h = int(np.ceil((_HEAD_BOTTOM_U - _HEAD_TOP_U) * u))
  centre = (w / 2.0, -_HEAD_TOP_U * u)
  img, mask = Image.new("RGBA", (w, h), (0, 0, 0, 0)), Image.new("L", (w, h), 0)
  pen = _Pen(img, mask, u, centre, a.angle)
  skin = _mix(a.skin, e.tint, e.tint_strength)
  _draw_hair_back(pen, a)
  pen.polygon([(-0.27, 0.6), (0.27, 0.6), (0.3, 1.4), (-0.3, 1.4)], _shade(a.skin, 0.78))
  for side in (-1, 1):
    pen.ellipse(side * a.face_aspect, -0.03, 0.12, 0.21, _shade(skin, 0.88))
  pen.ellipse(0, 0, a.face_aspect, 1.0, skin, mask=255)
  _draw_eyes(pen, a, e, skin)
  _draw_brows(pen, a, e)
  _draw_nose(pen, a, e)
  _draw_mouth(pen, a, e)
  if a.glasses:
    _draw_glasses(pen, a)
  _draw_hair_front(pen, a)
  return img, mask, centre


def _shade_face(rgb: np.ndarray, face: np.ndarray, centre, u: float, a: Appearance, e: Expression):
  """Light on the face at final size: rounded-head falloff lit from the left, eye-socket, nose-side and
  lip shadows, and the expression's blush. rgb float [h, w, 3], face float [h, w, 1] in [0, 1]."""
  h, w = face.shape[:2]
  ys, xs = np.ogrid[0:h, 0:w]
  t = np.deg2rad(a.angle)
  dx, dy = (xs - centre[0]) / u, (ys - centre[1]) / u
  x, y = dx * np.cos(t) - dy * np.sin(t), dx * np.sin(t) + dy * np.cos(t)   # head units, roll undone
  light = 1.06 - 0.33 * np.clip((x / a.face_aspect) ** 2 + y ** 2, 0, 1.3) ** 1.5 - 0.07 * x
  shadows = ((-a.eye_spacing, -0.16, 0.26, 0.22, 0.2), (a.eye_spacing, -0.16, 0.26, 0.22, 0.2),
             (-0.14, 0.05, 0.07, 0.2, 0.16), (0.14, 0.05, 0.07, 0.2, 0.16), (0.0, 0.7, 0.28, 0.08, 0.12))
  for cx, cy, rx, ry, depth in shadows:
    light = light * (1 - depth * np.exp(-((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2))
  rgb = rgb * (1 - face + face * light[..., None].astype(np.float32))
  if e.blush:
    cheeks = sum(np.exp(-((x - side * 0.45) / 0.17) ** 2 - ((y - 0.22) / 0.12) ** 2) for side in (-1, 1))
    b = (e.blush * cheeks)[..., None].astype(np.float32) * face
    rgb = rgb * (1 - b) + b * np.array([225, 80, 95], np.float32)
  return rgb


def draw_person(a: Appearance, emotion: str, face_height: float, body_length: float = 1.9) -> Sprite:
  """Draws `a` showing `emotion` (a name in EMOTIONS) with a face `face_height` px tall.

  body_length: torso length below the shoulders in head units (half face heights).
  """
  if emotion not in EXPRESSIONS:
    raise ValueError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")
  e = EXPRESSIONS[emotion]
  u = face_height / 2.0
  head, head_mask, centre = _draw_head(a, e, u * SUPERSAMPLE)
  size = (max(1, round(head.width / SUPERSAMPLE)), max(1, round(head.height / SUPERSAMPLE)))
  head = np.asarray(head.resize(size, Image.BOX), np.float32)
  face = np.asarray(head_mask.resize(size, Image.BOX), np.float32)[..., None] / 255.0
  centre = (centre[0] / SUPERSAMPLE, centre[1] / SUPERSAMPLE)
  rgb = _shade_face(head[..., :3], face, centre, u, a, e)
  head = np.concatenate([np.clip(rgb, 0, 255), head[..., 3:]], -1).astype(np.uint8)

  # Shoulders at final size below the head; the head is pasted over the neck.
  bw, bh = int(np.ceil(3.0 * u)), int(np.ceil(body_length * u))
  width = max(bw, head.shape[1])
  height = head.shape[0] + bh - int(0.25 * u)
  body = Image.new("RGBA", (width * 2, height * 2), (0, 0, 0, 0))
  d = ImageDraw.Draw(body)
  top = 2 * (head.shape[0] - int(0.25 * u))
  d.rounded_rectangle((width - bw + 2, top, width + bw - 2, 2 * height + int(u)), radius=int(0.8 * u),
                      fill=a.clothes)
  d.polygon([(width - 0.3 * u, top), (width + 0.3 * u, top), (width, top + 0.6 * u)],
            fill=_shade(a.skin, 0.75))
  canvas = body.resize((width, height), Image.BOX)
  x0 = (width - head.shape[1]) // 2
  canvas.alpha_composite(Image.fromarray(head, "RGBA"), (x0, 0))
  face_full = np.zeros((height, width), bool)
  face_full[:head.shape[0], x0:x0 + head.shape[1]] = face[..., 0] >= 0.5
  return Sprite(np.asarray(canvas), face_full, _face_box(a, u, (centre[0] + x0, centre[1])))


def _face_box(a: Appearance, u: float, centre):
  """FACE_BOX_U scaled by the face aspect and rolled with the head, as an axis-aligned pixel box."""
  x0, y0, x1, y1 = FACE_BOX_U
  corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) * np.array([a.face_aspect / 0.78, 1.0])
  t = np.deg2rad(a.angle)
  rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
  pts = corners @ rot.T * u + np.asarray(centre)
  return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
