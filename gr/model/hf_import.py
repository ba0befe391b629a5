"""Imports HF-format T5 weights (safetensors or PyTorch .bin) into our params.

HF `T5ForConditionalGeneration` state-dict keys map onto gr/model/network.py's
parameter tree. torch Linear weights are [out, in], ours [in, ...out]:

  shared.weight [V, D]                         -> token_embedder/embedding
  {enc,dec}oder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
    [buckets, H]                               -> {enc,dec}oder/relpos_bias/
                                                  rel_embedding [H, buckets]
  encoder.block.i.layer.0.SelfAttention.{q,k,v}.weight [H*kv, D]
                                               -> .../attention/{query,key,
                                                  value}/kernel [D, H, kv]
  ....SelfAttention.o.weight [D, H*kv]         -> .../out/kernel [H, kv, D]
  ....layer.N.DenseReluDense.{wi,wi_0,wi_1}.weight [F, D] -> mlp/.../[D, F]
  ....DenseReluDense.wo.weight [D, F]          -> mlp/wo/kernel [F, D]
  ....layer_norm.weight, final_layer_norm.weight -> .../scale
  lm_head.weight [V, D]                        -> decoder/logits_dense/kernel

Tied copies (encoder/decoder.embed_tokens.weight, a tied lm_head.weight) and
the unused decoder cross-attention relative bias of old checkpoints are
accepted and ignored. transformers 5.x always ties lm_head to `shared` and
records the T5.1.1 "no logit scaling" choice as `scale_decoder_outputs:
false`; we import that as untied logits initialised from `shared.weight`.
"""

import json
import os
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np

from gr.model import network

Params = dict[str, Any]

_HF_ACTIVATIONS = {
  'relu': 'relu',
  'gelu_new': 'gelu',
  'gelu': 'gelu_exact',
  'silu': 'silu',
  'swish': 'silu',
}
_IGNORABLE_KEYS = (
  'encoder.embed_tokens.weight',
  'decoder.embed_tokens.weight',
  'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight',
)


class HFImportError(ValueError):
  """An HF checkpoint does not fit the expected T5 layout."""


def activations_from_feed_forward_proj(
  feed_forward_proj: str,
) -> tuple[str, ...]:
  """'gated-gelu' -> ('gelu', 'linear'); 'relu' -> ('relu',)."""
  parts = feed_forward_proj.split('-')
  gated = len(parts) == 2 and parts[0] == 'gated'
  if len(parts) > 2 or (len(parts) == 2 and not gated):
    raise HFImportError(
      f'config.json feed_forward_proj={feed_forward_proj!r}:'
      " expected 'ACT' or 'gated-ACT'"
    )
  # HF maps gated-gelu to the tanh approximation (gelu_new) for T5.1.1.
  act = 'gelu_new' if feed_forward_proj == 'gated-gelu' else parts[-1]
  if act not in _HF_ACTIVATIONS:
    raise HFImportError(
      f'config.json feed_forward_proj={feed_forward_proj!r}:'
      f' activation {act!r} not in {sorted(_HF_ACTIVATIONS)}'
    )
  ours = _HF_ACTIVATIONS[act]
  return (ours, 'linear') if gated else (ours,)


def config_from_hf(
  hf_config: Mapping[str, Any], **overrides
) -> network.T5Config:
  """Maps an HF T5 config.json dict to a T5Config (overrides win)."""
  try:
    num_layers = hf_config['num_layers']
    fields = dict(
      vocab_size=hf_config['vocab_size'],
      emb_dim=hf_config['d_model'],
      num_heads=hf_config['num_heads'],
      num_encoder_layers=num_layers,
      num_decoder_layers=hf_config.get('num_decoder_layers') or num_layers,
      head_dim=hf_config['d_kv'],
      mlp_dim=hf_config['d_ff'],
    )
  except KeyError as e:
    raise HFImportError(f'config.json lacks required field {e}') from e
  # Logit scaling goes with tying in HF 4.x; 5.x records it separately.
  scale = hf_config.get(
    'scale_decoder_outputs', hf_config.get('tie_word_embeddings', True)
  )
  fields.update(
    mlp_activations=activations_from_feed_forward_proj(
      hf_config.get('feed_forward_proj', 'relu')
    ),
    dropout_rate=hf_config.get('dropout_rate', 0.1),
    logits_via_embedding=bool(scale),
    relative_attention_num_buckets=hf_config.get(
      'relative_attention_num_buckets', 32
    ),
    relative_attention_max_distance=hf_config.get(
      'relative_attention_max_distance', 128
    ),
    layer_norm_epsilon=hf_config.get('layer_norm_epsilon', 1e-6),
  )
  return network.T5Config(**{**fields, **overrides})


