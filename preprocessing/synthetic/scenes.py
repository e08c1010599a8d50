"""Procedural backgrounds and occluding props, one visual style per situation.

Each of the 10 situations has its own palette, layout and props (an arch of flowers for a wedding, placards
for a protest, stage beams for a concert, ...). Per clip, `draw_background` varies the colours (brightness
and a small colour shift), prop counts and positions, and adds sensor noise, so no two clips share pixels;
a source video keeps its `venue_seed`, so its clips share a venue as real VGAF clips cut from one video do.
The background is wider than the frame so the camera can pan across it.
"""
import numpy as np
from PIL import Image, ImageDraw

SITUATIONS = ("wedding", "protest", "concert", "funeral", "sports match", "classroom", "birthday party",
              "office meeting", "street market", "hospital")
BRIGHT = ((230, 60, 70), (250, 200, 40), (60, 160, 230), (90, 200, 90), (240, 130, 200), (250, 140, 40),
          (150, 90, 220), (250, 250, 250))


def _jitter(colour, rng, amount=18):
  return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def _vertical_gradient(d: ImageDraw.ImageDraw, box, top, bottom):
  x0, y0, x1, y1 = (int(v) for v in box)
  for y in range(y0, y1):
    t = (y - y0) / max(1, y1 - y0 - 1)
    d.line([(x0, y), (x1, y)], fill=tuple(int((1 - t) * a + t * b) for a, b in zip(top, bottom)))


def _wedding(d, w, h, rng):
  _vertical_gradient(d, (0, 0, w, h), _jitter((245, 238, 225), rng), _jitter((215, 200, 185), rng))
  d.rectangle((0, int(0.72 * h), w, h), fill=_jitter((200, 180, 160), rng))
  for k in range(rng.integers(2, 4)):
    cx = (k + 0.5 + rng.uniform(-0.2, 0.2)) * w / 3
    r = rng.uniform(0.3, 0.4) * h
    d.arc((cx - r, 0.15 * h, cx + r, 0.15 * h + 2 * r), 180, 360, fill=_jitter((150, 170, 120), rng), width=8)
    for t in np.linspace(np.pi, 2 * np.pi, 14):
      x, y = cx + r * np.cos(t), 0.15 * h + r + r * np.sin(t)
      c = (255, 255, 255) if rng.random() < 0.5 else _jitter((245, 170, 190), rng)
      d.ellipse((x - 9, y - 9, x + 9, y + 9), fill=c)
  for x in np.arange(rng.uniform(0, 40), w, 55):
    d.rectangle((x, 0.74 * h, x + 30, 0.9 * h), fill=(250, 250, 250), outline=(200, 190, 180))


def _protest(d, w, h, rng):
  _vertical_gradient(d, (0, 0, w, 0.5 * h), _jitter((150, 190, 230), rng), _jitter((200, 215, 230), rng))
  x = 0
  while x < w:
    bw, bh = rng.uniform(60, 140), rng.uniform(0.3, 0.6) * h
    grey = int(rng.uniform(90, 170))
    d.rectangle((x, 0.55 * h - bh, x + bw, h), fill=(grey, grey, grey + 8))
    for wy in np.arange(0.55 * h - bh + 10, 0.55 * h, 22):
      for wx in np.arange(x + 8, x + bw - 12, 20):
        d.rectangle((wx, wy, wx + 9, wy + 12), fill=(60, 70, 90))
    x += bw
  d.rectangle((0, 0.55 * h, w, h), fill=_jitter((110, 110, 110), rng))
  for _ in range(rng.integers(5, 9)):
    px, py = rng.uniform(0, w), rng.uniform(0.1, 0.35) * h
    d.line((px, py, px, py + 0.35 * h), fill=(120, 90, 60), width=4)
    c = BRIGHT[rng.integers(len(BRIGHT))]
    d.rectangle((px - 35, py - 25, px + 35, py + 20), fill=c, outline=(30, 30, 30), width=2)
    for ly in (py - 14, py - 2, py + 9):
      d.line((px - 25, ly, px + rng.uniform(0, 25), ly), fill=(20, 20, 20), width=4)
  d.rectangle((0, 0.06 * h, w, 0.14 * h), fill=_jitter((200, 30, 40), rng))


