"""The service scores with the run's lexical plan (issue 20 item 6):
log-prob + beta * lexical score, beta from the run's lexical_weight.json,
the term sets from the checkpoint, online documents' sets from their text.

A tiny random BERT (real WordPiece vocabulary) warm-started under a
one-layer decoder, atomic docids over 8 documents, English term sets saved
in the index version dir before the checkpoint (as run_experiment does).
Every test serves with one bucket of 4 and max_k 3, a search config no
other test module uses, so compile counts are this module's own.
"""

import dataclasses
import math
import os
import shutil

import numpy as np
import pytest

from gr import docids as docids_lib
from gr.data import beir
from gr.decode import plan as plan_lib
from gr.docids import term_sets as term_sets_lib
from gr.index import artifact as index_lib
from gr.index import lexicon
from gr.index import vocab as vocab_lib
from gr.search import retrieval
from gr.serve import retriever as serving
from gr.serve import served_plan

from tests.support import compiles
from tests.support import served_runs
from tests.support import tiny_bert

INPUT_LENGTH = 16
CONFIG = serving.ServingConfig(max_k=3, buckets=(4,))
OLD = {
  "cat": "the purring cat sat on the windowsill",
  "stocks": "stock markets fell as inflation rose",
  "football": "the striker scored in the cup final",
  "rain": "heavy rain flooded the railway line",
  "piano": "she played a chopin nocturne on the piano",
  "moon": "astronauts brought lunar rocks from the moon",
  "bread": "the baker made sourdough and rye bread",
  "volcano": "the volcano spewed lava and ash",
}
NEW = {
  "glacier": "glacier fjord iceberg",
  "violin": "violinist orchestra symphony",
  "desert": "camel dunes oasis",
}
QUERIES = ["cat on a windowsill", "rain on the railway", "lava", "sourdough"]


def _build(work, *, term_sets: bool) -> str:
  """A run dir like run_experiment's; returns it."""
  bert_dir = os.path.join(os.path.dirname(work), "bert")
  if not os.path.exists(bert_dir):
    tiny_bert.write_tiny_bert(bert_dir)
  corpus = {d: beir.Document(d, d.title(), t) for d, t in OLD.items()}
  table = docids_lib.get_scheme("atomic").assign(corpus)
  index_dir = os.path.join(work, "index")
  index, model, params = served_runs.warm_started(
    bert_dir, corpus, table, index_dir, INPUT_LENGTH
  )
  if term_sets:
    lexicon.saved_term_sets(
      index, corpus, index_dir, language="english", words=True
    )
  served_runs.save_run(
    work,
    model,
    params,
    index_dir,
    step=1,
    input_length=INPUT_LENGTH,
    corpus=corpus,
  )
  plan_lib.save_weight(work, {"split": "dev", "chosen": 2.0, "MRR@10": {}})
  return work


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("plan")
  return {
    "plan": _build(str(root / "plan"), term_sets=True),
    "bare": _build(str(root / "bare"), term_sets=False),
  }


def copy_run(run: str, dest) -> str:
  shutil.copytree(run, dest)
  return str(dest)


def serve(run: str, **kwargs) -> serving.Retriever:
  return serving.Retriever.from_checkpoint(
    os.path.join(run, "model"), config=CONFIG, **kwargs
  )


def ranking(r, queries, k=3):
  return [
    [(h.doc_id, h.score) for h in hits] for hits in r.retrieve(queries, k)
  ]


def assert_same(a, b):
  assert [[d for d, _ in row] for row in a] == [
    [d for d, _ in row] for row in b
  ]
  np.testing.assert_allclose(
    [s for row in a for _, s in row],
    [s for row in b for _, s in row],
    rtol=1e-5,
  )


