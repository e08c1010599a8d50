r"""One measurement of the audio-visual benchmark in a fresh process (run by benchmarks.av_train).

  python -m benchmarks.av_train_worker --case step --vit unfrozen --batch 4 [--remat-chunk 5] [--quick]
  python -m benchmarks.av_train_worker --case embed [--quick]

Prints one JSON line, the last of stdout. One process per case, so that its peak RSS (measured by the
parent around this process) belongs to that case alone, and a case killed for memory kills no other.

Case 'step': the library's train step, `gems_jax.train.Trainer.train_step` (the jit of
`train.train_step` that train.py runs: state donated, NamedShardings on the ('data', 'fsdp') mesh),
compiled ahead of time for one batch of random inputs of the dataset's shapes (`random_batch`: what
`input_pipeline` yields, through the task's `prepare_batch`), then run once untimed and up to
`--repeats` times timed on the same device batch (host-to-device copy not timed); the state goes
round through the donation as in training. Parameters are initialised from a one-clip batch (their
shapes do not depend on the batch size). Before running, XLA's buffer sizes of the compiled step
(`memory_analysis()`) are set against the memory available (`memory_verdict`): a step that would
not fit is reported skipped, with the estimate, and not run.
  --vit frozen:   video_encoder.frozen='all' and the batch holds the cached frame embeddings
                  `whole_frame_embedding` [b, T_v, 1024]: the step has no ViT.
  --vit unfrozen: video_encoder.frozen='none' and the batch holds the decoded frames `whole_frames`
                  uint8 [b, T_v, 224, 224, 3]: the step runs ViT-L/14 forward and backward on b T_v
                  frames; `--remat-chunk n` sets video_encoder.remat_chunk (the ViT in a loop of
                  rematerialised chunks of n frames, gems_jax.models.vit).
Case 'embed': the one-off cost of the frozen ViT's frame-embedding cache: the cache's own chunk encoder
(`training.embedding_cache._ChunkEncoder`, AOT-compiled, `config.input.frame_cache_chunk` frames per
call, results fetched to the host) on full chunks of random uint8 frames.
"""
import argparse
import json
import resource
import statistics
import time

import jax
import numpy as np

from configs import privacy_av
from gems_jax import tasks
from gems_jax import train
from gems_jax.data import spec as spec_lib
from gems_jax.training import embedding_cache
from gems_jax.training import sharding as shd

GIB = 1024 ** 3
STORED_AUDIO_SECONDS = 10.0  # preprocessing.build's default --audio_max_seconds: S = 160,000.


def bench_config(vit: str, remat_chunk: int = 0, quick: bool = False):
  """configs/privacy_av.py (fusion, paper optimiser: SGD 1e-5, momentum 0.9) with the ViT frozen
  ('all', embeddings cached) or fine-tuned ('none'); `quick`: the tiny `runlocal` shapes."""
  config = privacy_av.get_config(f"frozen={'all' if vit == 'frozen' else 'none'}"
                                 + (",runlocal" if quick else ""))
  config.optim = privacy_av.get_config().optim  # runlocal trains with Adam: keep the paper's SGD.
  config.model.video_encoder.remat_chunk = remat_chunk
  return config


def shapes(quick: bool, audio_seconds: float = 5.0) -> dict:
  """What a clip of the benchmark holds and what trains on it (for the JSON and the table)."""
  config = bench_config("unfrozen", quick=quick)
  ve, mel = config.model.video_encoder, config.model.audio.log_mel
  return {"video_encoder": ve.name, "overrides": dict(ve.overrides), "dtype": ve.dtype,
          "frame_size": config.input.frame_size, "frames_per_clip": config.input.num_frames,
          "audio_frames": mel.num_segments, "audio_frame_shape": [mel.n_mels, mel.segment_frames],
          "audio_samples": int(STORED_AUDIO_SECONDS * mel.sample_rate),
          "audio_seconds_real": audio_seconds, "mode": config.model.mode,
          "optimizer": dict(config.optim.to_dict())}