def _concert(d, w, h, rng):
  _vertical_gradient(d, (0, 0, w, h), _jitter((20, 10, 40), rng, 8), _jitter((5, 5, 15), rng, 5))
  d.rectangle((0, 0.03 * h, w, 0.07 * h), fill=(70, 70, 80))
  for _ in range(rng.integers(4, 8)):
    x = rng.uniform(0, w)
    spread = rng.uniform(40, 120)
    c = BRIGHT[rng.integers(len(BRIGHT))]
    d.polygon([(x, 0.05 * h), (x - spread, h), (x + spread, h)], fill=tuple(int(v * 0.55) for v in c))
    d.ellipse((x - 10, 0.03 * h, x + 10, 0.09 * h), fill=(255, 255, 230))
  for x in np.arange(0, w, 14):
    y = 0.8 * h + rng.uniform(-10, 10)
    d.ellipse((x, y, x + 14, y + 16), fill=(15, 15, 20))


def _funeral(d, w, h, rng):
  _vertical_gradient(d, (0, 0, w, 0.5 * h), _jitter((120, 125, 135), rng, 10),
                     _jitter((160, 160, 165), rng, 10))
  d.rectangle((0, 0.5 * h, w, h), fill=_jitter((70, 95, 60), rng, 10))
  for _ in range(rng.integers(2, 5)):
    x = rng.uniform(0, w)
    d.rectangle((x - 5, 0.2 * h, x + 5, 0.55 * h), fill=(60, 45, 35))
    d.ellipse((x - 50, 0.02 * h, x + 50, 0.32 * h), fill=_jitter((45, 65, 45), rng, 8))
  for _ in range(rng.integers(6, 12)):
    x, y = rng.uniform(0, w), rng.uniform(0.52, 0.7) * h
    g = int(rng.uniform(110, 150))
    d.rounded_rectangle((x - 18, y - 35, x + 18, y + 10), radius=14, fill=(g, g, g + 5), outline=(80, 80, 85))
  for _ in range(rng.integers(3, 6)):
    x, y = rng.uniform(0, w), rng.uniform(0.55, 0.75) * h
    d.pieslice((x - 50, y - 40, x + 50, y + 20), 180, 360, fill=(15, 15, 20))


def _sports(d, w, h, rng):
  d.rectangle((0, 0, w, 0.55 * h), fill=_jitter((60, 60, 70), rng, 10))
  for y in np.arange(0.05 * h, 0.5 * h, 8):
    for x in np.arange(rng.uniform(0, 6), w, 7):
      d.rectangle((x, y, x + 3, y + 3), fill=BRIGHT[rng.integers(len(BRIGHT))])
  d.rectangle((0, 0.5 * h, w, 0.56 * h), fill=_jitter((30, 60, 160), rng, 10))
  d.rectangle((0, 0.56 * h, w, h), fill=_jitter((50, 150, 60), rng, 10))
  for x in np.arange(0, w, 60):
    d.rectangle((x, 0.56 * h, x + 30, h), fill=_jitter((60, 165, 70), rng, 4))
  d.line((0, 0.75 * h, w, 0.7 * h), fill=(240, 240, 240), width=4)
  for x in (0.15 * w, 0.85 * w):
    d.line((x, 0, x, 0.1 * h), fill=(150, 150, 150), width=4)
    d.rectangle((x - 25, 0, x + 25, 0.05 * h), fill=(255, 255, 220))


def _classroom(d, w, h, rng):
  d.rectangle((0, 0, w, h), fill=_jitter((225, 210, 170), rng))
  bx = rng.uniform(0.05, 0.3) * w
  d.rectangle((bx, 0.08 * h, bx + 0.45 * w, 0.45 * h), fill=(110, 80, 50))
  d.rectangle((bx + 8, 0.08 * h + 8, bx + 0.45 * w - 8, 0.45 * h - 8), fill=_jitter((40, 80, 60), rng, 8))
  for _ in range(rng.integers(4, 8)):
    x, y = bx + rng.uniform(20, 0.4 * w), rng.uniform(0.12, 0.4) * h
    d.line((x, y, x + rng.uniform(20, 80), y + rng.uniform(-5, 5)), fill=(230, 230, 230), width=2)
  wx = bx + 0.5 * w
  for k in range(2):
    d.rectangle((wx + k * 70, 0.1 * h, wx + k * 70 + 55, 0.4 * h), fill=(170, 210, 240),
                outline=(250, 250, 250), width=5)
  d.rectangle((0, 0.65 * h, w, h), fill=_jitter((160, 120, 80), rng))
  for x in np.arange(rng.uniform(-30, 0), w, 110):
    d.rectangle((x, 0.72 * h, x + 90, 0.78 * h), fill=(190, 150, 100), outline=(120, 90, 60))


