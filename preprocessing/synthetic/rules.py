"""The planted rules of the synthetic world: how labels follow from what is drawn.

Given, for one clip, the expression drawn on every person in every frame, which person-frames are visible
and the situation (scene), `label_clip` computes every label; `describe_clip` writes the scene description.
docs/synthetic_world.md states the same rules in prose; tests/test_synthetic_world.py recomputes them from the
written files.

1. Individual emotion of a visible person-frame = the expression drawn. Its valence/arousal =
   EMOTION_VALENCE_AROUSAL[emotion] + N(0, VA_NOISE_SD) per person-frame, clipped to [-1, 1], rounded to
   VALUE_DECIMALS.
2. Group emotion = the most frequent individual emotion over all visible person-frames of the clip; a tie
   goes to the class that comes first in EMOTIONS.
3. Group valence/arousal = mean of the (rounded) individual values over the visible person-frames, rounded
   to VALUE_DECIMALS. Group category = positive if valence > CATEGORY_THRESHOLD, negative if valence <
   -CATEGORY_THRESHOLD, else neutral.
4. Situation = the scene drawn. Situational emotions (multi-hot over SITUATIONAL_EMOTIONS) =
   SITUATION_EMOTIONS[situation] plus CATEGORY_EMOTION[group category].
5. The description names the situation (background and event, several phrasings each) and the number of
   people, and describes their mood by the group category; with probability MOOD_NOISE the mood sentence
   describes one of the other two categories instead (a video-LLM is not always right).
"""
import dataclasses

import numpy as np

from preprocessing.synthetic.faces import EMOTIONS
from preprocessing.synthetic.scenes import SITUATIONS

GROUP_CATEGORIES = ("positive", "neutral", "negative")
SITUATIONAL_EMOTIONS = ("celebration", "grief", "tension", "excitement", "boredom", "solidarity", "curiosity",
                        "pride", "calm", "anxiety")
VALENCE_RANGE = AROUSAL_RANGE = (-1.0, 1.0)

# (valence, arousal) per emotion: a circumplex-style placement with four positive, four negative and one
# neutral emotion, so that the group categories come out about balanced.
EMOTION_VALENCE_AROUSAL = {
    "fear": (-0.6, 0.7), "anger": (-0.7, 0.8), "joy": (0.8, 0.5), "sadness": (-0.7, -0.4),
    "disgust": (-0.5, 0.3), "surprise": (0.4, 0.8), "trust": (0.6, -0.2), "anticipation": (0.5, 0.5),
    "none": (0.0, -0.3),
}
VA_NOISE_SD = 0.05
VALUE_DECIMALS = 4
CATEGORY_THRESHOLD = 0.2
MOOD_NOISE = 0.2

# Situational emotions fixed by the situation (names in SITUATIONAL_EMOTIONS).
SITUATION_EMOTIONS = {
    "wedding": ("celebration",),
    "protest": ("solidarity", "tension"),
    "concert": ("excitement",),
    "funeral": ("grief", "solidarity"),
    "sports match": ("excitement", "tension"),
    "classroom": ("boredom", "curiosity"),
    "birthday party": ("celebration", "excitement"),
    "office meeting": ("boredom", "tension"),
    "street market": ("curiosity",),
    "hospital": ("grief", "tension"),
}
# The situational emotion added by the group category.
CATEGORY_EMOTION = {"positive": "pride", "neutral": "calm", "negative": "anxiety"}


@dataclasses.dataclass(frozen=True)
class ClipLabels:
  """Labels of one clip. P = people, T = frames; individual values are NaN where not visible."""
  individual_valence: np.ndarray    # float64 [P, T]
  individual_arousal: np.ndarray    # float64 [P, T]
  group_emotion: int
  group_category: int
  valence: float
  arousal: float
  situational_emotion: tuple        # sorted class indices
  situation: int