def _linear(config, weight):
  """torch Linear [out, in] -> [in, out]."""
  del config
  return weight.T


def _qkv(config, weight):
  """[H*kv, D] -> [D, H, kv]."""
  return weight.T.reshape(config.emb_dim, config.num_heads, config.head_dim)


def _out(config, weight):
  """[D, H*kv] -> [H, kv, D]."""
  return weight.T.reshape(config.num_heads, config.head_dim, config.emb_dim)


def _same(config, weight):
  del config
  return weight


_Rule = tuple[
  tuple[str, ...], str, Callable[[network.T5Config, np.ndarray], np.ndarray]
]


def _attention_rules(ours: tuple[str, ...], hf: str) -> Iterator[_Rule]:
  for our_name, hf_name in (('query', 'q'), ('key', 'k'), ('value', 'v')):
    yield ours + (our_name, 'kernel'), f'{hf}.{hf_name}.weight', _qkv
  yield ours + ('out', 'kernel'), f'{hf}.o.weight', _out


def _mlp_rules(config, ours, hf) -> Iterator[_Rule]:
  acts = config.mlp_activations
  names = ['wi'] if len(acts) == 1 else [f'wi_{i}' for i in range(len(acts))]
  for name in names + ['wo']:
    yield ours + (name, 'kernel'), f'{hf}.{name}.weight', _linear


def _layer_rules(config, stack: str, i: int) -> Iterator[_Rule]:
  """Rules for encoder/decoder block i (HF sub-layers 0, 1[, 2])."""
  ours, hf = (stack, f'layers_{i}'), f'{stack}.block.{i}.layer'
  if stack == 'encoder':
    attention = [('attention', 'pre_attention_layer_norm', 'SelfAttention')]
  else:
    attention = [
      ('self_attention', 'pre_self_attention_layer_norm', 'SelfAttention'),
      (
        'encoder_decoder_attention',
        'pre_cross_attention_layer_norm',
        'EncDecAttention',
      ),
    ]
  for j, (name, norm, hf_name) in enumerate(attention):
    yield ours + (norm, 'scale'), f'{hf}.{j}.layer_norm.weight', _same
    yield from _attention_rules(ours + (name,), f'{hf}.{j}.{hf_name}')
  j = len(attention)
  yield (
    ours + ('pre_mlp_layer_norm', 'scale'),
    f'{hf}.{j}.layer_norm.weight',
    _same,
  )
  yield from _mlp_rules(config, ours + ('mlp',), f'{hf}.{j}.DenseReluDense')


def _rules(config: network.T5Config, has_lm_head: bool) -> Iterator[_Rule]:
  """All (our path, HF key, transform) triples for `config`."""
  yield ('token_embedder', 'embedding'), 'shared.weight', _same
  for stack, num_layers in (
    ('encoder', config.num_encoder_layers),
    ('decoder', config.num_decoder_layers),
  ):
    yield (
      (stack, 'relpos_bias', 'rel_embedding'),
      f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
      _linear,
    )
    for i in range(num_layers):
      yield from _layer_rules(config, stack, i)
    norm = 'encoder_norm' if stack == 'encoder' else 'decoder_norm'
    yield (stack, norm, 'scale'), f'{stack}.final_layer_norm.weight', _same
  if not config.logits_via_embedding:
    lm_head = 'lm_head.weight' if has_lm_head else 'shared.weight'
    yield ('decoder', 'logits_dense', 'kernel'), lm_head, _linear


def _expected_shapes(config: network.T5Config) -> dict[tuple[str, ...], tuple]:
  """Our parameter shapes for `config`, without running the network."""
  tokens = np.ones((1, 1), np.int32)
  shapes = jax.eval_shape(
    network.Transformer(config).init, jax.random.PRNGKey(0), tokens, tokens
  )
  flat = _flatten(nn.unbox(shapes['params']))
  return {k: tuple(v.shape) for k, v in flat.items()}