def _birthday(d, w, h, rng):
  d.rectangle((0, 0, w, h), fill=_jitter((250, 215, 225), rng))
  for x in np.arange(0, w, 30):
    d.rectangle((x, 0, x + 15, h), fill=_jitter((245, 200, 215), rng, 5))
  pts = np.linspace(0, w, 16)
  for k in range(len(pts) - 1):
    d.polygon([(pts[k], 0.08 * h), (pts[k + 1], 0.08 * h), ((pts[k] + pts[k + 1]) / 2, 0.16 * h)],
              fill=BRIGHT[k % len(BRIGHT)])
  for _ in range(rng.integers(5, 10)):
    x, y = rng.uniform(0, w), rng.uniform(0.15, 0.45) * h
    d.line((x, y + 28, x + rng.uniform(-10, 10), y + 90), fill=(90, 90, 90), width=1)
    d.ellipse((x - 18, y - 24, x + 18, y + 28), fill=BRIGHT[rng.integers(len(BRIGHT))])
  for _ in range(80):
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    d.rectangle((x, y, x + 4, y + 4), fill=BRIGHT[rng.integers(len(BRIGHT))])
  d.rectangle((0, 0.8 * h, w, h), fill=_jitter((200, 150, 110), rng))


def _office(d, w, h, rng):
  d.rectangle((0, 0, w, h), fill=_jitter((200, 205, 210), rng, 8))
  wx = rng.uniform(0, 0.3) * w
  d.rectangle((wx, 0.05 * h, wx + 0.55 * w, 0.5 * h), fill=_jitter((140, 180, 215), rng, 8))
  for _ in range(rng.integers(6, 12)):
    bx, bh = wx + rng.uniform(0, 0.5 * w), rng.uniform(0.1, 0.35) * h
    d.rectangle((bx, 0.5 * h - bh, bx + rng.uniform(20, 50), 0.5 * h), fill=_jitter((110, 120, 135), rng, 12))
  for k in range(5):
    x = wx + k * 0.55 * w / 4
    d.line((x, 0.05 * h, x, 0.5 * h), fill=(90, 95, 100), width=4)
  d.rectangle((wx + 0.6 * w, 0.1 * h, wx + 0.85 * w, 0.38 * h), fill=(250, 250, 250),
              outline=(120, 120, 120), width=3)
  d.rectangle((0, 0.78 * h, w, h), fill=_jitter((95, 70, 50), rng, 8))
  d.rectangle((0, 0.76 * h, w, 0.8 * h), fill=_jitter((70, 50, 35), rng, 8))


def _market(d, w, h, rng):
  _vertical_gradient(d, (0, 0, w, 0.4 * h), _jitter((130, 190, 245), rng), _jitter((220, 230, 240), rng))
  d.rectangle((0, 0.4 * h, w, h), fill=_jitter((170, 150, 120), rng))
  x = rng.uniform(-60, 0)
  while x < w:
    sw = rng.uniform(90, 150)
    c1, c2 = BRIGHT[rng.integers(len(BRIGHT))], (250, 250, 245)
    for k, sx in enumerate(np.arange(x, x + sw, 15)):
      d.polygon([(sx, 0.12 * h), (sx + 15, 0.12 * h), (sx + 18, 0.25 * h), (sx + 3, 0.25 * h)],
                fill=c1 if k % 2 else c2)
    d.rectangle((x + 4, 0.25 * h, x + sw - 4, 0.62 * h), fill=_jitter((140, 100, 60), rng, 10))
    for _ in range(18):
      fx, fy = x + rng.uniform(8, sw - 12), rng.uniform(0.48, 0.6) * h
      d.ellipse((fx, fy, fx + 10, fy + 10), fill=BRIGHT[rng.integers(6)])
    x += sw + rng.uniform(5, 20)