def category_of(valence: float) -> int:
  """Index in GROUP_CATEGORIES of a group valence (rule 3)."""
  if valence > CATEGORY_THRESHOLD:
    return GROUP_CATEGORIES.index("positive")
  if valence < -CATEGORY_THRESHOLD:
    return GROUP_CATEGORIES.index("negative")
  return GROUP_CATEGORIES.index("neutral")


def situational_emotions(situation: int, group_category: int) -> tuple:
  """Sorted indices in SITUATIONAL_EMOTIONS (rule 4)."""
  names = SITUATION_EMOTIONS[SITUATIONS[situation]] + (CATEGORY_EMOTION[GROUP_CATEGORIES[group_category]],)
  return tuple(sorted(SITUATIONAL_EMOTIONS.index(n) for n in names))


def label_clip(expressions: np.ndarray, visible: np.ndarray, situation: int,
               rng: np.random.Generator) -> ClipLabels:
  """Rules 1-4 for one clip.

  Args:
    expressions: int [P, T], index in EMOTIONS of the expression drawn on person p in frame t.
    visible: bool [P, T], the face of person p is visible in frame t (see world.VISIBLE_FRACTION).
    situation: index in SITUATIONS of the scene.
    rng: draws the per person-frame valence/arousal noise ([P, T, 2] normals, always all of them).
  """
  expressions, visible = np.asarray(expressions), np.asarray(visible, bool)
  if expressions.shape != visible.shape or expressions.ndim != 2:
    raise ValueError(f"expressions {expressions.shape} and visible {visible.shape} must both be [P, T]")
  if not visible.any():
    raise ValueError("a clip needs at least one visible person-frame to have a group label")
  table = np.array([EMOTION_VALENCE_AROUSAL[e] for e in EMOTIONS])        # [9, 2]
  values = table[expressions] + rng.normal(0.0, VA_NOISE_SD, expressions.shape + (2,))
  values = np.round(np.clip(values, -1.0, 1.0), VALUE_DECIMALS)
  values[~visible] = np.nan
  counts = np.bincount(expressions[visible], minlength=len(EMOTIONS))
  group_emotion = int(np.argmax(counts))                                  # first maximum = tie rule
  valence = round(float(np.mean(values[visible][:, 0])), VALUE_DECIMALS)
  arousal = round(float(np.mean(values[visible][:, 1])), VALUE_DECIMALS)
  group_category = category_of(valence)
  return ClipLabels(values[..., 0], values[..., 1], group_emotion, group_category, valence, arousal,
                    situational_emotions(situation, group_category), int(situation))


_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_GATHER = ("stand close together facing the camera", "are gathered in front of the camera",
           "move around together in a small group", "are seen together in the frame")
