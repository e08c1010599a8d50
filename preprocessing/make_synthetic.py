"""Writes a synthetic VGAF-GEMS dataset (clips with sound, annotations, descriptions, per-frame individual
labels).

  python -m preprocessing.make_synthetic --out DIR --num_clips 150 --seed 0 \
      [--frames_per_clip 40 --width 640 --height 360 --fps 10 --crf 20 --workers N] \
      [--audio_agreement 1.0 --audio_led_fraction 0.0 | --no_audio]

The world and its label rules are documented in docs/synthetic_world.md; the output layout in
preprocessing/synthetic/dataset.py and gems_jax/data/spec.py.
"""
import argparse
import json
import time

from preprocessing.synthetic import dataset


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  default = dataset.VideoFormat()
  parser.add_argument("--out", required=True, help="output folder (created if missing)")
  parser.add_argument("--num_clips", type=int, required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--frames_per_clip", type=int, default=default.frames_per_clip)
  parser.add_argument("--width", type=int, default=default.width, help="even; faces are scaled with height")
  parser.add_argument("--height", type=int, default=default.height, help="even")
  parser.add_argument("--fps", type=int, default=default.fps)
  parser.add_argument("--crf", type=int, default=default.crf, help="H.264 quality (lower is better)")
  parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
  sound = dataset.AudioFormat()
  parser.add_argument("--audio_agreement", type=float, default=sound.agreement,
                      help="fraction of clips whose sound plants their group category (the others "
                           "plant another category's event)")
  parser.add_argument("--audio_led_fraction", type=float, default=sound.led_fraction,
                      help="fraction of audio-led clips: faces all neutral, the category only in the sound")
  parser.add_argument("--no_audio", "--noaudio", dest="audio", action="store_false",
                      help="a silent world (no audio track, no audio columns)")
  args = parser.parse_args(argv)
  for name in ("num_clips", "frames_per_clip", "width", "height", "fps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be positive, got {getattr(args, name)}")
  if args.width % 2 or args.height % 2:
    parser.error(f"--width and --height must be even for H.264, got {args.width}x{args.height}")
  sound = dataset.AudioFormat(args.audio_agreement, args.audio_led_fraction) if args.audio else None
  if sound is None and (args.audio_agreement != 1.0 or args.audio_led_fraction != 0.0):
    parser.error("--audio_agreement and --audio_led_fraction need sound (drop --no_audio)")
  if sound is not None:
    try:
      dataset.plan_audio(args.num_clips, args.seed, sound)
    except ValueError as e:   # a fraction outside [0, 1], or too few clips for both
      parser.error(str(e))
  video = dataset.VideoFormat(args.width, args.height, args.frames_per_clip, args.fps, args.crf)
  start = time.perf_counter()
  summary = dataset.generate(args.out, args.num_clips, args.seed, video, args.workers,
                             sound=sound)
  summary["seconds"] = round(time.perf_counter() - start, 1)
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  main()
