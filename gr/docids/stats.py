"""Statistics of a docid table: sizes, lengths and trie branching per level.

Example:

  print(format_statistics(docid_statistics(table)))
"""

import collections
from typing import Any

import numpy as np

from gr.docids import base


def _summary(values: list[int]) -> dict[str, float]:
  if not values:
    return {"min": 0, "mean": 0.0, "max": 0}
  return {
    "min": int(min(values)),
    "mean": float(np.mean(values)),
    "max": int(max(values)),
  }


def trie_branching(docids: list[str]) -> list[dict[str, float]]:
  """Per level l: trie nodes at depth l and their number of children.

  Level 0 is the root; a node's children are the distinct tokens (words for
  text docids) that follow its prefix. For semantic docids this is the
  cluster tree's branching; the last level counts leaf positions.
  """
  children: dict[int, dict[tuple[str, ...], set[str]]] = (
    collections.defaultdict(lambda: collections.defaultdict(set))
  )
  for docid in docids:
    tokens = tuple(docid.split(" "))
    for level, token in enumerate(tokens):
      children[level][tokens[:level]].add(token)
  return [
    {
      "level": level,
      "nodes": len(nodes),
      **{
        f"{k}_children": v
        for k, v in _summary([len(c) for c in nodes.values()]).items()
      },
    }
    for level, nodes in sorted(children.items())
  ]


def docid_statistics(table: base.DocidTable) -> dict[str, Any]:
  """JSON-serialisable statistics of `table` (lengths in tokens/words)."""
  docids = [s for s, _ in table.all_docids()]
  lengths = [len(s.split(" ")) for s in docids]
  return {
    "scheme": table.scheme,
    "version": table.version,
    "num_docs": table.num_docs,
    "num_docids": len(docids),
    "ids_per_doc": _summary([len(v) for v in table.docids_of.values()]),
    "docid_length": {
      **_summary(lengths),
      "histogram": {
        str(n): c for n, c in sorted(collections.Counter(lengths).items())
      },
    },
    "num_reserved_tokens": len(table.reserved_tokens),
    "num_retired_docids": len(table.retired_docids),
    "branching": trie_branching(docids),
  }


def format_statistics(stats: dict[str, Any]) -> str:
  """Human-readable multi-line rendering of docid_statistics()."""
  ids, length = stats["ids_per_doc"], stats["docid_length"]
  lines = [
    f"scheme {stats['scheme']} (version {stats['version']}): "
    f"{stats['num_docs']} docs, {stats['num_docids']} docids",
    f"ids per doc: min {ids['min']} mean {ids['mean']:.2f} max {ids['max']}",
    f"docid length (tokens/words): min {length['min']} mean "
    f"{length['mean']:.2f} max {length['max']}; histogram {length['histogram']}",
    f"reserved tokens: {stats['num_reserved_tokens']}; retired docids: "
    f"{stats['num_retired_docids']}",
    "trie branching per level:",
  ]
  for b in stats["branching"]:
    lines.append(
      f"  level {b['level']}: {b['nodes']} nodes, children min "
      f"{b['min_children']} mean {b['mean_children']:.2f} max "
      f"{b['max_children']}"
    )
  return "\n".join(lines)
