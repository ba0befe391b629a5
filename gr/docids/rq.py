"""Residual-quantisation docids (RIPOR / PAG): L codes of K centroids each.

Document bodies are embedded as for semantic docids (unit vectors [n, dim],
the family's encoder or MiniLM; gr/docids/semantic.py), then quantised by
residual k-means (gr/docids/kmeans.py): level 0 clusters the vectors into K
centroids, level l clusters what the levels before it left unexplained
(x - sum of the chosen centroids), so the sum of a document's L centroids
reconstructs its vector, more closely with each level.

Tokens: one namespace per level, `<q{level}_{code}>`, because a token's
embedding row is its level's codebook vector (gr/model/warm_start.py), and
the same code at two levels names two different vectors. Every code of
every level is reserved at assign time (L * K tokens), used or not, so a
new document never needs a new code token. Two documents whose L codes
coincide each get one more, disambiguating token `<qx_{j}>` (j = 0, 1, ...
within the colliding group); it carries no vector (its row starts at zero,
so it adds nothing to a summed dot-product score). A docid is thus
"<q0_12> <q1_3> <q2_250>" (L tokens) or, on a collision, L + 1 tokens.

New documents (`assign_new`: online adds, continual updates) are coded by
the frozen codebooks, nearest centroid level by level, with no training;
a collision with a taken docid (retired ones included) appends the next
free `<qx_j>` for that code tuple (the existing undisambiguated docid
keeping its L tokens, a prefix of the new one; the trie allows that).

With `residual_token=True` every document instead ends in its own token
`<qr_{i}>` (i counts documents in assign order, then new documents on),
whose vector is what the L codes leave of the document's vector (x minus
its reconstruction): the rows of a docid then sum to the document's vector
exactly, so the exact ranking at the warm start is dense retrieval, while
the codes still group documents for the beams (the residual is only seen
at the last step). Docids are unique by construction (no `<qx_j>`); a new
document gets its codes from the frozen codebooks and its residual token
from its own vector, with no training. The service's online adds
(`reuse_retired`) give a new document a deleted document's `<qr_i>` first,
with row i of the residuals (and so the token's embedding row) overwritten,
so deletes free tokens and the vocabulary stops growing.

State kept in `DocidTable.arrays`: codebooks [L, K, dim] float32, and with
residual tokens residuals [documents ever named, dim] float32 (row i is
`<qr_i>`'s vector).
"""

import dataclasses
import re
from typing import Any, ClassVar, Collection, Iterable, Mapping, Sequence

import numpy as np

from gr.data.beir import Document
from gr.docids import base
from gr.docids import kmeans
from gr.docids import semantic

_CODE = re.compile(r"<q(\d+)_(\d+)>")
_EXTRA = re.compile(r"<qx_(\d+)>")
_RESIDUAL = re.compile(r"<qr_(\d+)>")
_NEXT_EXTRA = "rq.next_extra"  # DocidTable.memo key


def code_token(level: int, code: int) -> str:
  return f"<q{level}_{code}>"


def extra_token(j: int) -> str:
  return f"<qx_{j}>"


def residual_token(i: int) -> str:
  return f"<qr_{i}>"


