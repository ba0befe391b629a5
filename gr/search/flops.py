"""Matmul FLOPs of one served query: the model's roofline cost (issue 21).

Counts 2 * m * n * k per matmul (multiply and add), nothing else: layer
norms, softmaxes, activations, the trie and the top-k are left out, as they
are memory work next to the matmuls on this model. The count is what the
compiled search runs, padding included: `input_tokens` is the padded query
length (retrieval.input_bucket), and every decoder step runs all beams to
the cache's full length (`max_decode_len`), as the cached attention does.

encoder (BERT, per query): per layer, the Q/K/V/output projections 8 T E^2,
  the scores and weighted sum 4 T^2 E, the feed-forward 4 T E F.
cross-attention K/V (per query, once): 4 T E I per decoder layer
  (I = heads * head_dim).
decoder (per step, per beam): per layer, self-attention projections 8 E I
  and 4 S I against the S-long cache; cross-attention Q/output 4 E I and
  4 T I; the gated MLP 2 E F_d per activation + 2 F_d E; then the output
  layer 2 E R, R = the vocabulary (full) or the rows scored (sparse output:
  each beam's trie children, at most the docid rows + EOS).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class QueryFlops:
  """FLOPs of one query, by part."""

  encoder: float
  cross_kv: float
  decoder_body: float  # all steps and beams, without the output layer
  output_layer: float  # all steps and beams

  @property
  def total(self) -> float:
    return self.encoder + self.cross_kv + self.decoder_body + self.output_layer

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), "total": self.total}


def bert_encoder_flops(
  tokens: int, hidden: int, layers: int, intermediate: int
) -> float:
  """Matmul FLOPs of a BERT encoder over `tokens` positions."""
  t, e, f = tokens, hidden, intermediate
  return layers * (8.0 * t * e * e + 4.0 * t * t * e + 4.0 * t * e * f)


def cross_kv_flops(tokens: int, width: int, inner: int, layers: int) -> float:
  """The cross-attention K and V projections of `tokens` encoder states."""
  return layers * 4.0 * tokens * width * inner


def decoder_step_flops(
  *,
  emb: int,
  inner: int,
  mlp: int,
  activations: int,
  layers: int,
  cache_len: int,
  input_tokens: int,
  output_rows: int,
) -> tuple[float, float]:
  """(body, output layer) FLOPs of one decoder step of one beam."""
  e, i = emb, inner
  per_layer = (
    8.0 * e * i  # self-attention Q, K, V, output
    + 4.0 * cache_len * i  # scores and sum over the cache
    + 4.0 * e * i  # cross-attention Q, output (K/V cached per query)
    + 4.0 * input_tokens * i  # cross-attention scores and sum
    + 2.0 * e * mlp * activations
    + 2.0 * mlp * e
  )
  return layers * per_layer, 2.0 * e * output_rows


def query_flops(
  model_config,
  *,
  input_tokens: int,
  beam_size: int,
  steps: int,
  cache_len: int,
  output_rows: int | None = None,
  first_step: bool = False,
  last_step_free: bool = False,
) -> QueryFlops:
  """FLOPs of one query of a `bert_network.BertT5Config` model.

  input_tokens: padded query length; beam_size: beams (decoder rows per
  query); steps: decoder steps, the docid's tokens and its EOS; cache_len:
  the decoder cache length (max_decode_len); output_rows: rows of the
  output layer scored per beam and step (None: the full vocabulary).
  first_step: step 0 runs once per query, not per beam
  (SearchConfig.first_step). last_step_free: the last step calls no model
  (every beam's only allowed token is EOS, which the sparse output layer
  scores 0: fixed-length docids).
  """
  bert, dec = model_config.encoder, model_config.decoder
  inner = dec.num_heads * dec.head_dim
  body, out = decoder_step_flops(
    emb=dec.emb_dim,
    inner=inner,
    mlp=dec.mlp_dim,
    activations=len(dec.mlp_activations),
    layers=dec.num_decoder_layers,
    cache_len=cache_len,
    input_tokens=input_tokens,
    output_rows=dec.vocab_size if output_rows is None else output_rows,
  )
  rows = (1 if first_step else beam_size) + beam_size * (
    steps - 1 - int(last_step_free)
  )
  return QueryFlops(
    encoder=bert_encoder_flops(
      input_tokens, bert.hidden_size, bert.num_layers, bert.intermediate_size
    ),
    cross_kv=cross_kv_flops(
      input_tokens, bert.hidden_size, inner, dec.num_decoder_layers
    ),
    decoder_body=rows * body,
    output_layer=rows * out,
  )


def roofline(flops_per_query: float, peak_gflops: float, qps: float) -> dict:
  """Achieved GFLOP/s at `qps` and its fraction of `peak_gflops`; the
  ceiling q/s this count allows at that peak."""
  achieved = flops_per_query * qps / 1e9
  return {
    "gflop_per_query": flops_per_query / 1e9,
    "peak_gflops": peak_gflops,
    "ceiling_qps": peak_gflops * 1e9 / flops_per_query,
    "achieved_gflops": achieved,
    "fraction_of_peak": achieved / peak_gflops,
  }
