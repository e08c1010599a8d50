"""A randomly initialised RoBERTa and a byte-level BPE tokenizer trained on the fly, as a folder.

    path = write_random_roberta("/tmp/tiny_roberta", corpus=texts, hidden_size=64, num_layers=2)
    encoder = TextEncoder(path)                       # loads like any local Hugging Face folder

Machines without hub access cannot fetch roberta-base. Tests, benchmarks and offline smoke runs use
this instead: the same architecture and code path, random weights (seeded), any size. With the
defaults of RoBERTa-base (hidden 768, 12 layers, 12 heads) it costs what RoBERTa-base costs,
which is what the preprocessing benchmark needs. Its embeddings carry no meaning.
"""
from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Iterable

import torch

_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def write_random_roberta(folder: str | os.PathLike, corpus: Iterable[str], *,
                         hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12,
                         intermediate_size: int | None = None, vocab_size: int = 1000,
                         max_length: int = 128, seed: int = 0) -> str:
  """Writes config, random weights and a tokenizer trained on `corpus`; returns the folder."""
  from tokenizers import ByteLevelBPETokenizer
  from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(list(corpus), vocab_size=vocab_size, min_frequency=1,
                          special_tokens=_SPECIAL_TOKENS)
  with tempfile.TemporaryDirectory() as scratch:
    bpe.save_model(scratch)
    # transformers 5: vocab=/merges= (the v4 vocab_file=/merges_file= are silently ignored).
    tokenizer = RobertaTokenizerFast(vocab=f"{scratch}/vocab.json", merges=f"{scratch}/merges.txt",
                                     model_max_length=max_length)
  tokenizer.save_pretrained(folder)
  config = RobertaConfig(
      vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
      num_attention_heads=num_heads, intermediate_size=intermediate_size or 4 * hidden_size,
      max_position_embeddings=max_length + 2, pad_token_id=tokenizer.pad_token_id,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
  torch.manual_seed(seed)
  RobertaModel(config).save_pretrained(folder)
  return str(folder)
