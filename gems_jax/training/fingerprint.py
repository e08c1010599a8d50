"""Content fingerprints that key caches: the files of a dataset folder, the arrays of a param tree.

A cache keyed on paths goes stale silently when the content behind a path changes (a dataset
rebuilt with corrected labels, a stage-1 encoder retrained into the same workdir). These digests
change exactly when the content does, and not when the same content moves to another folder.
"""
import hashlib
import os
import pathlib

import jax
import numpy as np

_BLOCK = 1 << 22  # 4 MiB reads: hashing streams, memory stays flat however large the files are.


def directory_sha256(root: str | os.PathLike) -> str:
  """sha256 over every regular file under `root`: relative path, size and bytes, in path order.

  The whole content is read (about 1.5 GB/s of sha256 on one core here, so a few seconds for the
  GBs of a VGAF-sized crops dataset: small beside encoding its faces). A cheaper rule (sizes and
  modification times) would call a rebuilt dataset with corrected labels of the same byte size
  unchanged when its files are copied with their times, so the bytes are hashed.
  """
  root = pathlib.Path(root)
  files = sorted(p for p in root.rglob("*") if p.is_file())
  if not files:
    raise FileNotFoundError(f"no files to fingerprint under {root}")
  digest = hashlib.sha256()
  for path in files:
    # Path and size first: with the size known, one file's bytes cannot pass for another's name.
    digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
      while block := f.read(_BLOCK):
        digest.update(block)
  return digest.hexdigest()


def tree_sha256(tree) -> str:
  """sha256 over a pytree's leaves: tree path, dtype, shape and bytes of each array, in tree order.

  Leaves are fetched to the host one at a time (a Swin-B encoder is ~350 MB of float32).
  """
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}\0{array.dtype.str}\0{array.shape}\0".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()
