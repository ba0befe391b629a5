r"""Collects docs/results/<corpus>/schemes.json from run_experiment runs.

  python scripts/collect_schemes.py --step0=runs/step0_lex \
      --trained=runs/demo --out=docs/results/news/schemes.json

Both runs use the lexical plan (gr:model, gr:terms and gr rows in their
results.json). Per scheme, {"step0": {QSET: METRICS}, "trained": {..}}:
"atomic" is the model alone (gr:model), "term_set" the term sets alone
(gr:terms; nothing in it is trained, so both entries are equal by
construction), "multi" atomic plus term-set docids fused with the dev
split's lexical weight (gr). "bm25" and "dense" come from the step-0 run.
The chosen weights are kept under "lexical_weight".

--semantic_step0 adds a step-0 run with semantic docids: "semantic" (the
model alone) and "semantic_plan" (semantic docids guided by the term
sets, fused), each with "step0" only until a trained run is given with
--semantic_trained.
"""

import json
import os

from absl import app
from absl import flags

from gr import atomic_io

_STEP0 = flags.DEFINE_string('step0', None, 'Run dir at step 0.', required=True)
_TRAINED = flags.DEFINE_string('trained', None, 'Trained run.', required=True)
_SEMANTIC_STEP0 = flags.DEFINE_string('semantic_step0', None, 'Semantic run.')
_SEMANTIC_TRAINED = flags.DEFINE_string('semantic_trained', None, 'Trained.')
_OUT = flags.DEFINE_string('out', None, 'JSON to write.', required=True)
SCHEMES = {'atomic': 'gr:model', 'term_set': 'gr:terms', 'multi': 'gr'}
METRICS = ('Hits@1', 'Hits@10', 'MRR@10')


def _load(run_dir: str) -> dict:
  with open(os.path.join(run_dir, 'results.json')) as f:
    return json.load(f)


def _system(results: dict, system: str) -> dict:
  return {
    qset: {m: round(r[system][m], 4) for m in METRICS}
    for qset, r in results.items()
    if '/' in qset and system in r
  }


def main(argv):
  del argv
  step0, trained = _load(_STEP0.value), _load(_TRAINED.value)
  out = {
    scheme: {
      'step0': _system(step0, system),
      'trained': _system(trained, system),
    }
    for scheme, system in SCHEMES.items()
  }
  out['bm25'] = _system(step0, 'bm25')
  out['dense'] = _system(step0, 'dense')
  out['lexical_weight'] = {
    'step0': step0['lexical_weight']['chosen'],
    'trained': trained['lexical_weight']['chosen'],
  }
  out['runs'] = {'step0': step0['run'], 'trained': trained['run']}
  semantic = {
    phase: _load(path)
    for phase, path in (
      ('step0', _SEMANTIC_STEP0.value),
      ('trained', _SEMANTIC_TRAINED.value),
    )
    if path
  }
  for scheme, system in (('semantic', 'gr:model'), ('semantic_plan', 'gr')):
    if semantic:
      out[scheme] = {p: _system(r, system) for p, r in semantic.items()}
  for phase, results in semantic.items():
    out['lexical_weight'][f'semantic_{phase}'] = results['lexical_weight'][
      'chosen'
    ]
    out['runs'][f'semantic_{phase}'] = results['run']
  atomic_io.write_json(_OUT.value, out, indent=1)
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  app.run(main)
