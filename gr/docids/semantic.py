"""Semantic docids (DSI / NCI): paths in a hierarchical k-means tree.

Document bodies are embedded (gr/model/embed.py, or precomputed embeddings
[n, dim] passed in), clustered recursively with branching factor k until a
cluster holds at most c documents (gr/docids/kmeans.py), and each document is named
by its cluster path plus its position in the leaf: "<3> <1> <7>". Tokens are
shared across levels (token_style="shared": `<i>`), position-aware as in
NCI (token_style="position": `<c{level}_{i}>`, level 0 = root), or one per
tree node (token_style="node": `<n3>`, `<n3_1>`, `<n3_1_7>`, the path so
far), so that each token stands for one cluster (the last for one document)
and its embedding can start as that cluster's centroid (gr/model/warm_start.py).
Paths have variable length (deeper where the corpus is dense).

State kept in `DocidTable.arrays` (CSR layout over internal nodes):
  node_paths [M] str          internal node paths ("" root, "3", "3 1", ...)
  node_offsets [M + 1] int    children of node m are rows offsets[m]:offsets[m+1]
  centroids [sum children, dim]  one centroid per child of each internal node

`assign_new` routes a new document from the root to the nearest child at each
internal node until it reaches a leaf, and gives it the leaf's next free
position: 1 + the largest position ever used in that leaf (retired docids
included). Leaves may thus grow past c; positions >= c get new reserved
tokens, appended to `reserved_tokens`. The tree itself is never re-clustered.
With node tokens and `reuse_retired=True` (the service's online adds, as
atomic's), a leaf's retired positions are handed out first, so add/delete
cycles do not create tokens; shared and position tokens are shared across
leaves (a retired path's tokens are not its document's own), so they are
never reused.
"""

import dataclasses
import re
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from gr.docids import kmeans
from gr.data.beir import Document
from gr.docids import base

_SHARED = re.compile(r"<(\d+)>")
_POSITION = re.compile(r"<c(\d+)_(\d+)>")
_NODE = re.compile(r"<n(\d+(?:_\d+)*)>")
_NEXT_POSITIONS = "semantic.next_positions"  # DocidTable.memo key
TOKEN_STYLES = ("shared", "position", "node")


