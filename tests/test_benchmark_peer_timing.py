"""benchmarks/peer_timing.py, the timing shared by benchmarks.swin and benchmarks.vit: one alternating
timm / Flax case on a tiny ViT, and the common command line (each benchmark's own defaults)."""
import timm
import torch

from benchmarks import peer_timing
from benchmarks import swin as swin_bench
from benchmarks import vit as vit_bench
from gems_jax.tools.convert_vit import convert_timm_state_dict

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)


def test_one_case_times_both_frameworks_on_the_same_function():
  torch.manual_seed(0)
  model = timm.create_model("vit_base_patch16_224", pretrained=False, **TINY).eval()
  module, variables = convert_timm_state_dict("vit_base_patch16_224", model.state_dict(), **TINY)
  assert vit_bench.parity(model, module, variables)["pooled_max_abs"] < 1e-4
  row = peer_timing.bench_case(model, module, variables, batch=2, dtype="float32", runs=2, warmup=1)
  assert row["batch"] == 2 and len(row["timm_times"]) == len(row["flax_times"]) == 2
  assert row["ratio"] == row["timm_s"] / row["flax_s"] and row["flax_img_s"] == 2 / row["flax_s"]
  assert peer_timing.counted_flops_per_image(model, 32) > 0


def test_each_benchmark_keeps_its_own_defaults():
  threads = torch.get_num_threads()  # parse_args sets torch's threads: restored below.
  swin = peer_timing.parse_args("swin", [], model="swin_base_patch4_window7_224", batches="1,8,32",
                                dtypes="float32,bfloat16", runs=5)
  vit = peer_timing.parse_args("vit", ["--runs", "2", "--threads", "1"],
                               model="vit_large_patch14_clip_224", batches="8,32",
                               dtypes="float32", runs=3)
  assert (swin.batches, swin.runs, swin.threads, swin.keep_heap) == ("1,8,32", 5, 2, False)
  assert (vit.model, vit.runs, vit.threads) == ("vit_large_patch14_clip_224", 2, 1)
  assert len(vit.load_start) == 3 and vit.started
  assert callable(swin_bench.main) and callable(vit_bench.main)
  torch.set_num_threads(threads)
