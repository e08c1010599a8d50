"""pytest setup: CPU only, 8 fake CPU devices for sharding tests, shared fixtures."""
import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests compile the same small models: a persistent compilation cache shared by the test
# processes (and subprocesses, through the environment) saves minutes per run.
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/gems_jax_test_xla_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _media_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("GEMS_TEST_MEDIA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def real_clip() -> pathlib.Path:
  """The real test clip `crowd_4s.mp4`; skips (or fails under CI=true) when it is missing."""
  path = _media_dir() / "crowd_4s.mp4"
  if not path.exists():
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(f"test media missing under CI: {path} (set GEMS_TEST_MEDIA)")
    pytest.skip(f"test media not found: {path} (set GEMS_TEST_MEDIA to its folder)")
  return path


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory) -> str:
  """A planted-signal GEMS dataset (embeddings storage): 192 train, 48 val, 60 test clips."""
  from gems_jax.data import planted, tfds_writer
  spec = planted.planted_spec()
  root = tmp_path_factory.mktemp("planted")
  splits = {"train": planted.make_planted_examples(spec, 192, seed=1),
            "val": planted.make_planted_examples(spec, 48, seed=2),
            "test": planted.make_planted_examples(spec, 60, seed=3)}  # 60: a partial last batch.
  return str(tfds_writer.write_dataset(root, spec, splits))


@pytest.fixture(scope="module")
def one_torch_thread():
  """torch on 1 thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
  MTCNN's and the FER networks' small ops gain little from a 2nd thread and slow down 5x when the
  cores are shared."""
  import torch
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)
