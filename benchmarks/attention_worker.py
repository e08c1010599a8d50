"""One attention benchmark measurement in a fresh process (run by benchmarks.attention).

    python -m benchmarks.attention_worker --method s3 --n 4096 --batch 1 --mode fwdbwd

Prints one JSON line. Each measurement has its own process so that the peak RSS (`ru_maxrss`)
belongs to that configuration alone. What is timed, per method (input x [B, N, C] float32, already
on device):
- s3: the whole S3Attention block (smoother FFTs, conv stem, norm, ELU, fused qkv, row and column
  attention, two LayerNorms), authors' configuration (BatchNorm over positions, r=s1=s2=8).
- dense_xla: DenseSelfAttention without output projection: fused qkv matmul,
  jax.nn.dot_product_attention (XLA), head merge; queries chunked with lax.map when N > chunk.
- torch_sdpa: the same qkv Linear(C, 3C, bias=False), F.scaled_dot_product_attention, head merge,
  torch.set_num_threads(2).
Mode fwd: eval mode (JAX: train=False; torch: eval + inference_mode). Mode fwdbwd: train mode,
loss = sum of the output, gradients w.r.t. the input and every parameter (JAX: value_and_grad,
BatchNorm batch statistics; torch: backward()). Dropout is 0 for all methods. JAX functions are
compiled ahead of time (`lower().compile()`); the compile time, one warm-up run and the timed runs
are separate.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed_runs(run, repeats: int) -> list[float]:
  """One warm-up run, then `repeats` timed runs (3 instead of 5 when one run takes over 2 s)."""
  start = time.perf_counter()
  run()
  if time.perf_counter() - start > 2.0:
    repeats = min(repeats, 3)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return times


def _jax_model(args):
  import jax.numpy as jnp
  from gems_jax.models.dense_attention import DenseSelfAttention
  from gems_jax.models.s3attention import S3Attention
  if args.method == "s3":
    return S3Attention(d_model=args.d_model, num_heads=args.heads, max_len=args.n,
                       dropout_rate=0.0, dtype=jnp.dtype(args.dtype))
  chunk = args.dense_chunk if 0 < args.dense_chunk < args.n else None
  return DenseSelfAttention(d_model=args.d_model, num_heads=args.heads, dropout_rate=0.0,
                            use_output_proj=False, query_chunk_size=chunk,
                            dtype=jnp.dtype(args.dtype))


def measure_jax(args) -> dict:
  import jax
  import jax.numpy as jnp
  model = _jax_model(args)
  x = jax.random.normal(jax.random.key(0), (args.batch, args.n, args.d_model), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(1), x)
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  if args.mode == "fwd":
    def step(params, x):
      return model.apply({"params": params, **rest}, x, train=False)
  else:
    def loss(params, x):
      y, _ = model.apply({"params": params, **rest}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(y.astype(jnp.float32))
    step = jax.value_and_grad(loss, argnums=(0, 1))

  start = time.perf_counter()
  compiled = jax.jit(step).lower(params, x).compile()
  compile_s = time.perf_counter() - start
  result = {"compile_s": compile_s}
  memory = compiled.memory_analysis()
  if memory is not None:
    result["xla_temp_gib"] = memory.temp_size_in_bytes / 2**30
    result["xla_total_gib"] = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                               + memory.output_size_in_bytes) / 2**30
    if result["xla_temp_gib"] > args.max_temp_gib:
      return {**result, "status": "skipped",
              "reason": f"XLA temp {result['xla_temp_gib']:.1f} GiB > {args.max_temp_gib} GiB"}
  result["times_s"] = _timed_runs(lambda: jax.block_until_ready(compiled(params, x)),
                                  args.repeats)
  return result


def measure_torch(args) -> dict:
  import torch
  torch.set_num_threads(2)
  torch.manual_seed(0)
  b, n, c, h = args.batch, args.n, args.d_model, args.heads
  qkv = torch.nn.Linear(c, 3 * c, bias=False)
  x = torch.randn(b, n, c)

  def block(x):
    q, k, v = qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, c)

  if args.mode == "fwd":
    qkv.eval()

    def run():
      with torch.inference_mode():
        block(x)
  else:
    qkv.train()
    x.requires_grad_(True)

    def run():
      qkv.zero_grad(set_to_none=True)
      x.grad = None
      block(x).sum().backward()

  return {"times_s": _timed_runs(run, args.repeats)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", required=True, choices=["s3", "dense_xla", "torch_sdpa"])
  parser.add_argument("--n", type=int, required=True)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--mode", choices=["fwd", "fwdbwd"], default="fwd")
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dense_chunk", type=int, default=1024,
                      help="query chunk of dense_xla when N exceeds it; 0 = never chunk")
  parser.add_argument("--max_temp_gib", type=float, default=12.0)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args(argv)
  base = {"method": args.method, "n": args.n, "batch": args.batch, "mode": args.mode,
          "d_model": args.d_model, "heads": args.heads, "dtype": args.dtype}
  if args.method == "torch_sdpa" and args.dtype != "float32":
    raise SystemExit("torch_sdpa is measured in float32 only")
  result = measure_torch(args) if args.method == "torch_sdpa" else measure_jax(args)
  result.setdefault("status", "ok")
  if result["status"] == "ok":
    median = statistics.median(result["times_s"])
    result.update(median_s=median, min_s=min(result["times_s"]),
                  tokens_per_s=args.batch * args.n / median)
  result["peak_rss_mib"] = _rss_mib()
  result["loadavg_1min"] = os.getloadavg()[0]
  print(json.dumps({**base, **result}))
  sys.stdout.flush()


if __name__ == "__main__":
  main()
