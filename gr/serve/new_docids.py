"""Naming documents added online (gr/serve/served_index.py's adds).

`DocidNamer.assign` gives new documents docids with the table's own scheme
(`assign_new`; schemes that place documents by their embeddings get the
run's encoder, else MiniLM; schemes that can, atomic and RQ with residual
tokens, reuse deleted documents' own tokens first: `reuse_retired`, so
deletes free vocabulary ids and embedding rows), and `sequences` turns them into the token ids
the trie stores, refused (DocumentConflict) when a docid cannot be
encoded, is longer than the served decode length, or encodes to the tokens
of an existing docid.
"""

from typing import Any, Mapping

from gr import docids as docids_lib
from gr.data import beir
from gr.index import artifact as index_lib
from gr.index import docid_trie
from gr.index import vocab as vocab_lib
from gr.model import family
from gr.model import models
from gr.serve.serving_config import DocumentConflict
from gr.train import indexing


class DocidNamer:
  """The table's scheme, made once (schemes with an embedder share one)."""

  def __init__(self, model: models.EncoderDecoderModel, input_length: int):
    self.model, self.input_length = model, input_length
    self._scheme = None

  def assign(
    self, table: docids_lib.DocidTable, new_docs: Mapping[str, beir.Document]
  ) -> docids_lib.DocidTable:
    scheme = self.scheme(table)
    reuse = (
      {"reuse_retired": True} if getattr(scheme, "reuses_tokens", False) else {}
    )
    try:
      return scheme.assign_new(table, new_docs, **reuse)
    except (ValueError, KeyError) as e:
      raise DocumentConflict(f"cannot assign docids: {e}") from e

  def scheme(self, table: docids_lib.DocidTable):
    """The table's scheme, made once (schemes with an embedder share one)."""
    if self._scheme is None:
      scheme = docids_lib.scheme_for_table(table)
      if indexing.needs_embedder(scheme):
        scheme = docids_lib.scheme_for_table(table, embedder=self._embedder())
      self._scheme = scheme
    return self._scheme

  def _embedder(self):
    """The embedder new documents are placed with: the run's encoder (the
    space its tree was clustered in, indexing.assign_docids), else MiniLM."""
    from gr.model import embed  # pylint: disable=g-import-not-at-top

    encoder_dir = family.family_of(self.model).encoder_dir(self.model)
    if encoder_dir:
      return embed.Embedder.load(encoder_dir, max_length=self.input_length)
    return embed.Embedder.load()

  @staticmethod
  def sequences(
    index: index_lib.Index,
    new_docs: Mapping[str, Any],
    *,
    trie: docid_trie.DocidTrie,
    rows: int,
    limit: int,
  ) -> dict[str, list[list[int]]]:
    """Token ids (+EOS) of each new document's docids, checked to fit
    `limit` tokens and to be new to `trie` (whose tokens are below
    `rows`)."""
    out, seen = {}, set()
    for doc_id in new_docs:
      out[doc_id] = []
      for docid in index.table.docids_of[doc_id]:
        try:
          sequence = index.vocab.encode_docid(docid) + [vocab_lib.EOS_ID]
        except ValueError as e:
          raise DocumentConflict(f"{doc_id!r}: {e}") from e
        if len(sequence) > limit:
          raise DocumentConflict(
            f"{doc_id!r}: docid {docid!r} has {len(sequence)} tokens, more "
            f"than the served decode length {limit}; restart the server"
          )
        if tuple(sequence) in seen or (
          max(sequence) < rows and trie.contains(sequence)
        ):
          raise DocumentConflict(
            f"{doc_id!r}: docid {docid!r} encodes to the "
            "same tokens as an existing docid"
          )
        seen.add(tuple(sequence))
        out[doc_id].append(sequence)
    return out
