"""A toy corpus where queries and bodies use different words for the same
concepts, so dense retrieval with an untrained encoder is near chance and
only a mapping learned from training pairs (shared by every document)
retrieves. Concept i is query word QUERY_WORDS[i] and body word
BODY_WORDS[i]; every word is one WordPiece of the MiniLM vocabulary."""

import json
import os

import numpy as np

QUERY_WORDS = (
  "apple river stone cloud tiger piano garden window silver candle "
  "forest engine"
).split()
BODY_WORDS = (
  "doctor bridge yellow summer castle rocket pencil island copper winter "
  "market violin"
).split()
FILLER = "the of and a in to is was for on".split()


def documents(n: int, seed: int = 0) -> list[tuple[str, str]]:
  """n (query, body) pairs: three distinct concepts each, the body with
  filler words between its concept words."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    concepts = rng.choice(len(QUERY_WORDS), 3, replace=False)
    query = " ".join(QUERY_WORDS[c] for c in concepts)
    body = " ".join(
      f"{BODY_WORDS[c]} {FILLER[rng.integers(len(FILLER))]}" for c in concepts
    )
    out.append((query, body))
  return out


def write_beir(folder: str, n: int, splits: dict[str, range], *,
  dev_lexical: bool = False, seed: int = 0) -> str:  # fmt: skip
  """A BEIR folder of `n` such documents; splits {name: document indices}
  get one query per document. dev_lexical: dev queries are the bodies
  themselves (the start ranks each first)."""
  pairs = documents(n, seed)
  os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
  with open(os.path.join(folder, "corpus.jsonl"), "w") as f:
    for i, (_, body) in enumerate(pairs):
      f.write(json.dumps({"_id": f"d{i}", "title": "", "text": body}) + "\n")
  with open(os.path.join(folder, "queries.jsonl"), "w") as f:
    for split, indices in splits.items():
      for i in indices:
        query = pairs[i][0]
        if split == "dev" and dev_lexical:
          query = pairs[i][1]
        f.write(json.dumps({"_id": f"{split}{i}", "text": query}) + "\n")
  for split, indices in splits.items():
    with open(os.path.join(folder, "qrels", f"{split}.tsv"), "w") as f:
      f.write("query-id\tcorpus-id\tscore\n")
      for i in indices:
        f.write(f"{split}{i}\td{i}\t1\n")
  return folder