@pytest.mark.parametrize(
  "weight, score_mode",
  [(2.0, "log_probs"), (math.inf, "log_probs"), (2.0, "logits")],
)
def test_served_plan_equals_the_searcher(runs, tmp_path, weight, score_mode):
  """The run's weight file (2.0) or an override (inf), against
  retrieval.Searcher with the same term sets and weight; and in the
  logits score mode (RQ runs)."""
  run = copy_run(runs["plan"], tmp_path / "run")
  config = dataclasses.replace(CONFIG, score_mode=score_mode)
  r = serving.Retriever.from_checkpoint(
    os.path.join(run, "model"),
    config=config,
    lexical_weight=None if weight == 2.0 else weight,
  )
  try:
    assert r.lexical_weight == weight
    assert r._live.plan is not None  # pylint: disable=protected-access
    sets = term_sets_lib.TermSets.load(
      index_lib.current_version_dir(os.path.join(run, "index"))
    )
    assert sets.language == "english"
    searcher = served_runs.searcher_of(
      r, config, INPUT_LENGTH, term_sets=sets, lexical_weight=weight
    )
    served = ranking(r, QUERIES)
    assert_same(served, [list(row) for row in searcher.search(QUERIES)])
    assert served[0][0][0] == "cat" and served[2][0][0] == "volcano"
  finally:
    r.close()


def test_the_service_scores_as_the_run_recorded(runs, tmp_path):
  """A run that recorded the sparse output layer (model_config.json's
  scoring) is served with it, the same as a Searcher with it; an explicit
  ServingConfig field overrides the record."""
  from gr.model import model_config  # pylint: disable=g-import-not-at-top

  run = copy_run(runs["plan"], tmp_path / "run")
  saved = model_config.load_model_config(model_config.find_model_config(run))
  assert saved.scoring == {}  # written without one: the defaults
  model_config.save_model_config(
    run,
    saved.model,
    input_length=saved.input_length,
    corpus_path=saved.corpus_path,
    scoring={"sparse_output": True, "score_mode": "log_probs"},
  )
  sets = term_sets_lib.TermSets.load(
    index_lib.current_version_dir(os.path.join(run, "index"))
  )
  served = {}
  for override in (None, False):
    config = dataclasses.replace(CONFIG, sparse_output=override)
    r = serving.Retriever.from_checkpoint(
      os.path.join(run, "model"), config=config
    )
    try:
      assert r.config.sparse_output is (override is None)
      searcher = served_runs.searcher_of(
        r, r.config, INPUT_LENGTH, term_sets=sets, lexical_weight=2.0
      )
      served[override] = ranking(r, QUERIES)
      assert_same(served[override], [list(r) for r in searcher.search(QUERIES)])
    finally:
      r.close()
  assert not np.allclose(  # the two scorings differ
    [s for row in served[None] for _, s in row],
    [s for row in served[False] for _, s in row],
    atol=1e-3,
  )


def test_a_bad_scoring_record_names_the_file(runs, tmp_path):
  import json  # pylint: disable=g-import-not-at-top

  run = copy_run(runs["plan"], tmp_path / "run")
  path = os.path.join(run, "model_config.json")
  with open(path) as f:
    record = json.load(f)
  record["scoring"] = {"sparse_output": "yes"}
  with open(path, "w") as f:
    json.dump(record, f)
  with pytest.raises(serving.RunLoadError, match="model_config.json"):
    serve(run)


def test_weight_zero_is_the_model_alone(runs, tmp_path):
  run = copy_run(runs["plan"], tmp_path / "run")
  r = serve(run, lexical_weight=0.0)
  try:
    assert r._live.plan is None  # pylint: disable=protected-access
    searcher = served_runs.searcher_of(r, CONFIG, INPUT_LENGTH)
    assert_same(ranking(r, QUERIES), searcher.search(QUERIES))
  finally:
    r.close()


