"""A vocabulary's JSON record, and the checks of docid tokens.

`Vocabulary.save` (gr/index/vocab.py) writes one JSON record next to the
sentencepiece model: format, format_version, the model's path relative to
the record and its sha256, the T5 extra ids and the docid tokens (in id
order). `read_vocab_json` parses and checks one; errors name the file and
the field. Docid tokens are non-empty strings without whitespace, each once
(`validated_docid_tokens`); a word shaped `<...>` looks reserved.
"""

import json
import re
from typing import Sequence

FORMAT = "gr.vocab"
FORMAT_VERSION = 1
# A word that looks like a reserved docid token: `<...>` with no spaces.
RESERVED_LOOKING = re.compile(r"^<[^<>\s]+>$")


def validated_docid_tokens(tokens: Sequence[str]) -> tuple[str, ...]:
  """Returns `tokens` as a tuple; raises on empty, spaced or repeated ones."""
  tokens = tuple(tokens)
  seen = set()
  for position, token in enumerate(tokens):
    if (
      not isinstance(token, str)
      or not token
      or token != token.strip()
      or (len(token.split()) != 1)
    ):
      raise ValueError(
        f"docid token at position {position} must be a non-empty string "
        f"without whitespace, got {token!r}"
      )
    if token in seen:
      raise ValueError(
        f"docid token {token!r} appears twice "
        f"(second time at position {position})"
      )
    seen.add(token)
  return tokens


def read_vocab_json(path: str) -> dict:
  """Parses and checks a vocabulary JSON file; errors name file and field."""
  try:
    with open(path, "rb") as f:
      record = json.loads(f.read().decode("utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    raise ValueError(f"{path}: field 'format' must be {FORMAT!r}")
  if record.get("format_version") != FORMAT_VERSION:
    raise ValueError(
      f"{path}: field 'format_version' must be "
      f"{FORMAT_VERSION}, got {record.get('format_version')!r}"
    )
  expected_types = {
    "sp_model": str,
    "sp_model_sha256": str,
    "extra_ids": int,
    "docid_tokens": list,
  }
  for field, kind in expected_types.items():
    if not isinstance(record.get(field), kind):
      raise ValueError(
        f"{path}: field {field!r} must be a {kind.__name__}, "
        f"got {record.get(field)!r}"
      )
  return record
