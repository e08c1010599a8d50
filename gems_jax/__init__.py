"""gems_jax: group emotion profiling in video (GEMS, arXiv 2507.22393) in JAX/Flax.

Sub-packages: `models` (Swin, S3Attention, AutoCorrelation, the GEMS model), `data` (the TFDS
schema and the grain input pipeline), `training` (losses, sharding, checkpoints, logging),
`evaluation` (metrics and reports), `tools` (weight conversion, embedding caches) and
`benchmarks` (throughput programs). This package never imports torch.
"""
