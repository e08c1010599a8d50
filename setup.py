"""gems_jax: group emotion profiling in video (GEMS) in JAX/Flax, with a PyTorch preprocessing stage.

The exact, tested versions live in requirements.txt (installed by `./run.sh setup`); the ranges here
say what each part needs.
"""
from setuptools import find_packages, setup

setup(
    name="gems_jax",
    version="0.1.0",
    description="GEMS group emotion profiling (arXiv 2507.22393) in JAX/Flax",
    packages=find_packages(include=["gems_jax*", "preprocessing*", "configs*", "benchmarks*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "optax==0.2.8",
        "orbax-checkpoint==0.12.8", "chex==0.1.92", "ml-collections==1.1.0", "absl-py",
        "tensorflow-datasets==4.9.10", "importlib_resources>=6", "array-record==0.8.6",
        "grain==0.2.18", "numpy==2.4.6", "pillow==13.0.0", "tensorboardX==2.6.4",
        "matplotlib", "tqdm",
    ],
    extras_require={
        "preprocess": [
            "torch==2.14.1", "torchvision==0.29.1", "facenet-pytorch==2.5.3",
            "transformers==5.23.0", "timm==1.0.31", "safetensors", "av==18.1.0",
        ],
        "dev": ["pytest==9.2.0", "scikit-learn"],
    },
)
