"""Import of the GEMS authors' precomputed-feature layout (storage='embeddings', K = 1).

    <root>/<split>/face_features/<clip>/<step>.npy     one 1024-d Swin-B vector per time step
    <root>/<split>/text_latent{1,2,3}/<clip>.npy       768-d pooled text vectors (3 parts)
    <root>/<split>/labels.csv                           the authors' label columns

    layout = scan_layout(root)                          # split -> SplitLayout
    record = load_clip_features(layout["train"], "70_25", num_frames=96)

Step files are ordered by the numbers in their names (`2.npy` before `10.npy`, `frame_9` before
`frame_10`), not lexicographically as the authors' loader did (their `run.py:794`), so steps
stay in time order. A clip with more than T steps keeps the first T; fewer are padded (step_mask
False). Each real step fills face slot 0: face_mask True, track 0, score 1.0 (the detector score is
not in the layout), box 0 (unknown); frame_index is the step number. A missing text_latent file
gives a zero part with text_mask False. Any file with another width than its peers, a non-finite
value, or an unreadable .npy is a ValueError naming the file.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np

from preprocessing import labels as labels_lib

TEXT_FOLDERS = ("text_latent1", "text_latent2", "text_latent3")
_NUMBER_RE = re.compile(r"(\d+)")


def numeric_sort_key(name: str) -> tuple:
  """Natural-order key: digit runs compare as numbers ('frame_2' < 'frame_10')."""
  return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
               for part in _NUMBER_RE.split(name) if part)


@dataclasses.dataclass(frozen=True)
class SplitLayout:
  folder: pathlib.Path
  face_dirs: dict[str, pathlib.Path]  # clip -> its face_features folder.
  labels_csv: pathlib.Path | None

  def text_path(self, clip_id: str, part: int) -> pathlib.Path:
    return self.folder / TEXT_FOLDERS[part] / f"{clip_id}.npy"


def scan_layout(root: str | pathlib.Path) -> dict[str, SplitLayout]:
  """The splits under `root` that have a face_features folder or a labels.csv."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"--from_features: {root} is not a folder")
  out = {}
  for split in labels_lib.SPLITS:
    folder = root / split
    faces = folder / "face_features"
    face_dirs = ({p.name: p for p in sorted(faces.iterdir()) if p.is_dir()}
                 if faces.is_dir() else {})
    labels_csv = folder / "labels.csv"
    if face_dirs or labels_csv.exists():
      out[split] = SplitLayout(folder, face_dirs, labels_csv if labels_csv.exists() else None)
  if not out:
    raise FileNotFoundError(f"{root}: no <split>/face_features/ or <split>/labels.csv for any "
                            f"split in {labels_lib.SPLITS}")
  return out


def step_files(face_dir: pathlib.Path) -> list[pathlib.Path]:
  """The clip's .npy step files in numeric order."""
  return sorted(face_dir.glob("*.npy"), key=lambda p: numeric_sort_key(p.stem))


def _load_vector(path: pathlib.Path, width: int | None) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"{path}: unreadable .npy: {e}") from e
  if array.ndim == 2 and array.shape[0] == 1:
    array = array[0]
  if array.ndim != 1 or (width is not None and array.shape[0] != width):
    raise ValueError(f"{path}: expected a vector of shape ({width or 'D'},) or (1, "
                     f"{width or 'D'}), got {array.shape}")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{path}: holds non-finite values")
  return array.astype(np.float32)


def count_steps(layout: dict[str, SplitLayout]) -> int:
  """The largest number of step files of any clip (the natural T of the layout)."""
  return max((sum(1 for _ in d.glob("*.npy")) for s in layout.values()
              for d in s.face_dirs.values()), default=0)


def layout_dims(layout: dict[str, SplitLayout]) -> tuple[int, int]:
  """(E, D): the widths of the first face step file and the first text_latent file found."""
  embed_dim = text_dim = None
  for split in layout.values():
    for clip_id, face_dir in split.face_dirs.items():
      files = step_files(face_dir)
      if embed_dim is None and files:
        embed_dim = _load_vector(files[0], None).shape[0]
      for part in range(len(TEXT_FOLDERS)):
        path = split.text_path(clip_id, part)
        if text_dim is None and path.exists():
          text_dim = _load_vector(path, None).shape[0]
      if embed_dim is not None and text_dim is not None:
        return embed_dim, text_dim
  raise ValueError(f"no readable face step file and text_latent file in "
                   f"{sorted(str(s.folder) for s in layout.values())}")


def load_clip_features(split: SplitLayout, clip_id: str, num_frames: int,
                       embed_dim: int | None = None, text_dim: int | None = None) -> dict:
  """The face and text part of one clip's example (contract keys, storage='embeddings')."""
  face_dir = split.face_dirs.get(clip_id)
  if face_dir is None:
    raise ValueError(f"no face features folder {split.folder / 'face_features' / clip_id}")
  files = step_files(face_dir)
  if not files:
    raise ValueError(f"{face_dir}: no .npy step files")
  vectors = [_load_vector(p, embed_dim) for p in files[:num_frames]]
  widths = {v.shape[0] for v in vectors}
  if len(widths) > 1:
    raise ValueError(f"{face_dir}: step files have different widths {sorted(widths)}")
  n, width = len(vectors), vectors[0].shape[0]
  t = num_frames
  embedding = np.zeros((t, 1, width), np.float32)
  embedding[:n, 0] = np.stack(vectors)
  real = np.arange(t) < n
  texts = []
  for part in range(len(TEXT_FOLDERS)):
    path = split.text_path(clip_id, part)
    texts.append(_load_vector(path, text_dim) if path.exists() else None)
  dims = {v.shape[0] for v in texts if v is not None} | ({text_dim} if text_dim else set())
  if len(dims) > 1:
    raise ValueError(f"{split.folder}: text_latent files of {clip_id!r} have widths {sorted(dims)}")
  dim = dims.pop() if dims else None
  if dim is None:
    raise ValueError(f"{split.folder}: no text_latent file for {clip_id!r} and no width known")
  return {
      "face_embedding": embedding,
      "frame_index": np.where(real, np.arange(t), -1).astype(np.int32),
      "step_mask": real, "face_mask": real[:, None].copy(),
      "face_boxes": np.zeros((t, 1, 4), np.float32),
      "face_scores": real[:, None].astype(np.float32),
      "face_track": np.where(real, 0, -1).astype(np.int32)[:, None],
      "text_embedding": np.stack([v if v is not None else np.zeros(dim, np.float32)
                                  for v in texts]),
      "text_mask": np.array([v is not None for v in texts]),
      "num_steps_found": len(files),
  }