def bench_spec(config, cached: bool) -> spec_lib.DatasetSpec:
  """The 'privacy' dataset the step reads: T_v whole frames of the configured size (as cached
  embeddings of the ViT's width when `cached`), int16 audio in the build's 10 s window."""
  task = tasks.get_task(config, bench_spec_base(config))
  width = task.video_encoder().num_features if cached else 0
  return bench_spec_base(config, width)


def bench_spec_base(config, embed_dim: int = 0) -> spec_lib.DatasetSpec:
  size, rate = config.input.frame_size, config.model.audio.log_mel.sample_rate
  return spec_lib.DatasetSpec(name="bench_av", num_frames=1, max_faces=1, text_dim=4,
                              kind="privacy", num_whole_frames=config.input.num_frames,
                              whole_frame_size=(size, size), whole_frame_embed_dim=embed_dim,
                              audio_samples=int(STORED_AUDIO_SECONDS * rate), audio_rate=rate)


def random_batch(spec: spec_lib.DatasetSpec, batch: int, audio_seconds: float, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """A host batch of `batch` valid clips with every numeric key of `spec` (random values; audio
  real for `audio_seconds`, zero after), decoded frames [b, T_v, H, W, 3] unless the spec caches
  their embeddings: the input pipeline's output for such a dataset."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, (shape, dtype) in spec_lib.array_specs(spec).items():
    shape = (batch,) + shape
    if dtype == np.bool_:
      out[key] = np.ones(shape, bool)
    elif np.issubdtype(dtype, np.floating):
      out[key] = rng.standard_normal(shape).astype(dtype)
    else:
      out[key] = np.zeros(shape, dtype)
  real = min(spec.audio_samples, int(audio_seconds * spec.audio_rate))
  out["audio"][:, :real] = rng.integers(-3000, 3000, (batch, real), dtype=np.int16)
  out["audio_length"][:] = real
  out["group_category"] = rng.integers(0, len(spec.group_category_names), batch).astype(np.int32)
  if not spec.whole_frame_embed_dim:
    out["whole_frames"] = rng.integers(0, 256, (batch, spec.num_whole_frames,
                                                *spec.whole_frame_size, 3), dtype=np.uint8)
  out["valid"] = np.ones(batch, bool)
  return out


def _maxrss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _available_bytes() -> int:
  import psutil  # pylint: disable=g-import-not-at-top
  return int(psutil.virtual_memory().available)


def memory_verdict(stats: dict, available_bytes: int, fraction: float) -> tuple[bool, str]:
  """(fits, reason if not) of a compiled step with XLA's buffer sizes `stats` (bytes: 'temp',
  'outputs', 'aliased'): beyond its resident inputs the step allocates its temporaries and its
  outputs that do not reuse a donated input; that must fit in `fraction` of `available_bytes`.
  (XLA's `peak_memory_in_bytes` does not count the CPU temporaries: not used.)"""
  need = stats["temp"] + stats["outputs"] - stats["aliased"]
  if need <= fraction * available_bytes:
    return True, ""
  return False, (f"does not fit: XLA needs {need / GIB:.1f} GiB beyond the state and batch "
                 f"({stats['temp'] / GIB:.1f} GiB temporaries), {available_bytes / GIB:.1f} GiB "
                 f"available (budget {fraction:.0%})")


def _timed(run, repeats: int, max_seconds: float) -> list[float]:
  """Times up to `repeats` calls of `run`, stopping early (after at least one) past max_seconds."""
  times, start = [], time.perf_counter()
  while len(times) < repeats and (not times or time.perf_counter() - start < max_seconds):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return times


def measure_step(args) -> dict:
  config = bench_config(args.vit, args.remat_chunk, args.quick)
  spec = bench_spec(config, cached=args.vit == "frozen")
  mesh = shd.make_mesh({"data": -1, "fsdp": 1}, jax.devices()[:args.devices or None])
  trainer = train.Trainer(config, spec, mesh, steps_per_epoch=100)
  numeric, _ = trainer.task.prepare_batch(random_batch(spec, args.batch, args.audio_seconds))
  state = trainer.init_state({k: v[:1] for k, v in numeric.items()}, jax.random.key(0))
  batch, rng = shd.global_batch(numeric, mesh), jax.random.key(1)
  start = time.perf_counter()
  step = trainer.train_step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  mem = step.memory_analysis()
  stats = {"temp": mem.temp_size_in_bytes, "arguments": mem.argument_size_in_bytes,
           "outputs": mem.output_size_in_bytes, "aliased": mem.alias_size_in_bytes}
  available = _available_bytes()
  fits, reason = memory_verdict(stats, available, args.mem_fraction)
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))  # noqa: E731
  record = {"case": "step", "vit": args.vit, "remat_chunk": args.remat_chunk, "batch": args.batch,
            "devices": mesh.size, "compile_s": compile_s, "params": count(state.params),
            "video_encoder_params": count(state.params.get("video_encoder", {})),
            "xla_memory_gib": {k: v / GIB for k, v in stats.items()},
            "available_gib_before_step": available / GIB}
  if not fits or args.compile_only:
    return {**record, "status": "skipped", "reason": reason or "compile only (--compile-only)",
            "maxrss_gib": _maxrss_gib()}
  holder = {"state": state}

  def run():
    holder["state"], holder["scalars"] = step(holder["state"], batch, rng)
    jax.block_until_ready(holder["scalars"])

  start = time.perf_counter()
  run()  # The first run pays one-off costs (allocation, page faults): not timed.
  first_s = time.perf_counter() - start
  times = _timed(run, args.repeats, args.max_seconds)
  step_s = statistics.median(times)
  return {**record, "status": "ok", "first_step_s": first_s, "step_times_s": times,
          "step_ms": 1e3 * step_s, "clips_per_s": args.batch / step_s,
          "last_loss": float(holder["scalars"]["loss"]), "maxrss_gib": _maxrss_gib()}