@dataclasses.dataclass(frozen=True)
class SemanticScheme:
  """Hierarchical k-means docids.

  Attributes:
    k: branching factor of internal nodes.
    c: maximum leaf size (documents per leaf at assign time).
    token_style: "shared" (`<i>`), "position" (`<c{level}_{i}>`) or
      "node" (`<n{path so far, _-joined}>`).
    seed: k-means seed; same corpus, embeddings and seed -> same docids.
    kmeans_iters: maximum Lloyd iterations per node.
    embedder: used when no embeddings are passed; default MiniLM (lazy).
  """

  name: ClassVar[str] = "semantic"
  k: int = 10
  c: int = 10
  token_style: str = "shared"
  seed: int = 0
  kmeans_iters: int = 50
  embedder: Any = dataclasses.field(
    default=None, compare=False, metadata={"config": False}
  )

  def __post_init__(self):
    if self.token_style not in TOKEN_STYLES:
      raise ValueError(
        f"token_style must be one of {TOKEN_STYLES}, got {self.token_style!r}"
      )
    if self.k < 2 or self.c < 1:
      raise ValueError(f"need k >= 2 and c >= 1, got k={self.k}, c={self.c}")

  def assign(
    self,
    corpus: Mapping[str, Document],
    *,
    embeddings: np.ndarray | None = None,
  ) -> base.DocidTable:
    """embeddings: optional precomputed [len(corpus), dim], corpus order."""
    x = self._embeddings(corpus, embeddings)
    tree = kmeans.hierarchical_kmeans(
      x, self.k, self.c, seed=self.seed, iters=self.kmeans_iters
    )
    docids = {d: (self.path_to_docid(p),) for d, p in zip(corpus, tree.paths)}
    return base.DocidTable(
      self.name,
      docids,
      self._tokens_of(tree.paths),
      base.scheme_config(self),
      arrays=_tree_to_arrays(tree.centroids, x.shape[1]),
    )

  @property
  def reuses_tokens(self) -> bool:
    """Whether `assign_new(reuse_retired=True)` can hand out deleted
    documents' own tokens: with node tokens, a docid's last token is its
    document's own (`<n3_1_7>`); shared and position tokens are shared
    across leaves (module docstring)."""
    return self.token_style == "node"

  def assign_new(
    self,
    table: base.DocidTable,
    new_docs: Mapping[str, Document],
    *,
    embeddings: np.ndarray | None = None,
    reuse_retired: bool = False,
  ) -> base.DocidTable:
    """embeddings: optional precomputed [len(new_docs), dim].

    reuse_retired (node tokens only, as atomic's: the service's online
    adds, which give the reused token the new document's row): a document
    routed to a leaf first takes the smallest position a retired docid held
    in that leaf, then the leaf's next free position.
    """
    base.check_scheme(table, self.name)
    base.check_new_docs(table, new_docs)
    if reuse_retired and not self.reuses_tokens:
      raise ValueError(
        f"semantic token_style {self.token_style!r} cannot reuse retired "
        "docids: their tokens are shared across leaves"
      )
    x = self._embeddings(new_docs, embeddings)
    nodes = _arrays_to_tree(table.arrays)
    next_position = dict(
      table.memo(
        _NEXT_POSITIONS, lambda: self._next_positions(table.taken_docids())
      )
    )
    free = self._free_positions(table) if reuse_retired else {}
    paths, reused = [], []
    for row in x:
      leaf = route_to_leaf(nodes, row)
      if free.get(leaf):
        paths.append(leaf + (free[leaf].pop(0),))
        reused.append(self.path_to_docid(paths[-1]))
        continue
      paths.append(leaf + (next_position.get(leaf, 0),))
      next_position[leaf] = paths[-1][-1] + 1
    new_table = base.extended(
      table,
      new_docs,
      map(self.path_to_docid, paths),
      self._tokens_of(paths),
      reused=reused,
    )
    return new_table.remember(_NEXT_POSITIONS, next_position)

  def _free_positions(
    self, table: base.DocidTable
  ) -> dict[tuple[int, ...], list[int]]:
    """Leaf path -> positions of its retired docids, smallest first
    (O(retired)): the free list, a function of the table alone, so a
    restart that replays the same updates gets the same."""
    free: dict[tuple[int, ...], list[int]] = {}
    for docid in table.retired_docids:
      path = self.docid_to_path(docid)
      if path is not None:
        free.setdefault(path[:-1], []).append(path[-1])
    return {leaf: sorted(positions) for leaf, positions in free.items()}

  def path_to_docid(self, path: Sequence[int]) -> str:
    """(3, 1, 7) -> "<3> <1> <7>", "<c0_3> <c1_1> <c2_7>" or
    "<n3> <n3_1> <n3_1_7>"."""
    return " ".join(
      self._token(tuple(path[: level + 1])) for level in range(len(path))
    )

  def docid_to_path(self, docid: str) -> tuple[int, ...] | None:
    """Inverse of path_to_docid; None for strings of another scheme."""
    path: tuple[int, ...] = ()
    for token in docid.split(" "):
      step = self._parse(token, path)
      if step is None:
        return None
      path += (step,)
    return path

  def _parse(self, token: str, path: tuple[int, ...]) -> int | None:
    """The child index a token names after `path`, or None."""
    if self.token_style == "shared":
      match = _SHARED.fullmatch(token)
      return None if match is None else int(match.group(1))
    if self.token_style == "position":
      match = _POSITION.fullmatch(token)
      if match is None or int(match.group(1)) != len(path):
        return None
      return int(match.group(2))
    match = _NODE.fullmatch(token)
    if match is None:
      return None
    full = tuple(int(i) for i in match.group(1).split("_"))
    return full[-1] if full[:-1] == path else None

  def _token(self, prefix: tuple[int, ...]) -> str:
    """The token for the last step of `prefix` (a path from the root)."""
    if self.token_style == "shared":
      return f"<{prefix[-1]}>"
    if self.token_style == "position":
      return f"<c{len(prefix) - 1}_{prefix[-1]}>"
    return "<n" + "_".join(map(str, prefix)) + ">"

  def _tokens_of(self, paths: Iterable[tuple[int, ...]]) -> tuple[str, ...]:
    """Every token the paths use, in a fixed order (by level, then index)."""
    used = {
      self._token_key(path[: level + 1])
      for path in paths
      for level in range(len(path))
    }
    return tuple(self._token(prefix) for _, prefix in sorted(used))

  def _token_key(self, prefix: tuple[int, ...]):
    """Tokens that coincide get one key; keys sort shared/position tokens
    by (level, index) and node tokens by (depth, path)."""
    if self.token_style == "shared":
      return (0, 0, prefix[-1]), (prefix[-1],)
    if self.token_style == "position":
      return (len(prefix), prefix[-1]), (0,) * (len(prefix) - 1) + prefix[-1:]
    return (len(prefix), prefix), prefix

  def _next_positions(
    self, docids: Iterable[str]
  ) -> dict[tuple[int, ...], int]:
    """Leaf path -> 1 + largest position used in it."""
    result: dict[tuple[int, ...], int] = {}
    for docid in docids:
      path = self.docid_to_path(docid)
      if path is not None:
        leaf = path[:-1]
        result[leaf] = max(result.get(leaf, 0), path[-1] + 1)
    return result

  def _embeddings(
    self, docs: Mapping[str, Document], embeddings: np.ndarray | None
  ) -> np.ndarray:
    return document_embeddings(docs, embeddings, self.embedder)


