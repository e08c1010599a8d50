"""Throughput programs (`./run.sh bench NAME` = `python -m benchmarks.NAME`; see BENCHMARKS.md).

They time gems_jax against PyTorch peers in the same run (timm's Swin, torch's scaled dot-product
attention, the bare MTCNN detector), so they live outside the pure-JAX `gems_jax` package.
"""
