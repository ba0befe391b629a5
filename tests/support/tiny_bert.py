"""A tiny random BERT in Hugging Face format, for fast pretrained-encoder tests.

`write_tiny_bert(folder)` writes config.json, model.safetensors (HF
BertModel tensor names, written with safetensors.numpy: no torch needed)
and the real all-MiniLM-L6-v2 tokenizer.json, so the vocabulary is real
WordPiece while the network is small (hidden 32, 2 layers, 4 heads).
"""

import json
import os
import shutil

import numpy as np
import safetensors.numpy

from gr.model import embed

HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 64
MAX_POSITIONS = 64
VOCAB = 30522  # the MiniLM (bert-base-uncased) WordPiece vocabulary


def hf_config() -> dict:
  return {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": INTERMEDIATE,
    "max_position_embeddings": MAX_POSITIONS,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "pad_token_id": 0,
  }


def random_tensors(seed: int = 0) -> dict[str, np.ndarray]:
  """HF BertModel state dict (no pooler) with random float32 values.

  Scaled like a trained BERT's where it matters: word embeddings of norm
  about 1 that dominate the (small) position embeddings, and layers whose
  branches perturb the residual stream rather than replace it, so that
  mean-pooled states stay lexical (dense retrieval works) while every
  weight still moves the output well above test tolerances.
  """
  rng = np.random.default_rng(seed)
  normal = lambda *shape, std: (rng.standard_normal(shape) * std).astype(
    np.float32
  )
  tensors = {
    "embeddings.word_embeddings.weight": normal(VOCAB, HIDDEN, std=0.2),
    "embeddings.position_embeddings.weight": normal(
      MAX_POSITIONS, HIDDEN, std=0.02
    ),
    "embeddings.token_type_embeddings.weight": normal(2, HIDDEN, std=0.02),
  }

  def norm(name, width=HIDDEN):
    tensors[f"{name}.weight"] = 1.0 + normal(width, std=0.05)
    tensors[f"{name}.bias"] = normal(width, std=0.02)

  def dense(name, out, inp, std):  # torch Linear: weight [out, in]
    tensors[f"{name}.weight"] = normal(out, inp, std=std)
    tensors[f"{name}.bias"] = normal(out, std=0.02)

  norm("embeddings.LayerNorm")
  for i in range(LAYERS):
    p = f"encoder.layer.{i}"
    for n in ("query", "key"):  # sharp attention: masks and order matter
      dense(f"{p}.attention.self.{n}", HIDDEN, HIDDEN, 0.3)
    dense(f"{p}.attention.self.value", HIDDEN, HIDDEN, 0.08)
    dense(f"{p}.attention.output.dense", HIDDEN, HIDDEN, 0.08)
    norm(f"{p}.attention.output.LayerNorm")
    dense(f"{p}.intermediate.dense", INTERMEDIATE, HIDDEN, 0.08)
    dense(f"{p}.output.dense", HIDDEN, INTERMEDIATE, 0.08)
    norm(f"{p}.output.LayerNorm")
  return tensors


def write_tiny_bert(folder: str, seed: int = 0) -> str:
  """Writes the tiny random BERT folder; returns `folder`."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf_config(), f, indent=1)
  safetensors.numpy.save_file(
    random_tensors(seed), os.path.join(folder, "model.safetensors")
  )
  shutil.copyfile(
    os.path.join(embed.default_model_dir(), "tokenizer.json"),
    os.path.join(folder, "tokenizer.json"),
  )
  return folder


def num_bert_params(
  hidden: int,
  layers: int,
  intermediate: int,
  vocab: int,
  positions: int,
  types: int = 2,
) -> int:
  """Parameters of a BertModel without its pooler."""
  embeddings = (vocab + positions + types) * hidden + 2 * hidden
  layer = (
    4 * (hidden * hidden + hidden)
    + 2 * hidden
    + hidden * intermediate
    + intermediate
    + intermediate * hidden
    + hidden
    + 2 * hidden
  )
  return embeddings + layers * layer


def frozen_model(bert_dir: str):
  """The tiny BERT with every layer frozen under a one-layer decoder of its
  width (4 heads of 8, tied logits): an EncoderDecoderModel whose
  vocab_size is a placeholder (fit it to the vocabulary)."""
  from gr.model import bert
  from gr.model import bert_network
  from gr.model import models
  from gr.model import network

  decoder = network.T5Config.tiny(
    128,
    emb_dim=HIDDEN,
    num_heads=4,
    head_dim=8,
    mlp_dim=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    logits_via_embedding=True,
    dropout_rate=0.0,
  )
  config = bert_network.BertT5Config(
    bert.BertConfig.from_folder(bert_dir), decoder, 0, bert_dir
  )
  return models.EncoderDecoderModel(config)
