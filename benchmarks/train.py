r"""Train-step throughput of the GEMS model on this machine.

  python -m benchmarks.train [--json OUT.json] [--repeats 5]   (or ./run.sh bench train)

Configurations (all fp32, jit, AOT-compiled first, median of --repeats timed steps):
  * fusion, paper shapes: batch 32, N=96 steps, 1024-d face + 3x768-d text tokens (3328-d),
    d_model 512, 8 heads, 2 layers — with S3Attention (the paper) and with dense attention (the
    ablation) in the same run; cached face embeddings (frozen encoder), as the paper trains it.
  * end to end with a small Swin on face crops: batch 8 clips x T=8 steps x K=4 faces of 64x64 px,
    a 2-stage Swin (embed 32) fine-tuned together with the fusion model.
Only our figures are measured here. The authors' PyTorch model is printed below the table as a
separately labelled reference, with where it comes from (AUTHORS_PYTORCH): another machine (a 2-core
Intel Xeon VM) and another session, so no ratio is formed from it; a ratio needs both sides measured on
one machine in one run. A same-run peer would need the authors' model, which this repository does not
carry (the reference ran a verbatim copy of their code in a scratch folder that was not kept), so there
is none.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import gems as gems_config
from gems_jax import train
from gems_jax.data import spec as spec_lib
from gems_jax.evaluation import report
from gems_jax.training import sharding as shd

# The authors' CustomS3AttentionModel (katariaak579/GEMS @5b6ff95, run.py) at the paper shapes, one full
# train step, fp32, torch with 2 threads: /work/shared/reference/perf_anchors.md §3 (median of 10 runs).
AUTHORS_PYTORCH = {
    "train_step_s": 1.155, "batch": 32, "clips_per_s": 27.7,
    "machine": "2-core Intel Xeon KVM guest (Sapphire Rapids class), torch 2.14.1, 2 threads",
    "date": "2026-11-22", "source": "/work/shared/reference/perf_anchors.md §3",
    "same_run": False,
}


def _batch(b, t, k, p, d, *, embed_dim=0, face_size=0, seed=0):
  rng = np.random.default_rng(seed)
  batch = {
      "step_mask": np.ones((b, t), bool), "face_mask": rng.random((b, t, k)) < 0.8,
      "text_embedding": rng.normal(size=(b, p, d)).astype(np.float32),
      "text_mask": np.ones((b, p), bool), "valid": np.ones(b, bool),
      "individual_emotion": rng.integers(-1, 9, (b, t, k)).astype(np.int32),
      "individual_valence": rng.uniform(-1, 1, (b, t, k)).astype(np.float32),
      "individual_arousal": rng.uniform(-1, 1, (b, t, k)).astype(np.float32),
      "group_emotion": rng.integers(0, 9, b).astype(np.int32),
      "group_category": rng.integers(0, 3, b).astype(np.int32),
      "valence": rng.uniform(-1, 1, b).astype(np.float32),
      "arousal": rng.uniform(-1, 1, b).astype(np.float32),
      "situational_emotion": (rng.random((b, 10)) < 0.2).astype(np.float32),
      "situation": rng.integers(0, 10, b).astype(np.int32)}
  batch["situational_emotion"][:, 0] = 1.0
  if embed_dim:
    batch["face_embedding"] = rng.normal(size=(b, t, k, embed_dim)).astype(np.float32)
  else:
    batch["faces"] = rng.integers(0, 256, (b, t, k, face_size, face_size, 3), dtype=np.uint8)
  return batch


def time_train_step(config, spec, batch, repeats: int) -> dict:
  mesh = shd.make_mesh(config.mesh)
  trainer = train.Trainer(config, spec, mesh, steps_per_epoch=100)
  state = trainer.init_state(batch, jax.random.key(0))
  gbatch = shd.global_batch(batch, mesh)
  rng = jax.random.key(1)
  t0 = time.perf_counter()
  state, scalars = trainer.train_step(state, gbatch, rng)  # Compile + first step.
  jax.block_until_ready(scalars)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, scalars = trainer.train_step(state, gbatch, rng)
    jax.block_until_ready(scalars)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  b = batch["valid"].shape[0]
  return {"batch": b, "step_s": step_s, "clips_per_s": b / step_s, "first_step_s": compile_s,
          "params": int(sum(x.size for x in jax.tree.leaves(state.params)))}


def fusion_config(attention: str):
  config = gems_config.get_config(f"attention={attention}")
  config.model.face_encoder.frozen = True
  return config


def swin_config():
  config = gems_config.get_config("runlocal")
  config.model.face_encoder.frozen = False
  config.model.face_encoder.overrides = dict(img_size=64, window_size=4, embed_dim=32,
                                             depths=(2, 2), num_heads=(2, 4), drop_path_rate=0.0)
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  results = []
  spec = spec_lib.DatasetSpec(name="bench", num_frames=96, max_faces=1, text_dim=768,
                              storage="embeddings", embed_dim=1024)
  for attention in ("s3", "dense"):
    r = time_train_step(fusion_config(attention), spec,
                        _batch(32, 96, 1, 3, 768, embed_dim=1024), args.repeats)
    results.append({"name": f"fusion_{attention}", **r})
  spec = spec_lib.DatasetSpec(name="bench", num_frames=8, max_faces=4, text_dim=32, face_size=64)
  r = time_train_step(swin_config(), spec, _batch(8, 8, 4, 3, 32, face_size=64), args.repeats)
  results.append({"name": "swin64_end_to_end", **r})

  provenance = report.provenance()
  print(f"This run: {provenance['cpu']} ({provenance['cores']} cores), {provenance['utc']}, "
        f"JAX {provenance['jax']}")
  print(f"{'configuration':<22}{'batch':>6}{'step s':>9}{'clips/s':>9}{'params':>12}")
  for r in results:
    print(f"{r['name']:<22}{r['batch']:>6}{r['step_s']:>9.3f}{r['clips_per_s']:>9.1f}{r['params']:>12,}")
  a = AUTHORS_PYTORCH
  print(f"\nReference, NOT measured in this run: the authors' PyTorch model at the fusion_* shapes, "
        f"{a['train_step_s']} s per {a['batch']}-clip train step = {a['clips_per_s']} clips/s, on a "
        f"{a['machine']}, {a['date']} ({a['source']}). Another machine and session: compare with care, "
        "no ratio.")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"provenance": provenance, "devices": str(jax.devices()), "results": results,
                 "authors_pytorch_reference": AUTHORS_PYTORCH}, f, indent=1)


if __name__ == "__main__":
  main()