@pytest.mark.parametrize("weight", [2.0, math.inf])
def test_online_adds_found_deletes_gone_and_a_restart(runs, tmp_path, weight):
  run = copy_run(runs["plan"], tmp_path / "run")
  new = {d: beir.Document(d, "", t) for d, t in NEW.items()}
  r = serve(run, lexical_weight=weight)
  try:
    r.add_documents(list(new.values())[:2])
    r.add_documents(list(new.values())[2:])
    for doc_id, doc in new.items():
      hits = r.retrieve([doc.text], 3)[0]
      assert hits[0].doc_id == doc_id, (doc_id, hits)
    slots = [r._slot_of[d] for d in ("violin", "cat")]  # pylint: disable=protected-access
    r.delete_document("violin")
    r.delete_document("cat")  # a trained one
    queries = [NEW["violin"], "violinist", OLD["cat"], *QUERIES]
    for hits in r.retrieve(queries, 3):
      assert not {"violin", "cat"} & {h.doc_id for h in hits}
    tokens = vocab_lib.encode_texts(r.index.vocab, queries, INPUT_LENGTH)
    lexical = np.asarray(r._live.plan.document_scores(tokens))  # pylint: disable=protected-access
    assert lexical[0, slots[0]] == 0 and lexical[2, slots[1]] == 0
    before = ranking(r, queries + [NEW["glacier"], NEW["desert"]])
    if weight == 2.0:  # the Searcher over the edited index, sets rebuilt
      assert_same(
        before,
        searcher_over(r, run, weight).search(
          queries + [NEW["glacier"], NEW["desert"]]
        ),
      )
  finally:
    r.close()
  again = serve(run, lexical_weight=weight)
  try:
    assert_same(
      ranking(again, queries + [NEW["glacier"], NEW["desert"]]), before
    )
    again.add_documents([new["violin"]])  # re-added after its delete
    assert again.retrieve([NEW["violin"]], 1)[0][0].doc_id == "violin"
  finally:
    again.close()


def searcher_over(r, run: str, weight: float) -> retrieval.Searcher:
  """A Searcher over `r`'s current index whose term sets are the
  checkpoint's rows and, for documents added online, TermSets.appended
  over their bodies (folded as build_term_sets folded them)."""
  trained = serving.load_checkpoint(os.path.join(run, "model"))[2]
  sets = term_sets_lib.TermSets.load(
    index_lib.current_version_dir(os.path.join(run, "index"))
  )
  rows = dict(zip(trained.doc_ids, sets.rows()))
  folding = lexicon.folding(r.index.vocab, sets)
  terms = folding.text_terms(r.index.vocab, list(NEW.values()))
  rows.update(zip(NEW, sets.appended(terms).rows()[len(sets) :]))
  current = sets.with_rows([rows[d] for d in r.index.doc_ids])
  return served_runs.searcher_of(
    r, CONFIG, INPUT_LENGTH, term_sets=current, lexical_weight=weight
  )


def test_a_compaction_keeps_the_served_term_sets(runs, tmp_path, monkeypatch):
  """Every update compacts: the new version dir gets the checkpoint's sets
  (the ones served), and a restart serves the same."""
  monkeypatch.setattr(index_lib, "compact_after", lambda num_docs: 0)
  run = copy_run(runs["plan"], tmp_path / "run")
  index_dir = os.path.join(run, "index")
  first = index_lib.current_version_dir(index_dir)
  sets = term_sets_lib.TermSets.load(first)
  r = serve(run)
  try:
    r.add_documents([beir.Document("glacier", "", NEW["glacier"])])
    r.delete_document("cat")
    assert index_lib.current_version_dir(index_dir) != first
    before = ranking(r, [NEW["glacier"], *QUERIES])
  finally:
    r.close()
  saved = term_sets_lib.TermSets.load(index_lib.current_version_dir(index_dir))
  np.testing.assert_array_equal(saved.terms, sets.terms)
  np.testing.assert_array_equal(saved.impacts, sets.impacts)
  assert saved.language == "english"
  again = serve(run)
  try:
    assert_same(ranking(again, [NEW["glacier"], *QUERIES]), before)
  finally:
    again.close()