def _flatten(tree: Mapping[str, Any], prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def _nest(flat: Mapping[tuple[str, ...], Any]) -> Params:
  tree: Params = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _check_keys(
  state_dict: Mapping[str, Any], used: set[str], config: network.T5Config
) -> None:
  """Raises HFImportError naming missing or unexpected keys."""
  missing = sorted(used - set(state_dict))
  if missing:
    raise HFImportError(
      f'HF state dict is missing keys for {config}: {missing}'
    )
  ignorable = set(_IGNORABLE_KEYS)
  if config.logits_via_embedding:
    ignorable.add('lm_head.weight')
  unexpected = sorted(set(state_dict) - used - ignorable)
  if unexpected:
    raise HFImportError(f'HF state dict has unexpected keys: {unexpected}')


def params_from_hf_state_dict(
  state_dict: Mapping[str, np.ndarray], config: network.T5Config
) -> Params:
  """Converts an HF T5 state dict to our params (nested dict, fp32 numpy).

  Args:
    state_dict: HF key -> array (numpy; torch tensors are converted).
    config: the T5Config the weights are for (see `config_from_hf`).

  Returns:
    Params tree matching `network.Transformer(config)` (unboxed).

  Raises:
    HFImportError: on a missing or unexpected key, or a shape mismatch (the
      message names the HF key).
  """
  rules = list(_rules(config, 'lm_head.weight' in state_dict))
  _check_keys(state_dict, {hf for _, hf, _ in rules}, config)
  shapes = _expected_shapes(config)
  flat = {}
  for ours, hf, transform in rules:
    weight = _to_numpy(state_dict[hf])
    try:
      value = transform(config, weight)
    except ValueError as e:
      raise HFImportError(
        f'{hf}: shape {weight.shape} does not fit '
        f'{"/".join(ours)} {shapes[ours]}'
      ) from e
    if value.shape != shapes[ours]:
      raise HFImportError(
        f'{hf}: shape {weight.shape} gives {value.shape}, '
        f'expected {shapes[ours]} for {"/".join(ours)}'
      )
    flat[ours] = np.ascontiguousarray(value, dtype=np.float32)
  return _nest(flat)


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value).astype(np.float32, copy=False)


def _weight_files(directory: str) -> list[str]:
  """Weight files in an HF model directory (sharded or single)."""
  for index_name in (
    'model.safetensors.index.json',
    'pytorch_model.bin.index.json',
  ):
    index = os.path.join(directory, index_name)
    if os.path.exists(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
      return [os.path.join(directory, s) for s in shards]
  for name in ('model.safetensors', 'pytorch_model.bin'):
    if os.path.exists(os.path.join(directory, name)):
      return [os.path.join(directory, name)]
  raise HFImportError(
    f'{directory}: no model.safetensors or '
    'pytorch_model.bin (or their .index.json)'
  )


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads one .safetensors or .bin file into HF key -> fp32 numpy array."""
  if path.endswith('.safetensors'):
    import safetensors  # pylint: disable=g-import-not-at-top

    with safetensors.safe_open(path, framework='np') as f:
      return {k: _to_numpy(f.get_tensor(k)) for k in f.keys()}
  if path.endswith('.bin'):
    import torch  # pylint: disable=g-import-not-at-top

    state = torch.load(path, map_location='cpu', weights_only=True)
    return {k: _to_numpy(v) for k, v in state.items()}
  raise HFImportError(f'{path}: expected a .safetensors or .bin file')


def load_hf_t5(path_or_dir: str) -> tuple[network.T5Config, Params]:
  """Loads config.json and weights from an HF T5 directory or weights file.

  Args:
    path_or_dir: a directory holding config.json and model.safetensors /
      pytorch_model.bin (or sharded .index.json), or one weights file whose
      directory holds config.json.

  Returns:
    (config, params) for gr.model.network.Transformer.
  """
  if os.path.isdir(path_or_dir):
    directory, files = path_or_dir, _weight_files(path_or_dir)
  elif os.path.isfile(path_or_dir):
    directory, files = os.path.dirname(path_or_dir) or '.', [path_or_dir]
  else:
    raise HFImportError(f'{path_or_dir}: no such file or directory')
  config_path = os.path.join(directory, 'config.json')
  try:
    with open(config_path) as f:
      config = config_from_hf(json.load(f))
  except (OSError, json.JSONDecodeError) as e:
    raise HFImportError(f'{config_path}: cannot read T5 config: {e}') from e
  state_dict = {}
  for path in files:
    state_dict.update(load_state_dict(path))
  return config, params_from_hf_state_dict(state_dict, config)
