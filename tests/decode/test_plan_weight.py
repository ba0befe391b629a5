"""The plan's chosen weight as a run file (gr/decode/plan.py)."""

import json
import os

import pytest

from gr.decode import plan as plan_lib


@pytest.mark.parametrize("chosen", [0.0, 2.0, float("inf")])
def test_weight_round_trips(tmp_path, chosen):
  selection = {"split": "dev", "chosen": chosen, "MRR@10": {0.0: 0.5, 2.0: 0.6}}
  plan_lib.save_weight(str(tmp_path), selection)
  assert plan_lib.load_weight(str(tmp_path)) == chosen
  record = json.loads((tmp_path / plan_lib.WEIGHT_FILE).read_text())
  assert record["split"] == "dev" and record["MRR@10"]["2.0"] == 0.6


def test_no_file_is_no_plan(tmp_path):
  assert plan_lib.load_weight(str(tmp_path)) is None


@pytest.mark.parametrize(
  "text, field",
  [
    ("{", "not JSON"),
    ('{"format": "other", "weight": 1}', "not a gr.lexical_weight"),
    ('{"format": "gr.lexical_weight.v1", "weight": "x"}', "'weight'"),
    ('{"format": "gr.lexical_weight.v1", "weight": -1}', ">= 0"),
    ('{"format": "gr.lexical_weight.v1", "weight": true}', "'weight'"),
  ],
)
def test_bad_file_names_itself(tmp_path, text, field):
  path = tmp_path / plan_lib.WEIGHT_FILE
  path.write_text(text)
  with pytest.raises(ValueError, match=field) as error:
    plan_lib.load_weight(str(tmp_path))
  assert os.fspath(path) in str(error.value)


def test_step_round_trips_and_is_optional(tmp_path):
  selection = {"split": "dev", "chosen": 1.0, "MRR@10": {1.0: 0.5}}
  plan_lib.save_weight(str(tmp_path), selection)
  assert plan_lib.load_step(str(tmp_path)) is None
  plan_lib.save_weight(str(tmp_path), selection, step=200)
  assert plan_lib.load_step(str(tmp_path)) == 200
  (tmp_path / plan_lib.WEIGHT_FILE).write_text(
    '{"format": "gr.lexical_weight.v1", "weight": 1, "step": -3}'
  )
  with pytest.raises(ValueError, match="'step'"):
    plan_lib.load_step(str(tmp_path))
