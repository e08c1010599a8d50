r"""Trains and evaluates GEMS. Kept short: the logic lives in `gems_jax.train`.

  python -m gems_jax.main --config configs/gems.py --workdir runs/gems
  python -m gems_jax.main --config configs/gems.py:runlocal --config.input.data_dir=DATA \
      --workdir /tmp/gems                       # a tiny configuration for a CPU
  python -m gems_jax.main --config configs/gems.py --workdir runs/gems --mode eval
  python -m gems_jax.main --config configs/face_emotion.py --workdir runs/faces   # stage 1

Any config field can be overridden with --config.<section>.<key>=<value>; an unknown key or a value
of the wrong type is an error that names it. The same command runs on every host of a pod slice
with --distributed (jax.distributed.initialize() then finds the coordinator itself on TPU/SLURM, or
takes --coordinator_address/--num_processes/--process_id).
"""
from absl import app, flags, logging
import jax
from ml_collections import config_flags

from gems_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/gems.py or configs/gems.py:runlocal.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, predictions and the report.")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: train (resuming from the workdir if it has checkpoints), select on the "
                  "eval split, test once. eval: evaluate a saved checkpoint and write predictions.")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint --mode=eval uses.")
flags.DEFINE_list("eval_splits", None, "Splits for --mode=eval (default: eval and test splits).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's id (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with a one-line error for a config override that names an unknown key."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    name = str(e).strip("\"'")
    bad = [a for a in argv[1:] if a.startswith("--config.") and name in a.split("=")[0]]
    raise SystemExit(f"FATAL Flags parsing error: unknown config key {name!r} in "
                     f"{bad[0] if bad else argv[1:]}; the config file lists every key") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info("process %d of %d; local devices %s; global device count %d", jax.process_index(),
               jax.process_count(), jax.local_devices(), jax.device_count())
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, which=FLAGS.checkpoint,
                              splits=FLAGS.eval_splits)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
