"""A served run's lexical plan, as it is loaded: the weight (the run's
lexical_weight.json, gr/decode/plan.py, or an override), the checkpoint
step the run chose on dev (recorded in the same file) and the term sets
(gr/docids/term_sets.py) in the served index's current version dir, else
in the checkpoint's index artifact. gr/serve/served_plan.py serves them.
"""

import os
from typing import Optional

from gr.decode import plan as plan_lib
from gr.docids import term_sets as term_sets_lib
from gr.index import artifact as index_lib
from gr.model import lexical as lexical_lib
from gr.model import model_config
from gr.serve.serving_config import RunLoadError


def run_lexical_weight(
  checkpoint_dir: str, override: Optional[float] = None
) -> tuple[float, str]:
  """(the plan's weight, where it came from): `override` if given, else
  the run's lexical_weight.json beside model_config.json (0.0 without one:
  the model alone).

  Raises:
    RunLoadError: the file is not a weight record (naming it), or the
      override is negative or NaN.
  """
  if override is not None:
    if not override >= 0:
      raise RunLoadError(f"lexical_weight must be >= 0, got {override}")
    return float(override), "lexical_weight given"
  run_dir = os.path.dirname(model_config.find_model_config(checkpoint_dir))
  try:
    weight = plan_lib.load_weight(run_dir)
  except (ValueError, OSError) as e:
    raise RunLoadError(str(e)) from e
  path = os.path.join(run_dir, plan_lib.WEIGHT_FILE)
  return (0.0 if weight is None else weight), path


def run_term_weight_head(
  checkpoint_dir: str,
) -> Optional[lexical_lib.TermWeightHead]:
  """The run's trained term-weight head (<run>/term_weight_head.npz beside
  model_config.json, gr/model/lexical.py); None: none saved, so every
  query token weighs 1.

  Raises:
    RunLoadError: naming the file, when it is not such a head.
  """
  run_dir = os.path.dirname(model_config.find_model_config(checkpoint_dir))
  try:
    return lexical_lib.load_head(run_dir)
  except (ValueError, OSError) as e:
    raise RunLoadError(str(e)) from e


def recorded_step(checkpoint_dir: str) -> Optional[int]:
  """The checkpoint step the run chose on dev (early stopping), as its
  lexical_weight.json records it; None: none recorded (serve the latest).

  Raises:
    RunLoadError: naming the file, when it is malformed or its step has no
      checkpoint in `checkpoint_dir` (e.g. 0, the warm start, is not saved).
  """
  try:
    run_dir = os.path.dirname(model_config.find_model_config(checkpoint_dir))
    step = plan_lib.load_step(run_dir)
  except (ValueError, OSError) as e:
    raise RunLoadError(str(e)) from e
  if step is not None and not os.path.isdir(
    os.path.join(checkpoint_dir, str(step))
  ):
    raise RunLoadError(
      f"{os.path.join(run_dir, plan_lib.WEIGHT_FILE)}: the run chose step "
      f"{step}, which {checkpoint_dir} has no checkpoint of; pass the step "
      "to serve (scripts/serve.py --step)"
    )
  return step


def load_term_sets(
  index_dir: str, artifact_dir: str, trained: index_lib.Index
) -> Optional[term_sets_lib.TermSets]:
  """The run's term sets: the served index's current version dir's (the
  run's own index dir, where run_experiment saved the ones it evaluated
  with), else the checkpoint artifact's; None if neither has them.

  Raises:
    RunLoadError: a file is corrupt or its rows are not the trained
      documents'.
  """
  for directory in (index_lib.current_version_dir(index_dir), artifact_dir):
    try:
      sets = term_sets_lib.TermSets.load(directory)
    except (ValueError, OSError, KeyError) as e:
      raise RunLoadError(f"{directory}: bad term sets: {e}") from e
    if sets is None:
      continue
    if len(sets) != len(trained.doc_ids):
      raise RunLoadError(
        f"{os.path.join(directory, term_sets_lib.FILE_NAME)}: term sets of "
        f"{len(sets)} documents, the checkpoint's index has "
        f"{len(trained.doc_ids)}"
      )
    return sets
  return None


def plan_term_sets(
  weight: float,
  weight_source: str,
  index_dir: str,
  artifact_dir: str,
  trained: index_lib.Index,
) -> Optional[term_sets_lib.TermSets]:
  """The term sets a plan of `weight` needs (`load_term_sets`); None for
  weight 0 (the model alone).

  Raises:
    RunLoadError: a weight > 0 without term sets, naming where the weight
      came from (`weight_source`), or bad term sets.
  """
  if not weight > 0:
    return None
  term_sets = load_term_sets(index_dir, artifact_dir, trained)
  if term_sets is None:
    raise RunLoadError(
      f"{weight_source}: lexical weight {weight} needs the run's term sets, "
      f"but neither {index_lib.current_version_dir(index_dir)} nor "
      f"{artifact_dir} has {term_sets_lib.FILE_NAME}; serve the model "
      "alone with lexical_weight 0 (scripts/serve.py --lexical_weight=0)"
    )
  return term_sets
