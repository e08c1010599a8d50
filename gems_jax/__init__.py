"""gems_jax: group emotion profiling in video (GEMS, arXiv 2507.22393) in JAX/Flax.

Sub-packages: `models` (Swin, S3Attention, AutoCorrelation, the GEMS model), `tasks` (one object
per model family: what the training loop trains), `data` (the TFDS schema, the per-clip npz codec
and the grain input pipeline), `training` (losses, sharding, checkpoints, the face-embedding cache,
logging), `evaluation` (metrics and reports) and `tools` (weight conversion). Programs: `main`
(train / eval), `predict` (a profile of any clip), `demo` (the end-to-end demo).

This package never imports torch or `preprocessing` (tests/test_imports.py checks it): the
dependency runs one way, `preprocessing` (the PyTorch stage) imports `gems_jax.data`, whose schema
is the contract between the two. The benchmarks, which time PyTorch peers, live outside it in the
top-level `benchmarks` package.
"""