def test_a_capacity_growth_compiles_once(runs, tmp_path):
  """Documents of many terms overflow the plan's entries (P): one compile
  of the bucket, capacity doubled, in a fresh search (the old one, with its
  executables for the old shapes, goes with the old state); the next add
  compiles nothing."""
  run = copy_run(runs["plan"], tmp_path / "run")
  r = serve(run)
  try:
    r.warm_up()
    p_cap, s_cap, n_cap, _ = r._plan.capacities  # pylint: disable=protected-access
    words = [w for w in tiny_bert_words(r) if w not in " ".join(OLD.values())]
    long_doc = beir.Document(  # more terms than the delta holds
      "long", "", " ".join(words[: served_plan.delta_capacity(p_cap) + 1])
    )
    old_search = r._live.search  # pylint: disable=protected-access
    r.add_documents([long_doc])
    grown = r._plan.capacities  # pylint: disable=protected-access
    assert grown[:3] == (2 * p_cap, 2 * s_cap, 2 * n_cap)  # all together
    assert r._live.search is not old_search  # pylint: disable=protected-access
    warm_shapes = len(r._buckets) * len(retrieval.input_lengths(r.input_length))  # pylint: disable=protected-access
    assert r.compiled_count() == warm_shapes  # each, once, for the new shapes
    after_growth = r.compiled_count()
    assert r.retrieve([long_doc.text], 1)[0][0].doc_id == "long"
    r.add_documents([beir.Document("small", "", "glacier fjord")])
    assert r._plan.capacities == grown  # pylint: disable=protected-access
    assert r.retrieve(["glacier fjord"], 1)[0][0].doc_id == "small"
    assert r.compiled_count() == after_growth
  finally:
    r.close()


def adds_until(r, texts: dict, grown) -> tuple[dict, list]:
  """Adds `texts` (doc_id -> body) one at a time, each once the growth
  compiled ahead (if any) is ready, until `grown()`; returns the documents
  added and the searches the last add and a search after it compiled
  (small copies and scatters for the new shapes are not counted)."""
  added = {}
  with compiles.counting_compiles() as compiled:
    for doc_id, text in texts.items():
      r.wait_for_updates()
      before = len(compiled)
      r.add_documents([beir.Document(doc_id, "", text)])
      added[doc_id] = text
      if grown():
        r.retrieve([text], 1)
        return added, [f for f in compiled[before:] if "search" in f]
  pytest.fail(f"{len(texts)} adds did not grow it")


def test_the_plan_growth_is_compiled_ahead(runs, tmp_path):
  """Adds of three new words each: once an eighth of the plan's room is
  used, the next growth's capacities are fixed and its search compiled in
  the background; the add that overflows the plan builds it at exactly
  those capacities (P, S and N doubled) and compiles no search. Every
  document is found."""
  r = serve(copy_run(runs["plan"], tmp_path / "run"))
  try:
    r.warm_up()
    words = [w for w in tiny_bert_words(r) if w not in " ".join(OLD.values())]
    start = r._plan.capacities  # pylint: disable=protected-access
    texts = {f"g{i}": " ".join(words[3 * i : 3 * i + 3]) for i in range(40)}
    added, compiled = adds_until(
      r,
      texts,
      lambda: r._plan.capacities != start,  # pylint: disable=protected-access
    )
    assert compiled == []
    assert r._plan.capacities[:3] == tuple(2 * c for c in start[:3])  # pylint: disable=protected-access
    for doc_id, text in added.items():
      assert r.retrieve([text], 1)[0][0].doc_id == doc_id
  finally:
    r.close()


def test_the_trie_growth_is_compiled_ahead(runs, tmp_path):
  """The model alone (no plan): once three quarters of the trie's node
  slots are used, arrays of twice the slots compile in the background, and
  the add that needs a slot past them compiles no search. The grown trie
  ranks as the one a restart builds whole."""
  run = copy_run(runs["bare"], tmp_path / "run")
  r = serve(run, lexical_weight=0.0)
  try:
    r.warm_up()
    words = [w for w in tiny_bert_words(r) if w not in " ".join(OLD.values())]
    start = r._trie.slot_use[1]  # pylint: disable=protected-access
    texts = {f"t{i}": " ".join(words[3 * i : 3 * i + 3]) for i in range(60)}
    added, compiled = adds_until(
      r,
      texts,
      lambda: r._trie.slot_use[1] != start,  # pylint: disable=protected-access
    )
    assert compiled == []
    assert r._trie.slot_use[1] == 2 * start  # pylint: disable=protected-access
    queries = [*list(added.values())[-4:], *QUERIES]
    before = ranking(r, queries)
  finally:
    r.close()
  again = serve(run, lexical_weight=0.0)
  try:
    assert_same(ranking(again, queries), before)
  finally:
    again.close()


