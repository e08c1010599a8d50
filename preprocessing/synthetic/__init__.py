"""A synthetic VGAF-GEMS world: drawn people with known expressions in per-situation scenes, with planted,
learnable label rules (docs/synthetic_world.md). Entry point: `python -m preprocessing.make_synthetic`.

Modules: faces (expressive people), scenes (backgrounds and props), rules (labels and descriptions),
audio (the sound), world (one clip), dataset (sources, splits, files). numpy, PIL and PyAV only; no torch.
"""