_MOOD = {
    "positive": ("most of them look cheerful", "their faces look happy and relaxed",
                 "the mood on their faces is upbeat", "they appear to be smiling"),
    "neutral": ("most of them look calm and composed", "their faces show little emotion",
                "the mood on their faces is neutral", "they appear quiet and attentive"),
    "negative": ("most of them look upset", "their faces look tense and unhappy",
                 "the mood on their faces is gloomy", "they appear distressed"),
}
# Phrasings of the "Background:" and "Event:" parts per situation.
BACKGROUND_PHRASES = {
    "wedding": ("a bright hall decorated with arches of white and pink flowers and rows of white chairs",
                "a festive room with floral arches and neatly lined chairs",
                "an elegant venue with flower garlands and chairs set for guests"),
    "protest": ("a city street lined with grey buildings, with raised placards and a red banner",
                "an urban square full of signs held up on poles in front of office blocks",
                "buildings along a road where people hold colourful placards"),
    "concert": ("a dark venue lit by coloured stage beams and spotlights above a crowd",
                "a stage with bright beams of light cutting through the darkness",
                "a dim hall with spotlights and the silhouettes of an audience"),
    "funeral": ("a cemetery under an overcast sky with grey headstones, trees and black umbrellas",
                "a quiet graveyard with stone markers and dark umbrellas",
                "grey gravestones on green grass beneath a cloudy sky"),
    "sports match": ("a stadium with packed colourful stands, floodlights and a green pitch",
                     "crowded stands above a striped grass field with white lines",
                     "a sports ground with spectators in the stands and bright floodlights"),
    "classroom": ("a classroom with a green chalkboard, windows and rows of wooden desks",
                  "a school room with chalk writing on the board and desks in rows",
                  "a room with a chalkboard on the wall and student desks"),
    "birthday party": ("a pink room with balloons, colourful bunting and confetti",
                       "a party room decorated with balloons and paper flags",
                       "a festive space with bunches of balloons and scattered confetti"),
    "office meeting": ("an office with a large window over the city, a whiteboard and a long table",
                       "a meeting room with glass walls, city towers outside and a whiteboard",
                       "a corporate room with a conference table and a view of high-rise buildings"),
    "street market": ("an outdoor market with striped awnings over stalls of colourful fruit",
                      "market stalls under bright awnings, piled with produce",
                      "a busy street lined with vendors' stands and crates of fruit"),
    "hospital": ("a pale hospital ward with a curtain, a bed, an IV stand and a red cross sign",
                 "a clinic room with a patient bed, a drip stand and blue curtains",
                 "a hospital corridor with medical equipment and a red cross on the wall"),
}
EVENT_PHRASES = {
    "wedding": ("a wedding ceremony where guests have gathered", "a couple's wedding celebration",
                "guests attending a marriage ceremony"),
    "protest": ("a street protest or demonstration", "a public rally where people march for a cause",
                "demonstrators protesting in the street"),
    "concert": ("a live music concert", "an audience at a live show with a band on stage",
                "fans watching a music performance"),
    "funeral": ("a funeral where mourners pay their respects", "a burial service at a cemetery",
                "people attending a memorial service"),
    "sports match": ("spectators at a sports match", "fans watching a game in a stadium",
                     "a crowd following a football match"),
    "classroom": ("a lesson in a classroom", "students and a teacher during a class",
                  "a school lesson in progress"),
    "birthday party": ("a birthday party", "friends celebrating someone's birthday",
                       "a birthday celebration with decorations"),
    "office meeting": ("a business meeting in an office", "colleagues holding a work meeting",
                       "a team discussion at the office"),
    "street market": ("people shopping at a street market", "a visit to an outdoor market",
                      "customers browsing market stalls"),
    "hospital": ("a visit to a hospital", "people waiting in a hospital ward",
                 "relatives visiting a patient in hospital"),
}


def _sentence_case(text: str) -> str:
  return text[:1].upper() + text[1:]


def describe_clip(num_people: int, situation: int, group_category: int, rng: np.random.Generator) -> str:
  """Rule 5: '<scene sentence> Background: <...>. Event: <...>.' as a video-LLM might describe the clip."""
  mood = GROUP_CATEGORIES[group_category]
  if rng.random() < MOOD_NOISE:
    others = [c for c in GROUP_CATEGORIES if c != mood]
    mood = others[rng.integers(len(others))]
  name = SITUATIONS[situation]
  count = _NUMBERS[num_people] if num_people < len(_NUMBERS) else str(num_people)
  noun = "person" if num_people == 1 else "people"
  scene = (f"{_sentence_case(count)} {noun} {_GATHER[rng.integers(len(_GATHER))]}; "
           f"{_MOOD[mood][rng.integers(len(_MOOD[mood]))]}.")
  background = BACKGROUND_PHRASES[name][rng.integers(len(BACKGROUND_PHRASES[name]))]
  event = EVENT_PHRASES[name][rng.integers(len(EVENT_PHRASES[name]))]
  return f"{scene} Background: {_sentence_case(background)}. Event: {_sentence_case(event)}."
