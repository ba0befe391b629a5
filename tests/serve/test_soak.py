"""The kill-and-verify soak (scripts/soak_service.py, issue 22 item 8), in
a small setting: a real server on 127.0.0.1 over a tiny run (atomic docids,
2 embedding rows to spare, so the rows grow during the soak and again at
each restart), 3 clients, 2 SIGKILLs at random points, the ledger checked
after each restart."""

import importlib.util
import os

from tests.serve import test_serving as run_helpers

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def soak_module():
  spec = importlib.util.spec_from_file_location(
    "soak_service", os.path.join(REPO, "scripts", "soak_service.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_soak_kills_lose_nothing_and_apply_nothing_by_half(tmp_path):
  model_dir = run_helpers.make_run(
    tmp_path / "run", scheme="atomic", num_docs=8, extra_vocab_rows=2
  )
  result = soak_module().soak(
    model_dir,
    kills=2,
    clients=3,
    ops_per_round=36,
    idle_searches=5,
    rss_adds=12,
    capacity_adds=20,
    capacity_batch=8,
    seed=0,
    buckets="1,4",
    timeout_s=400,  # a bound against hangs; ~1-2 min on a quiet machine
    start_timeout_s=180,
    work_dir=str(tmp_path / "soak"),
  )
  assert result["kills"] == 2
  assert result["acknowledged_lost"] == 0
  assert result["half_applied"] == 0
  assert result["errors_5xx"] == 0
  assert result["ops"] >= 36  # the last round runs whole
  assert result["online_documents_at_end"] > 0
  assert all(r["documents"] == r["expected"] for r in result["rounds"])
  assert result["rss_mb_after_1000"] > 0
  assert result["capacity_adds"] == 20  # past the 2 spare rows, no retrain
  assert 0 <= result["capacity_found_at_rank1"] <= 20
  assert result["online_adds_without_retrain"] >= 12 + 20