def measure_embed(args) -> dict:
  config = bench_config("frozen", quick=args.quick)
  spec = bench_spec_base(config)
  encoder = tasks.get_task(config, spec).frozen_image_encoder()
  mesh = shd.make_mesh({"data": -1, "fsdp": 1}, jax.devices()[:args.devices or None])
  params = jax.device_get(encoder.params)
  embed_dim = int(jax.eval_shape(encoder.features, params, jax.ShapeDtypeStruct(
      (1, *encoder.image_size, 3), np.uint8)).shape[-1])
  chunks = embedding_cache._ChunkEncoder(encoder, params, mesh, embed_dim)  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (1, chunks.local, *encoder.image_size, 3), dtype=np.uint8)
  slots = np.stack([np.zeros(chunks.local, int), np.arange(chunks.local)], axis=1)
  start = time.perf_counter()
  chunks(images, slots)
  first_s = time.perf_counter() - start
  times = _timed(lambda: chunks(images, slots), args.repeats, args.max_seconds)
  call_s = statistics.median(times)
  frames = spec.num_whole_frames
  return {"case": "embed", "status": "ok", "chunk_frames": chunks.chunk, "embed_dim": embed_dim,
          "devices": mesh.size, "compile_s": chunks.compile_seconds, "first_call_s": first_s,
          "call_times_s": times, "ms_per_frame": 1e3 * call_s / chunks.chunk,
          "frames_per_clip": frames, "s_per_clip": call_s / chunks.chunk * frames,
          "maxrss_gib": _maxrss_gib()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--case", choices=("step", "embed"), required=True)
  parser.add_argument("--vit", choices=("frozen", "unfrozen"), default="frozen")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--remat-chunk", type=int, default=0,
                      help="video_encoder.remat_chunk: frames per rematerialised ViT chunk (0: off)")
  parser.add_argument("--quick", action="store_true", help="the tiny runlocal shapes")
  parser.add_argument("--audio-seconds", type=float, default=5.0)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max-seconds", type=float, default=600.0)
  parser.add_argument("--mem-fraction", type=float, default=0.9)
  parser.add_argument("--compile-only", action="store_true",
                      help="step: compile and report XLA's memory estimate, do not run")
  parser.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all)")
  args = parser.parse_args(argv)
  record = measure_step(args) if args.case == "step" else measure_embed(args)
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
