#!/usr/bin/env bash
# gems_jax: one entry point for set-up, the demo, the tests and the benchmarks.
#
#   ./run.sh                 the demo (same as ./run.sh demo)
#   ./run.sh setup           create .venv and install the pinned stack (idempotent, quick when done)
#   ./run.sh test [ARGS]     the whole pytest suite (sets up first if needed); ARGS go to pytest
#   ./run.sh demo [ARGS]     synthetic data -> preprocessing -> training -> evaluation -> report
#   ./run.sh bench NAME      benchmarks (python -m benchmarks.NAME): swin | vit | attention | train |
#                            av_train | preprocess | paper | fer | ablation | beam  (extra ARGS go to the program)
#   ./run.sh python ARGS     run the venv's python (e.g. ./run.sh python -m gems_jax.main --help)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${GEMS_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
STAMP=$VENV/.gems_setup_stamp

log() { printf '[run.sh] %s\n' "$*" >&2; }

setup_hash() { cat requirements.txt requirements-nodeps.txt setup.py | sha256sum | cut -d' ' -f1; }

setup() {
  if [[ -x $PY && -f $STAMP && "$(cat "$STAMP")" == "$(setup_hash)" ]]; then
    return 0
  fi
  log "setting up $VENV (first time: ~2-3 minutes; the venv is ~8 GB, mostly torch's CUDA libraries)"
  [[ -x $PY ]] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  # The pip output of the local mirror has ~100 harmless 'Location ... is ignored' lines: filtered.
  "$PY" -m pip install -q -r requirements.txt 2>&1 | grep -v "is ignored" || true
  "$PY" -m pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | grep -v "is ignored" || true
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
  "$PY" -c "import jax, flax, optax, orbax.checkpoint, grain, tensorflow_datasets, torch, timm, facenet_pytorch, av, transformers" \
    || { log "setup failed: the pinned stack does not import"; exit 1; }
  setup_hash > "$STAMP"
  log "setup done"
}

cmd=${1:-demo}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  setup) setup ;;
  test)
    setup
    exec "$PY" -m pytest "$@" ;;
  demo)
    setup
    exec "$PY" -m gems_jax.demo "$@" ;;
  bench)
    setup
    name=${1:?usage: ./run.sh bench swin|vit|attention|train|av_train|audio_cnn|preprocess|paper|fer|ablation|beam [ARGS]}
    shift
    exec "$PY" -m "benchmarks.$name" "$@" ;;
  python)
    setup
    exec "$PY" "$@" ;;
  -h|--help|help)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    log "unknown command: $cmd (try ./run.sh help)"; exit 2 ;;
esac
