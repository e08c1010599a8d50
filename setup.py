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
        # `preprocessing.build --runner direct|dataflow|flink|spark` needs apache-beam==2.77.0,
        # which cannot be an extra here: it declares pillow<13, protobuf<7 and pyarrow<26, and a
        # resolver would refuse (pillow==13.0.0 above) or downgrade them. It runs with ours
        # (tests/test_build_beam.py), so it is installed without its declared dependencies:
        #   pip install -e '.[beam]' && pip install --no-deps apache-beam==2.77.0
        # (./run.sh setup does both). This extra is the rest of Beam's dependencies.
        "beam": [
            "cryptography>=39,<51", "fastavro>=0.23.6,<2", "fasteners>=0.3,<1",
            "grpcio>=1.71,<2", "httplib2>=0.8,<1", "jsonpickle>=3.0.4,<5", "objsize>=0.6.1,<0.8",
            "pymongo>=3.8,<5", "proto-plus>=1.7.1,<2", "pytz>=2018.3", "sortedcontainers>=2.4",
            "zstandard>=0.18,<1", "beartype>=0.21,<0.23", "requests>=2.32.4,<3",
            "pyyaml>=3.12,<7", "python-dateutil>=2.8", "packaging>=22", "typing-extensions>=3.7",
        ],
    },
)
