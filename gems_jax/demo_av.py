"""The demo's second model family: the privacy-compliant audio-visual model (Augusma et al. 2023).

The demo's dataset carries, beside the face crops, AV_WHOLE_FRAMES whole frames of AV_FRAME_SIZE
pixels and the clip's sound (the synthetic world plants laughter for positive crowds and booing for
negative ones, docs/synthetic_world.md rule 7). On it, `configs/privacy_av.py:runlocal` (a tiny ViT
learnt from scratch: no CLIP weights ship offline) is trained once per mode, audio only, video only
and fusion, by the same training library as GEMS; each best validation checkpoint is evaluated on
the test split beside the majority and chance baselines. The report places the figures beside the
published VGAF results, which they do not measure: VGAF is real footage, this world is drawn.
"""
import json
import os

from configs import privacy_av as av_config
from gems_jax.evaluation import report as report_lib

AV_WHOLE_FRAMES, AV_FRAME_SIZE = 5, 32  # The authors' 5 frames; 32 px = runlocal's ViT input.
MODES = ("audio", "video", "fusion")
METRICS = ("accuracy", "macro_f1", "uar")
# Published test accuracy on VGAF (3 classes), as cited in configs/privacy_av.py.
VGAF_TEST_ACCURACY = (("EmotiW 2020 baseline", 47.88), ("Pinto et al. 2020 (I3D + audio BiLSTM)", 65.74),
                      ("Sun et al. 2020 (fusion of 14 models)", 70.77),
                      ("Augusma et al. 2023 (this model, CLIP ViT-L/14 + audio CNN)", 75.13))


def build_flags() -> list[str]:
  """`preprocessing.build` flags that add the whole frames (the sound is in by default)."""
  return ["--whole_frames", str(AV_WHOLE_FRAMES), "--whole_frame_size", str(AV_FRAME_SIZE)]


def av_config_for(data: str, mode: str, seed: int):
  """configs/privacy_av.py:runlocal in `mode` on the demo's dataset."""
  config = av_config.get_config(f"runlocal,mode={mode}")
  config.input.data_dir = data
  config.input.frame_size = AV_FRAME_SIZE
  config.seed = seed
  return config


def train_modes(data: str, workdir: str, seed: int, train_once) -> dict[str, str]:
  """One run per mode in <workdir>/av_<mode> (reused when finished): {mode: run dir}."""
  return {mode: train_once(av_config_for(data, mode, seed), os.path.join(workdir, f"av_{mode}"),
                           f"audio-visual model, {mode}") for mode in MODES}


def test_metrics(run_dir: str) -> dict:
  """The group-category entry of a run's test metrics.json: {'model', 'baselines', 'n', ...}."""
  with open(os.path.join(run_dir, "report", "test", "metrics.json")) as f:
    return json.load(f)["group_category"]


def _fmt(value) -> str:
  return "-" if value is None else f"{value:.3f}"


def report_section(run_dirs: dict[str, str], profile: dict | None) -> tuple[list[str], dict]:
  """Markdown lines of the audio-visual section and its JSON summary."""
  metrics = {mode: test_metrics(d) for mode, d in run_dirs.items()}
  first = next(iter(metrics.values()))
  baselines = first["baselines"]
  lines = ["## Second model family: privacy-compliant audio-visual (Augusma et al. 2023)", "",
           "Whole frames and sound only, never a face (`configs/privacy_av.py:runlocal`: a tiny ViT on "
           f"{AV_WHOLE_FRAMES} frames of {AV_FRAME_SIZE} px learnt from scratch, the paper's audio CNN and "
           "temporal block at small width, cross-attention fusion). Group category (positive / neutral / "
           f"negative), test split ({first['n']} clips), best validation checkpoint, one seed:", "",
           "| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
  for mode, m in metrics.items():
    lines.append(f"| {mode} | " + " | ".join(_fmt(m["model"].get(k)) for k in METRICS) + " |")
  for name in ("majority", "chance"):
    if name in baselines:
      lines.append(f"| {name} baseline | " + " | ".join(_fmt(baselines[name].get(k)) for k in METRICS)
                   + " |")
  above = [mode for mode, m in metrics.items()
           if m["model"]["accuracy"] > baselines["majority"]["accuracy"]]
  lines += ["", "Above the majority baseline's accuracy: "
            + (", ".join(above) if above else "none") + ". The synthetic crowd's sound plants its "
            "category (laughter, booing, nothing) and its faces show it too, but at 32 px a whole "
            "frame keeps little of a face, so the sound is what these small models can read. For "
            "orientation only, published test accuracy on the real VGAF (3 classes), which these "
            "figures do not measure:", "",
            "| VGAF test | accuracy % |", "|---|---|",
            *(f"| {name} | {acc:.2f} |" for name, acc in VGAF_TEST_ACCURACY)]
  if profile:
    probs = ", ".join(f"{k} {v:.2f}" for k, v in profile["clip"]["group_category_probabilities"].items())
    lines += ["", f"On the real clip (fusion model, `python -m gems_jax.predict`): **{profile['clip']['group_category']}** "
              f"({probs}); sound used: {profile['has_audio']}, faces used: {profile['faces_used']}."]
  summary = {"runs": run_dirs, "test": {mode: {k: report_lib.to_jsonable(m["model"].get(k)) for k in METRICS}
                                        for mode, m in metrics.items()},
             "baselines": baselines, "real_clip": profile and profile["clip"],
             "vgaf_test_accuracy_published": dict(VGAF_TEST_ACCURACY)}
  return lines, summary
