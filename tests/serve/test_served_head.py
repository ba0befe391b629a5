"""The service loads the run's term-weight head (term_weight_head.npz,
gr/model/lexical.py) into its lexical plan: served results equal
retrieval.Searcher's with the same head, online adds are found with it,
and a bad file is an error naming it."""

import math
import os

import jax
import jax.numpy as jnp
import pytest

from gr.data import beir
from gr.docids import term_sets as term_sets_lib
from gr.index import artifact as index_lib
from gr.model import lexical as lexical_lib
from gr.serve import retriever as serving
from gr.serve.serving_config import RunLoadError

from tests.serve.test_served_plan import CONFIG
from tests.serve.test_served_plan import INPUT_LENGTH
from tests.serve.test_served_plan import NEW
from tests.serve.test_served_plan import QUERIES
from tests.serve.test_served_plan import assert_same
from tests.serve.test_served_plan import copy_run
from tests.serve.test_served_plan import ranking
from tests.serve.test_served_plan import runs  # noqa: F401 (a fixture)
from tests.serve.test_served_plan import serve
from tests.support import served_runs


def _with_head(run: str, expanded: bool = False) -> lexical_lib.TermWeightHead:
  """Saves a non-trivial head beside the run's model_config.json (with
  an open `Expansion` of random pieces where `expanded`)."""
  r = serve(run)
  width = r.model.encode(r.params, jnp.ones((1, 2), jnp.int32)).shape[-1]
  pieces = r.index.vocab.base_size
  r.close()
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  expansion = None
  if expanded:
    expansion = lexical_lib.Expansion.start(
      jax.random.normal(keys[1], (pieces, width)), width=4
    ).replace(
      projection=jax.random.normal(keys[2], (width, width)) / width**0.5,
      gate=jnp.asarray(0.5, jnp.float32),
    )
  head = lexical_lib.TermWeightHead(
    jax.random.normal(keys[0], (width,)) * 0.5,
    jnp.asarray(0.3, jnp.float32),
    expansion,
  )
  lexical_lib.save_head(run, head)
  return head


@pytest.mark.parametrize(
  "weight, expanded", [(2.0, False), (math.inf, False), (2.0, True)]
)
def test_the_served_plan_weighs_query_tokens_with_the_runs_head(
  runs,  # noqa: F811
  tmp_path,
  weight,
  expanded,
):
  run = copy_run(runs["plan"], tmp_path / "run")
  head = _with_head(run, expanded)
  r = serve(run, lexical_weight=None if weight == 2.0 else weight)
  try:
    sets = term_sets_lib.TermSets.load(
      index_lib.current_version_dir(os.path.join(run, "index"))
    )
    with_head = served_runs.searcher_of(
      r,
      CONFIG,
      INPUT_LENGTH,
      term_sets=sets,
      lexical_weight=weight,
      term_weight_head=head,
    )
    without = served_runs.searcher_of(
      r, CONFIG, INPUT_LENGTH, term_sets=sets, lexical_weight=weight
    )
    served = ranking(r, QUERIES)
    assert_same(served, [list(row) for row in with_head.search(QUERIES)])
    plain = [list(row) for row in without.search(QUERIES)]
    assert [s for row in served for _, s in row] != pytest.approx(
      [s for row in plain for _, s in row]
    )
    for doc_id, text in NEW.items():  # an online add is found with it
      r.add_documents([beir.Document(doc_id, "", text)])
      assert ranking(r, [text])[0][0][0] == doc_id
  finally:
    r.close()


def test_a_bad_head_file_names_itself(runs, tmp_path):  # noqa: F811
  run = copy_run(runs["plan"], tmp_path / "run")
  with open(os.path.join(run, lexical_lib.HEAD_FILE), "wb") as f:
    f.write(b"garbage")
  with pytest.raises(RunLoadError, match=lexical_lib.HEAD_FILE):
    serving.Retriever.from_checkpoint(os.path.join(run, "model"), config=CONFIG)
