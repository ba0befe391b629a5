r"""Collects docs/results/<corpus>/schemes.json from run_experiment runs.

  python scripts/collect_schemes.py --step0=runs/step0_lex \
      --trained=runs/demo --out=docs/results/news/schemes.json

Every run uses the lexical plan (gr:model, gr:terms and gr rows in its
results.json). Per scheme, {"step0": {QSET: METRICS}, "trained": {..}}.
From --step0 and --trained (atomic docids): "atomic" is the model alone
(gr:model), "term_set" the term sets alone (gr:terms; nothing in it is
trained, so both entries are equal by construction), "multi" atomic plus
term-set docids fused with the dev split's lexical weight (gr). "bm25" and
"dense" come from the step-0 run.

--semantic_step0 / --semantic_trained give "semantic" (the model alone)
and "semantic_plan" (semantic docids guided by the term sets, fused);
--text_step0 / --text_trained give "text" and "text_plan" the same way,
and --rq_step0 / --rq_trained "rq" and "rq_plan" (residual-quantisation
docids). Each pair is optional, and so is each half of it. Each run is a
run dir or its results.json (as kept under docs/results/).

The chosen weights are kept under "lexical_weight" and each run's record
under "runs" (keys "<phase>" for atomic, "<scheme>_<phase>" else). --out
is updated: entries that this call does not produce are kept as they are.
"""

import json
import os

from absl import app
from absl import flags

from gr import atomic_io

_STEP0 = flags.DEFINE_string('step0', None, 'Atomic run dir at step 0.')
_TRAINED = flags.DEFINE_string('trained', None, 'Trained atomic run.')
_SEMANTIC_STEP0 = flags.DEFINE_string('semantic_step0', None, 'Semantic run.')
_SEMANTIC_TRAINED = flags.DEFINE_string('semantic_trained', None, 'Trained.')
_TEXT_STEP0 = flags.DEFINE_string('text_step0', None, 'Text run at step 0.')
_TEXT_TRAINED = flags.DEFINE_string('text_trained', None, 'Trained.')
_RQ_STEP0 = flags.DEFINE_string('rq_step0', None, 'RQ run at step 0.')
_RQ_TRAINED = flags.DEFINE_string('rq_trained', None, 'Trained.')
_OUT = flags.DEFINE_string('out', None, 'JSON to update.', required=True)
ATOMIC_SYSTEMS = {'atomic': 'gr:model', 'term_set': 'gr:terms', 'multi': 'gr'}
METRICS = ('Hits@1', 'Hits@10', 'MRR@10')


def _load(run: str) -> dict:
  """A run dir's results.json, or that file itself."""
  path = run if run.endswith('.json') else os.path.join(run, 'results.json')
  with open(path) as f:
    return json.load(f)


def _system(results: dict, system: str) -> dict:
  return {
    qset: {m: round(r[system][m], 4) for m in METRICS}
    for qset, r in results.items()
    if '/' in qset and system in r
  }


def _runs(step0: str, trained: str) -> dict:
  """{phase: results.json} of the phases given."""
  return {
    phase: _load(path)
    for phase, path in (('step0', step0), ('trained', trained))
    if path
  }


def _collect(out: dict, runs: dict, systems: dict, prefix: str) -> None:
  """Writes `systems` ({scheme: results row}) of `runs` into `out`, with
  each run's chosen weight and record under key prefix + phase; nothing
  without runs."""
  if not runs:
    return
  for scheme, system in systems.items():
    entry = out.setdefault(scheme, {})
    entry.update({p: _system(r, system) for p, r in runs.items()})
  for phase, results in runs.items():
    out.setdefault('lexical_weight', {})[prefix + phase] = results[
      'lexical_weight'
    ]['chosen']
    out.setdefault('runs', {})[prefix + phase] = results['run']


def main(argv):
  del argv
  out = {}
  if os.path.exists(_OUT.value):
    with open(_OUT.value) as f:
      out = json.load(f)
  atomic = _runs(_STEP0.value, _TRAINED.value)
  _collect(out, atomic, ATOMIC_SYSTEMS, '')
  if 'step0' in atomic:
    out['bm25'] = _system(atomic['step0'], 'bm25')
    out['dense'] = _system(atomic['step0'], 'dense')
  for scheme, step0, trained in (
    ('semantic', _SEMANTIC_STEP0.value, _SEMANTIC_TRAINED.value),
    ('text', _TEXT_STEP0.value, _TEXT_TRAINED.value),
    ('rq', _RQ_STEP0.value, _RQ_TRAINED.value),
  ):
    systems = {scheme: 'gr:model', f'{scheme}_plan': 'gr'}
    _collect(out, _runs(step0, trained), systems, f'{scheme}_')
  atomic_io.write_json(_OUT.value, out, indent=1)
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  app.run(main)
