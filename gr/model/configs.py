"""The model configs a run may train, told apart in this one place.

A model config is a network.T5Config (a T5 encoder-decoder, from scratch or
from HF T5 weights) or a bert_network.BertT5Config (a pretrained BERT-family
encoder under a T5 decoder). Everything that depends only on the config's
kind lives here: the network it describes, its decoder's config, the width
of the encoder states cross-attention reads, how many encoder layers are
frozen, and its record in model_config.json. gr/model/family.py builds the
model families on top of it (a family also needs the model object: an HF
T5 model has a plain T5Config).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn

from gr.model import bert
from gr.model import bert_network
from gr.model import embed
from gr.model import network

ModelConfig = network.T5Config | bert_network.BertT5Config

T5_KEY = 't5_config'  # model_config.json keys, one per config kind
BERT_T5_KEY = 'bert_t5_config'


def has_bert_encoder(config: ModelConfig) -> bool:
  """Whether `config` puts a pretrained BERT-family encoder under the
  decoder (bert_network.BertT5Config)."""
  return isinstance(config, bert_network.BertT5Config)


def bert_t5_config(
  *,
  decoder: network.T5Config,
  encoder_dir: str | None = None,
  trainable_encoder_layers: int = 0,
) -> bert_network.BertT5Config:
  """A BERT-family encoder (a HF folder; default all-MiniLM-L6-v2) under
  the `decoder` T5 config, its top `trainable_encoder_layers` trained
  (gin: bert_network.pretrained_encoder_config)."""
  encoder_dir = encoder_dir or embed.default_model_dir()
  return bert_network.BertT5Config(
    bert.BertConfig.from_folder(encoder_dir),
    decoder,
    trainable_encoder_layers,
    encoder_dir,
  )


def make_module(config: ModelConfig) -> nn.Module:
  """The network a config describes: T5, or a BERT encoder + T5 decoder."""
  if has_bert_encoder(config):
    return bert_network.BertT5Transformer(config)
  return network.Transformer(config)


def decoder_config(config: ModelConfig) -> network.T5Config:
  """The T5 config of the decoder (the whole config for a T5 model)."""
  return config.decoder if has_bert_encoder(config) else config


def encoder_width(config: ModelConfig) -> int:
  """Width of the encoder's output states (what cross-attention reads)."""
  return config.encoder_width if has_bert_encoder(config) else config.emb_dim


def frozen_layers(config: ModelConfig) -> int:
  """Encoder layers that do not train (0 for a T5 encoder)."""
  return config.frozen_layers if has_bert_encoder(config) else 0


def with_vocab_size(config: ModelConfig, vocab_size: int) -> ModelConfig:
  """The config with `vocab_size` decoder rows."""
  if has_bert_encoder(config):
    return config.with_vocab_size(vocab_size)
  return dataclasses.replace(config, vocab_size=vocab_size)


def config_record(config: ModelConfig) -> dict[str, Any]:
  """{key: fields} of model_config.json for `config`."""
  key = BERT_T5_KEY if has_bert_encoder(config) else T5_KEY
  return {key: dataclasses.asdict(config)}


def config_from_record(record: Mapping[str, Any]) -> ModelConfig:
  """The config `config_record` wrote (KeyError if the record has none)."""
  if BERT_T5_KEY in record:
    return bert_network.BertT5Config(**record[BERT_T5_KEY])
  return network.T5Config(**record[T5_KEY])
