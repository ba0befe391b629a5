"""The vector each docid token's embedding row starts from, as its docid
scheme says (gr/model/warm_start.py builds the rows from it; gr/serve/
sets the rows of tokens added online with it).

Two rules:

* mean rows (the default: naive, atomic, semantic, text, multi): a
  reserved token's vector is the normalised mean of the vectors of the
  documents whose docids contain it (an atomic token: its document's
  vector; a semantic token: its cluster's centroid). The warm start then
  scales the rows to the other docid rows' norm and gives the tokens that
  end a docid the end direction, so that EOS wins after them.
* exact rows (a scheme class with `exact_rows = True` and a
  `token_vectors(table, tokens)` method: RQ, gr/docids/rq.py): the vectors
  are the rows as they are (codebook vectors, residuals, zero for a
  disambiguating `<qx_j>`), so the rows of a docid sum to its document's
  vector; no scaling and no end direction.
"""

from typing import Collection, Optional

import numpy as np

from gr.docids import base


def _scheme_class(table):
  from gr import docids  # pylint: disable=g-import-not-at-top (package init)

  return docids.SCHEMES.get(table.scheme)


def exact_rows(table) -> bool:
  """Whether `table`'s scheme gives its tokens exact rows (module
  docstring): no normalising, scaling or end direction."""
  return bool(getattr(_scheme_class(table), "exact_rows", False))


def token_vectors(
  table,
  doc_vectors: Optional[np.ndarray],
  tokens: Optional[Collection[str]] = None,
) -> dict[str, np.ndarray]:
  """Reserved token -> its vector [width], by the scheme's rule.

  Args:
    table: a DocidTable (or its surface: scheme, doc_ids, all_docids, and
      reserved_tokens / arrays for exact rows).
    doc_vectors: [num_docs, width], row i table.doc_ids[i]'s (unused by
      exact rows).
    tokens: only these tokens (default: every reserved token a docid of
      `table` uses; for exact rows every reserved token).
  """
  if exact_rows(table):
    return _scheme_class(table).token_vectors(table, tokens)
  position = {doc_id: i for i, doc_id in enumerate(table.doc_ids)}
  members: dict[str, set[int]] = {}
  for docid, doc_id in table.all_docids():
    for token in docid.split():
      if base.is_reserved_token(token) and (tokens is None or token in tokens):
        members.setdefault(token, set()).add(position[doc_id])
  vectors = {}
  for token, docs in members.items():
    mean = np.asarray(doc_vectors)[sorted(docs)].mean(axis=0)
    vectors[token] = mean / max(np.linalg.norm(mean), 1e-12)
  return vectors
