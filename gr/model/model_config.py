"""What a run records about its model, so a checkpoint can be loaded alone.

`<run_dir>/model_config.json` holds the model config as trained (a
T5Config, or a BertT5Config for a pretrained-encoder model; vocab_size as
trained), the input length, the corpus path (for titles) and how the run
scored docids (`scoring`: the search's sparse_output and score_mode, so the
service scores as the run was evaluated), under a format tag (the config's
own record: gr/model/configs.py). gr/experiments/run.py's
run_experiment writes it; the service reads it (gr/serve/served_run.py),
looking first in the checkpoint directory, then in its parent, the run
(`find_model_config`).
"""

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

from gr import atomic_io
from gr.model import configs

MODEL_CONFIG_FILE = "model_config.json"
MODEL_CONFIG_FORMAT = "gr.model_config/1"


class ModelConfigError(ValueError):
  """model_config.json is missing or invalid."""


def save_model_config(
  run_dir: str,
  config: configs.ModelConfig,
  *,
  input_length: int,
  corpus_path: Optional[str] = None,
  scoring: Optional[Mapping[str, Any]] = None,
) -> str:
  """Writes <run_dir>/model_config.json atomically; returns its path.

  corpus_path: the run's corpus.jsonl, where the service finds titles.
  scoring: how the run's search scored docids (`SCORING_FIELDS`).
  """
  record = {
    "format": MODEL_CONFIG_FORMAT,
    "input_length": int(input_length),
    **configs.config_record(config),
  }
  if scoring:
    record["scoring"] = checked_scoring(dict(scoring))
  if corpus_path:
    record["corpus"] = os.path.abspath(corpus_path)
  path = os.path.join(run_dir, MODEL_CONFIG_FILE)
  with atomic_io.atomic_open(path) as f:
    json.dump(record, f, indent=1)
  return path


def find_model_config(checkpoint_dir: str) -> str:
  """model_config.json inside `checkpoint_dir` or its parent (the run)."""
  candidates = [
    os.path.join(checkpoint_dir, MODEL_CONFIG_FILE),
    os.path.join(
      os.path.dirname(os.path.abspath(checkpoint_dir)), MODEL_CONFIG_FILE
    ),
  ]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise ModelConfigError(
    f"no {MODEL_CONFIG_FILE} in {candidates[0]} or {candidates[1]}: write "
    "it with gr.model.model_config.save_model_config(run_dir, model.config, "
    "input_length=...)"
  )


# What `scoring` may record, and each field's type.
SCORING_FIELDS = {"sparse_output": bool, "score_mode": str}


def checked_scoring(scoring: dict) -> dict:
  """`scoring` if its fields are SCORING_FIELDS' with their types, else a
  ValueError naming the field."""
  for name, value in scoring.items():
    kind = SCORING_FIELDS.get(name)
    if kind is None or not isinstance(value, kind):
      raise ValueError(f"scoring field {name!r}: {value!r}")
  return scoring


@dataclasses.dataclass(frozen=True)
class SavedModelConfig:
  """What model_config.json records about a run (scoring: {} for runs
  written before it was recorded)."""

  model: configs.ModelConfig
  input_length: int
  corpus_path: Optional[str] = None
  scoring: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def load_model_config(path: str) -> SavedModelConfig:
  """The SavedModelConfig in a model_config.json; errors name the file."""
  try:
    with open(path) as f:
      record = json.load(f)
    if record.get("format") != MODEL_CONFIG_FORMAT:
      raise ValueError(
        f"format {record.get('format')!r}, expected {MODEL_CONFIG_FORMAT!r}"
      )
    return SavedModelConfig(
      configs.config_from_record(record),
      int(record["input_length"]),
      record.get("corpus"),
      checked_scoring(dict(record.get("scoring", {}))),
    )
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ModelConfigError(f"{path}: not a valid model config: {e!r}") from e
