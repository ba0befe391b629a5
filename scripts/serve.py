r"""Serves a trained run over HTTP: the docid decoding service.

  python scripts/serve.py --checkpoint=workdir/model --port=8000 \
    [--index_dir=workdir/index] [--corpus=data/news/corpus.jsonl] \
    [--token_file=secret.txt] [--lexical_weight=2.0]

Binds to 127.0.0.1 unless --host is given (a non-loopback host also needs
--allow_remote). Document updates (POST /documents, DELETE /documents/{id})
need the bearer token read from --token_file or $GR_SERVE_TOKEN; without one
they are disabled. SIGTERM / Ctrl-C shut down gracefully: in-flight requests
finish and updates are on disk before the process exits.
"""

import os

from absl import app
from absl import flags
from absl import logging
import uvicorn

from gr.experiments import gin_cli
from gr.serve import retriever as serving
from gr.serve import app as web_app

_CHECKPOINT = flags.DEFINE_string(
  'checkpoint', None, 'orbax model_dir.', required=True
)
_STEP = flags.DEFINE_integer(
  'step',
  None,
  'Checkpoint step (unset: the step lexical_weight.json records, else the '
  'latest).',
)
_INDEX_DIR = flags.DEFINE_string(
  'index_dir', None, 'Served index dir (default: <checkpoint>/../index).'
)
_CORPUS = flags.DEFINE_string('corpus', None, 'corpus.jsonl for titles.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to bind.')
_PORT = flags.DEFINE_integer('port', 8000, 'Port to bind.')
_ALLOW_REMOTE = flags.DEFINE_bool(
  'allow_remote', False, 'Allow a non-loopback --host.'
)
_TOKEN_FILE = flags.DEFINE_string(
  'token_file', None, 'File holding the bearer token.'
)
_MAX_K = flags.DEFINE_integer('max_k', 10, 'Largest k a request may ask.')
_BUCKETS = flags.DEFINE_list(
  'buckets',
  ['1', '4', '16'],
  'Compiled batch sizes; the largest is the micro-batch limit. '
  'scripts/bench_serving.py prints the buckets its in-process throughput '
  'picks (the demo checkpoint on a quiet 2-core machine: batch 16 answers '
  'the most queries/s, 32 fewer).',
)
_ACCESS_LOG = flags.DEFINE_bool(
  'access_log', False, 'Log every request (costs time per request).'
)
_API_DOCS = flags.DEFINE_bool(
  'api_docs',
  False,
  'Serve /docs, /redoc and /openapi.json (Swagger UI loads its assets from '
  'a CDN).',
)
_LEXICAL_WEIGHT = flags.DEFINE_float(
  'lexical_weight',
  None,
  "The lexical plan's weight beta: a docid scores log-prob + beta * its "
  "document's lexical score (term sets, as the run was evaluated); 0 = the "
  "model alone, inf = the term sets alone. Unset: the run's "
  "lexical_weight.json (beside model_config.json; none = the model alone).",
)
_SCORE_MODE = flags.DEFINE_enum(
  'score_mode',
  None,
  ['log_probs', 'logits'],
  'How a docid scores (retrieval.SearchConfig.score_mode): summed '
  'log-probs, or summed raw logits for RQ runs (configs/news_rq_minilm.gin). '
  "Unset: as the run recorded it (model_config.json's scoring), else "
  'log_probs.',
)
_SPARSE_OUTPUT = flags.DEFINE_boolean(
  'sparse_output',
  None,
  'Logits only for the docid tokens the trie allows (retrieval.SearchConfig.'
  'sparse_output). Unset: as the run recorded it, else off.',
)
_MAX_WAIT_MS = flags.DEFINE_float(
  'max_wait_ms', 2.0, 'Micro-batching wait for a fuller batch.'
)


def read_token() -> str | None:
  if _TOKEN_FILE.value:
    with open(_TOKEN_FILE.value) as f:
      token = f.read().strip()
    if not token:
      raise app.UsageError(f'{_TOKEN_FILE.value} is empty')
    return token
  return os.environ.get('GR_SERVE_TOKEN') or None


def check_host(host: str) -> None:
  if not web_app.is_loopback(host) and not _ALLOW_REMOTE.value:
    raise app.UsageError(
      f'--host={host} is not loopback: add --allow_remote '
      '(and put TLS and a token in front of it)'
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  check_host(_HOST.value)
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  config = serving.ServingConfig(
    max_k=_MAX_K.value,
    buckets=tuple(int(b) for b in _BUCKETS.value),
    max_wait_ms=_MAX_WAIT_MS.value,
    score_mode=_SCORE_MODE.value,
    sparse_output=_SPARSE_OUTPUT.value,
  )
  retriever = serving.Retriever.from_checkpoint(
    _CHECKPOINT.value,
    index_dir=_INDEX_DIR.value,
    step=_STEP.value,
    config=config,
    corpus_path=_CORPUS.value,
    lexical_weight=_LEXICAL_WEIGHT.value,
  )
  weight = retriever.lexical_weight
  logging.warning(
    'serving step %s: %s',
    retriever.checkpoint_step,
    'the model alone (no lexical plan)'
    if not weight
    else f'log-prob + {weight} x lexical score (term sets)'
    if weight != float('inf')
    else 'the term sets alone (lexical plan, weight inf)',
  )
  try:
    service = web_app.create_app(
      retriever, token=read_token(), api_docs=_API_DOCS.value
    )
    uvicorn.run(
      service,
      host=_HOST.value,
      port=_PORT.value,
      timeout_graceful_shutdown=30,
      log_level='info',
      access_log=_ACCESS_LOG.value,
    )
  finally:
    retriever.close()


if __name__ == '__main__':
  gin_cli.run(main)