def tiny_bert_words(r) -> list[str]:
  """Whole lowercase words of the WordPiece vocabulary, one piece each,
  that English folding keeps as distinct terms."""
  vocab = r.index.vocab
  ids = vocab.text_token_ids()
  classes = lexicon.term_classes(vocab, "english")
  seen, out = set(), []
  for i, piece in zip(ids, vocab.word_pieces(ids)):
    term = classes[i]
    if piece.isalpha() and piece.isascii() and len(piece) > 5 and term:
      if term not in seen:
        seen.add(term)
        out.append(piece)
  return out


def test_a_weight_without_term_sets_or_a_bad_file_names_the_file(
  runs, tmp_path
):
  bare = copy_run(runs["bare"], tmp_path / "bare")
  weight_file = os.path.join(bare, plan_lib.WEIGHT_FILE)
  with pytest.raises(serving.RunLoadError, match="term sets") as error:
    serve(bare)
  assert weight_file in str(error.value)
  with pytest.raises(serving.RunLoadError, match="lexical_weight given"):
    serve(bare, lexical_weight=1.0)
  r = serve(bare, lexical_weight=0.0)  # the model alone still serves
  r.close()
  os.remove(weight_file)
  r = serve(bare)  # no file: no plan
  try:
    assert r._live.plan is None  # pylint: disable=protected-access
  finally:
    r.close()
  with open(weight_file, "w") as f:
    f.write('{"format": "gr.lexical_weight.v1", "weight": -2}')
  with pytest.raises(serving.RunLoadError, match=">= 0") as error:
    serve(bare)
  assert weight_file in str(error.value)


def test_the_step_the_run_chose_is_served(runs, tmp_path):
  """lexical_weight.json's step (early stopping) is the default step; one
  that has no checkpoint is refused, naming the file."""
  run = copy_run(runs["bare"], tmp_path / "run")
  selection = {"split": "dev", "chosen": 0.0, "MRR@10": {}}
  plan_lib.save_weight(run, selection, step=1)
  r = serve(run)
  try:
    assert r.checkpoint_step == 1
  finally:
    r.close()
  plan_lib.save_weight(run, selection, step=7)
  with pytest.raises(serving.RunLoadError, match="step 7") as error:
    serve(run)
  assert os.path.join(run, plan_lib.WEIGHT_FILE) in str(error.value)


def test_add_delete_cycles_keep_the_plan_and_slots(runs, tmp_path):
  """200 adds, each followed by a delete of the one before: the new
  document takes the deleted one's slot, and when the entries' padding runs
  out the plan is built again at the same capacities (the deleted entries
  reclaimed): nothing compiles, every live document is found at rank 1 and
  a restart ranks the same."""
  run = copy_run(runs["plan"], tmp_path / "run")
  r = serve(run)
  try:
    r.warm_up()
    capacities, start = r._plan.capacities, r.compiled_count()  # pylint: disable=protected-access
    words = [w for w in tiny_bert_words(r) if w not in " ".join(OLD.values())]
    previous = None
    for i in range(200):
      text = " ".join(words[(3 * i + j) % len(words)] for j in range(3))
      r.add_documents([beir.Document(f"c{i}", "", text)])
      assert r.retrieve([text], 1)[0][0].doc_id == f"c{i}"
      if previous is not None:
        r.delete_document(previous)
      previous = f"c{i}"
    assert r._plan.capacities == capacities  # pylint: disable=protected-access
    assert r.compiled_count() == start
    assert len(r._live.slots) == len(OLD) + 2  # pylint: disable=protected-access
    queries = [text, *QUERIES]
    before = ranking(r, queries)
    assert before[0][0][0] == "c199"
  finally:
    r.close()
  again = serve(run)
  try:
    assert_same(ranking(again, queries), before)
  finally:
    again.close()