@dataclasses.dataclass(frozen=True)
class RQScheme:
  """Residual-quantisation docids.

  Attributes:
    levels: L, the number of code tokens per docid.
    codebook_size: K, centroids per level.
    seed: k-means seed (level l uses seed + l); same inputs, same docids.
    kmeans_iters: maximum Lloyd iterations per level.
    residual_token: end every docid in its document's own residual token
      (see the module docstring).
    embedder: used when no embeddings are passed; default MiniLM (lazy).
  """

  name: ClassVar[str] = "rq"
  # A token's row is its vector as is (gr/docids/token_rows.py).
  exact_rows: ClassVar[bool] = True
  levels: int = 4
  codebook_size: int = 64
  seed: int = 0
  kmeans_iters: int = 50
  residual_token: bool = False
  embedder: Any = dataclasses.field(
    default=None, compare=False, metadata={"config": False}
  )

  def __post_init__(self):
    if self.levels < 1 or self.codebook_size < 2:
      raise ValueError(
        f"need levels >= 1 and codebook_size >= 2, got levels="
        f"{self.levels}, codebook_size={self.codebook_size}"
      )

  def assign(
    self,
    corpus: Mapping[str, Document],
    *,
    embeddings: np.ndarray | None = None,
  ) -> base.DocidTable:
    """embeddings: optional precomputed [len(corpus), dim], corpus order."""
    x = self._embeddings(corpus, embeddings)
    codebooks, codes = residual_kmeans(
      x, self.levels, self.codebook_size, seed=self.seed,
      iters=self.kmeans_iters,
    )  # fmt: skip
    arrays = {"codebooks": codebooks}
    if self.residual_token:
      tokens = tuple(residual_token(i) for i in range(len(codes)))
      docids = _name_with_residuals(codes, range(len(codes)))
      arrays["residuals"] = x - reconstruct(codebooks, codes)
    else:
      docids, extras = _name(codes, {})
      tokens = tuple(extra_token(j) for j in range(extras))
    return base.DocidTable(
      self.name,
      {d: (docid,) for d, docid in zip(corpus, docids)},
      self._code_tokens() + tokens,
      base.scheme_config(self),
      arrays=arrays,
    )

  def assign_new(
    self,
    table: base.DocidTable,
    new_docs: Mapping[str, Document],
    *,
    embeddings: np.ndarray | None = None,
    reuse_retired: bool = False,
  ) -> base.DocidTable:
    """embeddings: optional precomputed [len(new_docs), dim].

    reuse_retired (residual tokens only): new documents take the retired
    documents' `<qr_i>` first, smallest i first, with row i of the
    residuals overwritten (module docstring).
    """
    base.check_scheme(table, self.name)
    base.check_new_docs(table, new_docs)
    x = self._embeddings(new_docs, embeddings)
    codebooks = codebooks_of(table)
    codes = encode(codebooks, x)
    if self.residual_token:
      free = free_residual_docids(table) if reuse_retired else []
      return _with_residuals(table, new_docs, x, codes, free[: len(new_docs)])
    taken = dict(
      table.memo(_NEXT_EXTRA, lambda: _taken_counts(table.taken_docids()))
    )
    docids, extras = _name(codes, taken)
    new_table = base.extended(
      table, new_docs, docids, tuple(extra_token(j) for j in range(extras))
    )
    return new_table.remember(_NEXT_EXTRA, taken)

  @staticmethod
  def token_vectors(
    table: base.DocidTable, tokens: Collection[str] | None = None
  ) -> dict[str, np.ndarray]:
    """The exact rows of `tokens` (default: all reserved; module-level
    `token_vectors`)."""
    return token_vectors(table, tokens)

  @property
  def reuses_tokens(self) -> bool:
    """Whether assign_new(reuse_retired=True) reuses tokens: each
    document's own `<qr_i>`, with residual tokens."""
    return self.residual_token

  def _code_tokens(self) -> tuple[str, ...]:
    return tuple(
      code_token(level, code)
      for level in range(self.levels)
      for code in range(self.codebook_size)
    )

  def _embeddings(
    self, docs: Mapping[str, Document], embeddings: np.ndarray | None
  ) -> np.ndarray:
    return semantic.document_embeddings(docs, embeddings, self.embedder)


def residual_kmeans(
  x: np.ndarray, levels: int, k: int, *, seed: int = 0, iters: int = 50
) -> tuple[np.ndarray, np.ndarray]:
  """x [n, d] -> (codebooks [levels, k, d], codes [n, levels]).

  Level l runs k-means (seed + l) over the residuals the levels before it
  left. With fewer than k distinct residuals some centroids stay empty
  (kmeans' policy); they are never chosen at assign time but a new
  document may pick one.
  """
  x = np.asarray(x, np.float32)
  residual = x.copy()
  codebooks = np.zeros((levels, k, x.shape[1]), np.float32)
  codes = np.zeros((len(x), levels), np.int64)
  for level in range(levels):
    centroids, assignment = kmeans.kmeans(
      residual, k, seed=seed + level, iters=iters
    )
    codebooks[level], codes[:, level] = centroids, assignment
    residual = residual - centroids[assignment]
  return codebooks, codes