def document_embeddings(
  docs: Mapping[str, Document], embeddings: np.ndarray | None, embedder=None
) -> np.ndarray:
  """[len(docs), dim] float32: `embeddings` checked, or the documents'
  texts embedded by `embedder` (default: MiniLM, loaded lazily). Shared by
  the schemes that quantise document embeddings (semantic, rq)."""
  if embeddings is None:
    if embedder is None:
      from gr.model import embed  # Lazy: loading MiniLM costs seconds.

      embedder = embed.Embedder.load()
    embeddings = embedder.embed([doc.text for doc in docs.values()])
  embeddings = np.asarray(embeddings, np.float32)
  if embeddings.ndim != 2 or embeddings.shape[0] != len(docs):
    raise ValueError(
      f"embeddings must be [{len(docs)}, dim] (one row per "
      f"document), got {embeddings.shape}"
    )
  return embeddings


def route_to_leaf(
  nodes: Mapping[tuple[int, ...], np.ndarray], x: np.ndarray
) -> tuple[int, ...]:
  """Descends from the root to the nearest child until a leaf; x [dim]."""
  path: tuple[int, ...] = ()
  while path in nodes:
    distances = np.sum((nodes[path] - x[None, :]) ** 2, axis=1)  # [children]
    path += (int(np.argmin(distances)),)
  return path


def _tree_to_arrays(
  centroids: Mapping[tuple[int, ...], np.ndarray], dim: int
) -> dict[str, np.ndarray]:
  paths = sorted(centroids)
  sizes = [len(centroids[p]) for p in paths]
  stacked = (
    np.concatenate([centroids[p] for p in paths])
    if paths
    else np.zeros((0, dim), np.float32)
  )
  return {
    "node_paths": base.string_array(" ".join(map(str, p)) for p in paths),
    "node_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
    "centroids": stacked.astype(np.float32),
  }


def _arrays_to_tree(
  arrays: Mapping[str, np.ndarray],
) -> dict[tuple[int, ...], np.ndarray]:
  """Internal node path -> centroids of its children [children, dim]."""
  try:
    paths, offsets = arrays["node_paths"].tolist(), arrays["node_offsets"]
    centroids = arrays["centroids"]
  except KeyError as e:
    raise base.DocidTableError(f"semantic docid table lacks array {e}") from e
  if len(offsets) != len(paths) + 1 or offsets[-1] != len(centroids):
    raise base.DocidTableError(
      "semantic docid table: node_offsets do not match node_paths / centroids"
    )
  return {
    tuple(int(i) for i in p.split()): centroids[offsets[m] : offsets[m + 1]]
    for m, p in enumerate(paths)
  }
