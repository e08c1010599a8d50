"""The build report: every clip as ok or skipped (with the reason), warnings, counts.

build_report.json (written atomically next to the dataset):
    {"command": [...], "settings": {...}, "dataset": "<path or null>",
     "counts": {"clips": n, "ok": n, "skipped": n, "extracted": n, "from_cache": n,
                "text_encoded": n},
     "splits": {"train": n_ok, ...}, "warnings": ["global problems"],
     "clip_warnings": {"no audio stream": n, "no description": n, ...},
     "face_labels": {"human": n, "automatic": n, "unlabelled": n},
     "clips": {"70_25": {"status": "ok", "split": "train", "source": "extracted" | "cache",
                         "faces": 61, "steps": 16, "steps_with_faces": 14, "whole_frames": 5,
                         "face_labels": {"human": 3, "automatic": 58, "unlabelled": 0},
                         "has_audio": false, "audio_length": 0, "seconds": 2.1,
                         "warnings": ["no audio stream: kept without audio",
                                      "no description: text parts are zero, text_mask False"]},
               "70_26": {"status": "skipped", "split": "val", "reason": "..."}}}
`face_labels` counts the detected faces (kind 'faces') by the source of their emotion label: a
human annotation (--individual), the automatic labeller (--individual_labels; `settings` names it),
or none; the top-level one sums the ok clips. `source` says whether this run computed the clip's
media or found them in the cache, so a rerun shows what it skipped. A clip's fields are those its dataset holds (a privacy build has no face
counts). A clip warning reads "<kind>: <detail>"; `clip_warnings` counts the ok clips' warnings
by kind. Statuses are final only after the write step: an example that fails the dataset's
validation then turns from ok into skipped.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import tempfile
from typing import Any


class BuildReport:
  """Collects per-clip outcomes; `save` writes the JSON described in the module docstring."""

  def __init__(self, command: list[str], settings: dict[str, Any]):
    self.command, self.settings = command, settings
    self.clips: dict[str, dict[str, Any]] = {}
    self.warnings: list[str] = []
    self.dataset: str | None = None
    self.text_encoded = 0

  def entry(self, clip_id: str, split: str | None = None) -> dict[str, Any]:
    entry = self.clips.setdefault(clip_id, {"status": "ok", "split": split, "warnings": []})
    if split is not None:
      entry["split"] = split
    return entry

  def skip(self, clip_id: str, reason: str, split: str | None = None) -> None:
    entry = self.entry(clip_id, split)
    entry["status"], entry["reason"] = "skipped", reason

  def warn(self, clip_id: str, message: str) -> None:
    self.entry(clip_id)["warnings"].append(message)

  def ok_clips(self, split: str | None = None) -> list[str]:
    return sorted(c for c, e in self.clips.items()
                  if e["status"] == "ok" and (split is None or e["split"] == split))

  def counts(self) -> dict[str, int]:
    statuses = collections.Counter(e["status"] for e in self.clips.values())
    sources = collections.Counter(e.get("source") for e in self.clips.values()
                                  if e["status"] == "ok")
    return {"clips": len(self.clips), "ok": statuses["ok"], "skipped": statuses["skipped"],
            "extracted": sources["extracted"], "from_cache": sources["cache"],
            "text_encoded": self.text_encoded}

  def warning_counts(self) -> dict[str, int]:
    """Warnings of the ok clips by kind (the text before the first ':'), most frequent first."""
    kinds = collections.Counter(w.split(":")[0] for e in self.clips.values()
                                if e["status"] == "ok" for w in e["warnings"])
    return dict(kinds.most_common())

  def face_label_counts(self) -> dict[str, int]:
    """The ok clips' `face_labels` summed ({} when no clip has faces: a privacy build)."""
    total: collections.Counter = collections.Counter()
    for entry in self.clips.values():
      if entry["status"] == "ok":
        total.update(entry.get("face_labels", {}))
    return {key: total[key] for key in ("human", "automatic", "unlabelled")} if total else {}

  def split_counts(self) -> dict[str, int]:
    return dict(sorted(collections.Counter(
        e["split"] for e in self.clips.values() if e["status"] == "ok").items()))

  def to_json(self) -> dict[str, Any]:
    clips = {}
    for clip_id, entry in sorted(self.clips.items()):
      clean = {k: v for k, v in entry.items() if not (k == "warnings" and not v)}
      clips[clip_id] = clean
    return {"command": self.command, "settings": self.settings, "dataset": self.dataset,
            "counts": self.counts(), "splits": self.split_counts(), "warnings": self.warnings,
            "clip_warnings": self.warning_counts(), "face_labels": self.face_label_counts(),
            "clips": clips}

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
      json.dump(self.to_json(), f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path

  def summary(self) -> str:
    """A few lines for the terminal: counts, splits, and the skip reasons by kind."""
    counts = self.counts()
    reasons = collections.Counter(e["reason"].split(":")[0] for e in self.clips.values()
                                  if e["status"] == "skipped")
    lines = [f"clips {counts['clips']}: ok {counts['ok']} (extracted {counts['extracted']}, "
             f"from cache {counts['from_cache']}), skipped {counts['skipped']}",
             "splits: " + (", ".join(f"{s} {n}" for s, n in self.split_counts().items()) or "-")]
    if labels := self.face_label_counts():
      lines.append("face labels: " + ", ".join(f"{kind} {n}" for kind, n in labels.items()))
    lines += [f"  skipped x{n}: {reason}" for reason, n in reasons.most_common()]
    lines += [f"  warned x{n}: {kind}" for kind, n in self.warning_counts().items()]
    lines += [f"warning: {w}" for w in self.warnings]
    return "\n".join(lines)
