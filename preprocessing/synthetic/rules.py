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
3. Group valence = mean of the (rounded) individual valences over the visible person-frames, rounded to
   VALUE_DECIMALS. Group category = positive if valence > CATEGORY_THRESHOLD, negative if valence <
   -CATEGORY_THRESHOLD, else neutral.
4. Group arousal = where the crowd's mood ends up: the mean individual arousal over the visible
   person-frames of the clip's last `ending_frames(T)` frames (the last third). This is the temporal rule:
   in a clip whose crowd turns (world.py: the TRAJECTORIES 'rising' and 'falling', the same expressions in
   the opposite order) it is readable only from the order of the frames, not from any statistic pooled
   over them.
5. Situation = the scene drawn. Situational emotions (multi-hot over SITUATIONAL_EMOTIONS) =
   SITUATION_EMOTIONS[situation] plus CATEGORY_EMOTION[group category].
6. The description paraphrases a situation (background and event, several phrasings each, never the
   situation's name) and states the number of people and their mood by the group category; with
   probability MOOD_NOISE the mood sentence describes one of the other two categories instead. The
   situation it describes is the drawn one, except in a planned MISLEAD_FRACTION of clips
   (dataset.plan_dataset), where it describes another (a video-LLM is not always right). The mood
   sentence describes what the faces show (`ClipLabels.face_category`), which is the group category
   except in audio-led clips.
7. Audio-led clips (world.py): every face shows 'none' for the whole clip and the sound plants the
   group category (audio.py). Rule 1 holds as above (individual labels of neutral faces); the group
   category is the sound's, and the group emotion, valence and arousal are those of the crowd's voice,
   SOUND_EMOTION[category]'s entry in EMOTION_VALENCE_AROUSAL (no noise); rule 5 follows the category.
"""
import dataclasses

import numpy as np

from preprocessing.synthetic.faces import EMOTIONS
from preprocessing.synthetic.scenes import SITUATIONS

GROUP_CATEGORIES = ("positive", "neutral", "negative")
SITUATIONAL_EMOTIONS = ("celebration", "grief", "tension", "excitement", "boredom", "solidarity", "curiosity",
                        "pride", "calm", "anxiety")
VALENCE_RANGE = AROUSAL_RANGE = (-1.0, 1.0)
# How a clip's crowd moves over time (world.py): 'steady', or it turns between its dominant expression
# and an arc expression of contrasting arousal, so that its arousal rises or falls.
TRAJECTORIES = ("steady", "rising", "falling")

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
ENDING_FRACTION = 1 / 3     # rule 4: the part of the clip whose arousal is the group's
ARC_VALENCE_GAP = 0.5       # a crowd's arc expression has about its dominant expression's valence
MOOD_NOISE = 0.2
MISLEAD_FRACTION = 0.15     # rule 6: clips whose description describes another situation

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
# Rule 7: the emotion a crowd's voice shows in an audio-led clip (laughter, no event, booing).
SOUND_EMOTION = {"positive": "joy", "neutral": "none", "negative": "anger"}


@dataclasses.dataclass(frozen=True)
class ClipLabels:
  """Labels of one clip. P = people, T = frames; individual values are NaN where not visible."""
  individual_valence: np.ndarray    # float64 [P, T]
  individual_arousal: np.ndarray    # float64 [P, T]
  group_emotion: int
  group_category: int
  valence: float
  arousal: float                    # rule 4: over the last ending_frames(T) frames
  situational_emotion: tuple        # sorted class indices
  situation: int
  whole_clip_arousal: float         # not a label: the mean over all frames, what pooling can read
  face_category: int                # not a label: rule 3's category of the faces alone (rule 6's mood)


def category_of(valence: float) -> int:
  """Index in GROUP_CATEGORIES of a group valence (rule 3)."""
  if valence > CATEGORY_THRESHOLD:
    return GROUP_CATEGORIES.index("positive")
  if valence < -CATEGORY_THRESHOLD:
    return GROUP_CATEGORIES.index("negative")
  return GROUP_CATEGORIES.index("neutral")


def ending_frames(num_frames: int) -> int:
  """How many last frames set the group arousal (rule 4), and how long a crowd's arc lasts (world.py)."""
  return max(1, round(num_frames * ENDING_FRACTION))


def arc_emotions(dominant: int) -> tuple:
  """Indices in EMOTIONS a crowd showing `dominant` can turn to or from: those on the other side of
  arousal 0 with a valence within ARC_VALENCE_GAP, so that the turn moves the arousal by 0.6 or more
  and the valence little (joy <-> trust, anger <-> sadness, none <-> surprise, ...)."""
  valence, arousal = EMOTION_VALENCE_AROUSAL[EMOTIONS[dominant]]
  return tuple(i for i, e in enumerate(EMOTIONS) if (EMOTION_VALENCE_AROUSAL[e][1] > 0) != (arousal > 0)
               and abs(EMOTION_VALENCE_AROUSAL[e][0] - valence) <= ARC_VALENCE_GAP + 1e-9)


def situational_emotions(situation: int, group_category: int) -> tuple:
  """Sorted indices in SITUATIONAL_EMOTIONS (rule 5)."""
  names = SITUATION_EMOTIONS[SITUATIONS[situation]] + (CATEGORY_EMOTION[GROUP_CATEGORIES[group_category]],)
  return tuple(sorted(SITUATIONAL_EMOTIONS.index(n) for n in names))


def label_clip(expressions: np.ndarray, visible: np.ndarray, situation: int,
               rng: np.random.Generator, sound_category: int | None = None) -> ClipLabels:
  """Rules 1-5 for one clip, and rule 7 for an audio-led one.

  Args:
    expressions: int [P, T], index in EMOTIONS of the expression drawn on person p in frame t.
    visible: bool [P, T], the face of person p is visible in frame t (see world.VISIBLE_FRACTION).
    situation: index in SITUATIONS of the scene.
    rng: draws the per person-frame valence/arousal noise ([P, T, 2] normals, always all of them).
    sound_category: index in GROUP_CATEGORIES of an audio-led clip's sound, None for other clips. An
      audio-led clip's faces must all show 'none'.
  """
  expressions, visible = np.asarray(expressions), np.asarray(visible, bool)
  if expressions.shape != visible.shape or expressions.ndim != 2:
    raise ValueError(f"expressions {expressions.shape} and visible {visible.shape} must both be [P, T]")
  if sound_category is not None and np.any(expressions != EMOTIONS.index("none")):
    raise ValueError("an audio-led clip's faces must all show 'none' (rule 7)")
  if not visible.any():
    raise ValueError("a clip needs at least one visible person-frame to have a group label")
  ending = visible.copy()
  ending[:, :-ending_frames(visible.shape[1])] = False
  if not ending.any():   # nobody visible at the end (not seen in 300 clips of seed 0): the whole clip
    ending = visible
  table = np.array([EMOTION_VALENCE_AROUSAL[e] for e in EMOTIONS])        # [9, 2]
  values = table[expressions] + rng.normal(0.0, VA_NOISE_SD, expressions.shape + (2,))
  values = np.round(np.clip(values, -1.0, 1.0), VALUE_DECIMALS)
  values[~visible] = np.nan
  counts = np.bincount(expressions[visible], minlength=len(EMOTIONS))
  group_emotion = int(np.argmax(counts))                                  # first maximum = tie rule
  mean = lambda x: round(float(np.mean(x)), VALUE_DECIMALS)
  valence = mean(values[visible][:, 0])
  face_category = group_category = category_of(valence)
  arousal = mean(values[ending][:, 1])
  if sound_category is not None:   # rule 7
    group_category = int(sound_category)
    group_emotion = EMOTIONS.index(SOUND_EMOTION[GROUP_CATEGORIES[group_category]])
    valence, arousal = EMOTION_VALENCE_AROUSAL[EMOTIONS[group_emotion]]
  return ClipLabels(values[..., 0], values[..., 1], group_emotion, group_category, valence, arousal,
                    situational_emotions(situation, group_category), int(situation),
                    mean(values[visible][:, 1]), face_category)


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
# Paraphrases of the "Background:" and "Event:" parts per situation. None contains a word of a situation's
# name (NAME_WORDS; tests/test_synthetic_world.py checks), so a model has to read what they describe.
BACKGROUND_PHRASES = {
    "wedding": ("a bright hall decorated with arches of white and pink flowers and rows of white chairs",
                "a festive room with floral arches and neatly lined chairs",
                "an elegant venue with flower garlands and chairs set out for guests",
                "a flower-covered arch at the end of an aisle between white chairs"),
    "protest": ("a city street lined with grey buildings, with raised placards and a red banner",
                "an urban square full of signs held up on poles in front of tall grey blocks",
                "buildings along a road where people hold colourful placards",
                "a crowded avenue under a long red banner"),
    "concert": ("a dark venue lit by coloured stage beams and spotlights above a crowd",
                "a stage with bright beams of light cutting through the darkness",
                "a dim hall with spotlights and the silhouettes of an audience",
                "a smoky space where coloured lights sweep over raised hands"),
    "funeral": ("a cemetery under an overcast sky with grey headstones, trees and black umbrellas",
                "a quiet graveyard with stone markers and dark umbrellas",
                "grey gravestones on green grass beneath a cloudy sky",
                "rows of headstones under bare trees on a grey day"),
    "sports match": ("a stadium with packed colourful stands, floodlights and a green pitch",
                     "crowded stands above a striped grass field with white lines",
                     "a ground with spectators in the stands and bright floodlights",
                     "tiers of seats full of supporters around a pitch"),
    "classroom": ("a room with a green chalkboard, windows and rows of wooden desks",
                  "a school room with chalk writing on the board and desks in rows",
                  "a room with a chalkboard on the wall and small desks",
                  "a bright room full of desks facing a blackboard"),
    "birthday party": ("a pink room with balloons, colourful bunting and confetti",
                       "a room decorated with balloons and paper flags",
                       "a festive space with bunches of balloons and scattered confetti",
                       "a table with a cake under strings of paper flags"),
    "office meeting": ("a room with a large window over the city, a whiteboard and a long table",
                       "a glass-walled room with city towers outside and a whiteboard",
                       "a corporate room with a conference table and a view of high-rise buildings",
                       "a long table with laptops in a room high above the city"),
    "street market": ("an outdoor row of stalls with striped awnings over colourful fruit",
                      "stalls under bright awnings, piled with produce",
                      "a busy street lined with vendors' stands and crates of fruit",
                      "wooden stands heaped with vegetables under canvas shades"),
    "hospital": ("a pale ward with a curtain, a bed, an IV stand and a red cross sign",
                 "a clinic room with a patient bed, a drip stand and blue curtains",
                 "a corridor with medical equipment and a red cross on the wall",
                 "a white room with a bed, monitors and a drip stand"),
}
EVENT_PHRASES = {
    "wedding": ("guests watching a couple exchange vows", "a bride and groom celebrating with their families",
                "two people in formal clothes being toasted by their guests",
                "rings being exchanged in front of relatives"),
    "protest": ("demonstrators chanting slogans and waving signs", "people marching for a cause",
                "a rally where a crowd raises placards and shouts",
                "citizens gathered to voice their anger at a decision"),
    "concert": ("fans watching a band play live", "an audience listening to a singer on stage",
                "people dancing while musicians perform", "a live music performance late at night"),
    "funeral": ("mourners paying their last respects", "a burial service for a loved one",
                "people in dark clothes saying goodbye to someone who died", "relatives gathered at a grave"),
    "sports match": ("spectators following a game", "fans cheering for their team",
                     "supporters watching the players on the field", "a crowd reacting to a goal"),
    "classroom": ("a lesson in progress", "students listening to their teacher",
                  "pupils working on an exercise", "a teacher explaining something at the board"),
    "birthday party": ("friends celebrating someone turning a year older",
                       "guests singing as candles are blown out on a cake",
                       "a celebration with presents and a cake",
                       "people in paper hats cheering for the one whose day it is"),
    "office meeting": ("colleagues discussing a project", "a team reviewing figures on a whiteboard",
                       "coworkers listening to a presentation", "a business discussion around a table"),
    "street market": ("people shopping for fresh produce", "customers browsing the stalls",
                      "vendors calling out to passers-by", "shoppers haggling over fruit and vegetables"),
    "hospital": ("relatives visiting a patient", "people waiting for news from a doctor",
                 "family members at a sick person's bedside",
                 "visitors in a ward where someone is being treated"),
}
NAME_WORDS = frozenset(word for name in SITUATIONS for word in name.split()) - {"street"}


def _sentence_case(text: str) -> str:
  return text[:1].upper() + text[1:]


def describe_clip(num_people: int, described_situation: int, group_category: int,
                  rng: np.random.Generator) -> str:
  """Rule 6: '<scene sentence> Background: <...>. Event: <...>.' as a video-LLM might describe the clip.

  `described_situation` is the situation the describer believes it sees (the drawn one, or another in a
  misleading clip); the mood sentence describes `group_category` with probability 1 - MOOD_NOISE."""
  mood = GROUP_CATEGORIES[group_category]
  if rng.random() < MOOD_NOISE:
    others = [c for c in GROUP_CATEGORIES if c != mood]
    mood = others[rng.integers(len(others))]
  name = SITUATIONS[described_situation]
  count = _NUMBERS[num_people] if num_people < len(_NUMBERS) else str(num_people)
  noun = "person" if num_people == 1 else "people"
  scene = (f"{_sentence_case(count)} {noun} {_GATHER[rng.integers(len(_GATHER))]}; "
           f"{_MOOD[mood][rng.integers(len(_MOOD[mood]))]}.")
  background = BACKGROUND_PHRASES[name][rng.integers(len(BACKGROUND_PHRASES[name]))]
  event = EVENT_PHRASES[name][rng.integers(len(EVENT_PHRASES[name]))]
  return f"{scene} Background: {_sentence_case(background)}. Event: {_sentence_case(event)}."
