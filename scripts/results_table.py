r"""Prints a markdown table from run_experiment results.json files.

  python scripts/results_table.py runs/news_atomic_minilm runs/news_text_minilm ...

One row per (run, query set) with GR, BM25 and dense Hits@1 / Hits@10 /
MRR@10, training wall time and GR queries/s; the subset of queries that are
not verbatim in their document gets its own rows when present.
"""

import json
import os

from gr import entry


def rows(run_dir: str):
  with open(os.path.join(run_dir, 'results.json')) as f:
    results = json.load(f)
  info = results.get('run', {})
  for name, result in results.items():
    if '/' not in name:
      continue
    sets = [(name, result)]
    if 'not_verbatim' in result:
      sets.append(
        (
          f"{name} (not verbatim, {result['not_verbatim']['queries']})",
          result['not_verbatim'],
        )
      )
    for label, r in sets:
      cells = [os.path.basename(run_dir.rstrip('/')), label]
      for system in ('gr', 'bm25', 'dense'):
        m = r.get(system)
        cells.append(
          ' / '.join(f"{m[k]:.3f}" for k in ('Hits@1', 'Hits@10', 'MRR@10'))
          if m
          else ''
        )
      cells += [
        str(info.get('train_seconds', '')),
        f"{result.get('queries_per_sec', 0):.1f}" if r is result else '',
      ]
      yield cells


def main(argv):
  header = [
    'run',
    'query set',
    'GR H@1 / H@10 / MRR@10',
    'BM25',
    'dense',
    'train s',
    'GR q/s',
  ]
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for run_dir in argv[1:]:
    for cells in rows(run_dir):
      print('| ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  entry.run(main)