def _hospital(d, w, h, rng):
  d.rectangle((0, 0, w, h), fill=_jitter((210, 235, 225), rng, 8))
  d.rectangle((0, 0.7 * h, w, h), fill=_jitter((225, 228, 230), rng, 5))
  for x in np.arange(0, w, 40):
    d.line((x, 0.7 * h, x, h), fill=(195, 200, 205), width=1)
  d.line((0, 0.06 * h, w, 0.06 * h), fill=(160, 160, 165), width=4)
  cx = rng.uniform(0, 0.5) * w
  for k in range(8):
    d.rectangle((cx + k * 22, 0.06 * h, cx + k * 22 + 20, 0.75 * h), fill=_jitter((150, 200, 215), rng, 6))
  bx = cx + 0.35 * w
  d.rectangle((bx, 0.5 * h, bx + 0.3 * w, 0.68 * h), fill=(245, 245, 250), outline=(160, 160, 170), width=3)
  d.line((bx + 0.34 * w, 0.1 * h, bx + 0.34 * w, 0.75 * h), fill=(170, 170, 180), width=3)
  d.rounded_rectangle((bx + 0.34 * w - 12, 0.1 * h, bx + 0.34 * w + 12, 0.2 * h), radius=6,
                      fill=(220, 235, 250))
  sx, sy = rng.uniform(0.05, 0.9) * w, 0.12 * h
  d.rectangle((sx - 6, sy - 18, sx + 6, sy + 18), fill=(220, 40, 40))
  d.rectangle((sx - 18, sy - 6, sx + 18, sy + 6), fill=(220, 40, 40))


_PAINTERS = (_wedding, _protest, _concert, _funeral, _sports, _classroom, _birthday, _office, _market,
             _hospital)


def draw_background(situation: int, width: int, height: int, venue_seed: int,
                    rng: np.random.Generator) -> np.ndarray:
  """uint8 [height, width, 3]: the venue of `venue_seed` in the style of `situation`, varied by `rng`.

  The layout (prop positions) comes from `venue_seed`; the lighting (brightness, colour shift) and the
  sensor noise come from `rng`, so clips of one source video show one venue in slightly different light.
  """
  if not 0 <= situation < len(SITUATIONS):
    raise ValueError(f"situation {situation} outside [0, {len(SITUATIONS)})")
  img = Image.new("RGB", (width, height))
  _PAINTERS[situation](ImageDraw.Draw(img), width, height, np.random.default_rng(venue_seed))
  arr = np.asarray(img, np.float32)
  arr = arr * rng.uniform(0.85, 1.1) + rng.normal(0, 10, 3)
  arr += rng.normal(0, 4, (height, width, 1)).astype(np.float32)
  return np.clip(arr, 0, 255).astype(np.uint8)


# What passes in front of people in each situation.
_PROP_KIND = ("bouquet", "placard", "balloon", "umbrella", "placard", "board", "balloon", "board", "bouquet",
              "board")


def draw_prop(situation: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 [size, size, 4] RGBA: an object that passes in front of people (a placard at a protest,
  a balloon at a birthday party, a flag at a sports match...), about `size` pixels across."""
  img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
  d = ImageDraw.Draw(img)
  c = BRIGHT[rng.integers(len(BRIGHT))] + (255,)
  s = size
  kind = _PROP_KIND[situation]
  if kind == "balloon":
    d.ellipse((0.15 * s, 0.0, 0.85 * s, 0.8 * s), fill=c)
    d.line((0.5 * s, 0.8 * s, 0.5 * s, s), fill=(80, 80, 80, 255), width=2)
  elif kind == "placard":
    d.rectangle((0.45 * s, 0.5 * s, 0.55 * s, s), fill=(120, 90, 60, 255))
    d.rectangle((0.0, 0.05 * s, s, 0.6 * s), fill=c, outline=(30, 30, 30, 255), width=3)
  elif kind == "umbrella":
    d.pieslice((0.0, 0.1 * s, s, 0.9 * s), 180, 360, fill=(20, 20, 25, 255))
    d.line((0.5 * s, 0.5 * s, 0.5 * s, s), fill=(60, 60, 60, 255), width=3)
  elif kind == "bouquet":
    for _ in range(9):
      x, y = rng.uniform(0.1, 0.7) * s, rng.uniform(0.05, 0.5) * s
      d.ellipse((x, y, x + 0.3 * s, y + 0.3 * s), fill=BRIGHT[rng.integers(len(BRIGHT))] + (255,))
    d.polygon([(0.2 * s, 0.5 * s), (0.8 * s, 0.5 * s), (0.6 * s, s), (0.4 * s, s)], fill=(150, 110, 60, 255))
  else:  # a board or folder held up
    d.rounded_rectangle((0.1 * s, 0.0, 0.9 * s, s), radius=int(0.06 * s), fill=(235, 235, 225, 255),
                        outline=(90, 90, 90, 255), width=3)
    for y in np.linspace(0.15, 0.85, 6):
      d.line((0.2 * s, y * s, 0.8 * s, y * s), fill=(100, 100, 120, 255), width=2)
  return np.asarray(img)