def encode(codebooks: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Codes [n, L] of x [n, d] by frozen codebooks [L, K, d], greedy
  (nearest centroid to the residual, level by level)."""
  residual = np.asarray(x, np.float32).copy()
  codes = np.zeros((len(residual), len(codebooks)), np.int64)
  for level, centroids in enumerate(codebooks):
    distances = (
      np.sum(residual**2, axis=1, keepdims=True)
      - 2 * residual @ centroids.T
      + np.sum(centroids**2, axis=1)[None]
    )  # [n, K]
    codes[:, level] = np.argmin(distances, axis=1)
    residual = residual - centroids[codes[:, level]]
  return codes


def reconstruct(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
  """[n, d]: the sum of each row's chosen centroids."""
  return sum(
    codebooks[level][codes[:, level]] for level in range(len(codebooks))
  )


def codebooks_of(table: base.DocidTable) -> np.ndarray:
  try:
    codebooks = np.asarray(table.arrays["codebooks"], np.float32)
  except KeyError as e:
    raise base.DocidTableError(f"rq docid table lacks array {e}") from e
  if codebooks.ndim != 3:
    raise base.DocidTableError(
      f"rq docid table: codebooks must be [L, K, dim], got {codebooks.shape}"
    )
  return codebooks


def parse(docid: str) -> tuple[tuple[int, ...], int | None] | None:
  """ "<q0_3> <q1_7> <qx_1>" -> ((3, 7), 1); None for another scheme's."""
  codes, extra = [], None
  for level, token in enumerate(docid.split(" ")):
    match = _CODE.fullmatch(token)
    if match is not None and extra is None and int(match.group(1)) == level:
      codes.append(int(match.group(2)))
      continue
    match = _EXTRA.fullmatch(token) or _RESIDUAL.fullmatch(token)
    if match is None or extra is not None or not codes:
      return None
    extra = int(match.group(1))
  return (tuple(codes), extra) if codes else None


def token_vectors(
  table: base.DocidTable, tokens: Collection[str] | None = None
) -> dict[str, np.ndarray]:
  """Reserved token -> its vector [dim]: `<q{l}_{k}>` its codebook vector,
  `<qr_i>` its document's residual, `<qx_j>` zero (the warm start's docid
  rows); of `tokens` only if given."""
  codebooks = codebooks_of(table)
  residuals = table.arrays.get("residuals")
  vectors = {}
  for token in table.reserved_tokens if tokens is None else tokens:
    match = _CODE.fullmatch(token)
    if match is not None:
      vectors[token] = codebooks[int(match.group(1)), int(match.group(2))]
    elif _EXTRA.fullmatch(token):
      vectors[token] = np.zeros(codebooks.shape[2], np.float32)
    elif _RESIDUAL.fullmatch(token) and residuals is not None:
      i = int(_RESIDUAL.fullmatch(token).group(1))
      vectors[token] = np.asarray(residuals[i], np.float32)
  return vectors


def _name_with_residuals(
  codes: np.ndarray, numbers: Sequence[int]
) -> list[str]:
  """Docids "codes <qr_i>" for codes [n, L] and residual numbers i [n]."""
  return [
    " ".join(code_token(level, int(c)) for level, c in enumerate(row))
    + " "
    + residual_token(i)
    for row, i in zip(codes, numbers)
  ]


def residual_number(docid: str) -> int:
  """The i of a residual docid's last token `<qr_i>`."""
  return int(_RESIDUAL.fullmatch(docid.split(" ")[-1]).group(1))


def free_residual_docids(table: base.DocidTable) -> list[str]:
  """Retired residual docids, smallest `<qr_i>` first: O(retired)."""
  return sorted(table.retired_docids, key=residual_number)


def _with_residuals(
  table: base.DocidTable,
  new_docs: Mapping[str, Document],
  x: np.ndarray,
  codes: np.ndarray,
  free: Sequence[str],
) -> base.DocidTable:
  """`table` with new documents named "codes <qr_i>": the i of the `free`
  (retired) docids first, then new ones; residuals row i set to what the
  codes leave of the document's vector x [n, dim]."""
  old = np.asarray(table.arrays["residuals"], np.float32)
  fresh = len(new_docs) - len(free)
  numbers = [residual_number(d) for d in free] + list(
    range(len(old), len(old) + fresh)
  )
  residuals = np.concatenate([old, np.zeros((fresh, old.shape[1]), np.float32)])
  residuals[numbers] = x - reconstruct(codebooks_of(table), codes)
  return base.extended(
    table,
    new_docs,
    _name_with_residuals(codes, numbers),
    [residual_token(i) for i in numbers[len(free) :]],
    arrays={"codebooks": codebooks_of(table), "residuals": residuals},
    reused=free,
  )


def _taken_counts(docids: Iterable[str]) -> dict[tuple[int, ...], int]:
  """Code tuple -> how many taken docids carry it (retired included)."""
  counts: dict[tuple[int, ...], int] = {}
  for docid in docids:
    parsed = parse(docid)
    if parsed is not None:
      codes, extra = parsed
      counts[codes] = max(counts.get(codes, 0) + 1, (extra or 0) + 1)
  return counts


def _name(
  codes: np.ndarray, taken: dict[tuple[int, ...], int]
) -> tuple[list[str], int]:
  """Docid strings for codes [n, L], and how many `<qx_j>` tokens they use.

  `taken` (code tuple -> docids already carrying it) is updated in place.
  Within `codes`, a tuple held by several rows (or already taken) gives
  each row `<qx_j>`, j counting on from the taken ones.
  """
  rows = [tuple(int(c) for c in row) for row in codes]
  fresh: dict[tuple[int, ...], int] = {}
  for row in rows:
    fresh[row] = fresh.get(row, 0) + 1
  docids, extras = [], 0
  for row in rows:
    prefix = " ".join(code_token(level, c) for level, c in enumerate(row))
    if fresh[row] == 1 and row not in taken:
      docids.append(prefix)
      taken[row] = 1
      continue
    j = taken.get(row, 0) if row in taken else 0
    docids.append(f"{prefix} {extra_token(j)}")
    taken[row] = j + 1
    extras = max(extras, j + 1)
  return docids, extras


def reconstruction_error(
  codebooks: np.ndarray, codes: np.ndarray, x: np.ndarray
) -> float:
  """Mean squared distance between x [n, d] and its reconstruction."""
  return float(np.mean(np.sum((x - reconstruct(codebooks, codes)) ** 2, 1)))


def level_codes(docids: Sequence[str]) -> np.ndarray:
  """[n, L] codes of RQ docid strings (the disambiguating token dropped)."""
  return np.array([parse(d)[0] for d in docids], np.int64)
