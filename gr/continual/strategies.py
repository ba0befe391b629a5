"""Continual update strategies and the training settings they share.

A `Strategy` says how an update trains (`STRATEGIES`: the presets by
name; any with `sam_rho` > 0 uses sharpness-aware minimisation):

  trie_only          no training: new docids enter the trie only
  new_only           fine-tune on the new documents (indexing + pseudo-queries)
  experience_replay  + stored old indexing and retrieval examples at
                     `replay_ratio` (mixture rate; the new documents' is 1),
                     or exactly `replay_per_batch` per batch (the budget)
  generative_replay  + fresh pseudo-queries for OLD documents
  generative_replay_sam  the same with SAM
  sam                new_only with SAM
  retrain            from scratch on everything indexed so far (reference)

`TrainSettings` holds what the initial indexing and every update share.
"""

import dataclasses

from gr.train import optimizer as optimizer_lib


@dataclasses.dataclass(frozen=True)
class Strategy:
  """How an update trains.

  Attributes:
    name: label for logs and results.
    trains: False for trie_only (docids enter the trie, params unchanged).
    replay: "none", "experience" (stored old indexing + retrieval examples)
      or "generative" (pseudo-queries for old documents).
    replay_ratio: mixture rate of the replay task; the new documents' is 1.
    retrain: train from scratch on everything (ignores `replay`).
    sam_rho: sharpness-aware minimisation radius (0: plain optimizer). As
      in DSI++, the dynamic-corpus runner also indexes D0 with it.
    replay_per_batch: the replay budget: k > 0 puts exactly k old examples
      in every batch of an update (its batch_size - k are new), instead of
      mixing at `replay_ratio`.
  """

  name: str
  trains: bool = True
  replay: str = "none"
  replay_ratio: float = 1.0
  retrain: bool = False
  sam_rho: float = 0.0
  replay_per_batch: int = 0

  def __post_init__(self):
    if self.replay not in ("none", "experience", "generative"):
      raise ValueError(
        f"Strategy {self.name!r}: replay={self.replay!r}, "
        "expected 'none', 'experience' or 'generative'"
      )
    if self.replay_ratio <= 0 or self.sam_rho < 0 or self.replay_per_batch < 0:
      raise ValueError(
        f"Strategy {self.name!r}: need replay_ratio > 0, "
        "sam_rho >= 0 and replay_per_batch >= 0, got "
        f"{self.replay_ratio}, {self.sam_rho}, "
        f"{self.replay_per_batch}"
      )


STRATEGIES = {
  s.name: s
  for s in (
    Strategy("trie_only", trains=False),
    Strategy("new_only"),
    Strategy("experience_replay", replay="experience"),
    Strategy("generative_replay", replay="generative"),
    Strategy("generative_replay_sam", replay="generative", sam_rho=0.05),
    Strategy("sam", sam_rho=0.05),
    Strategy("retrain", retrain=True),
  )
}


def get_strategy(strategy: "str | Strategy", **overrides) -> Strategy:
  """A preset by name (or a Strategy), with fields replaced by `overrides`."""
  if isinstance(strategy, str):
    if strategy not in STRATEGIES:
      raise ValueError(
        f"unknown strategy {strategy!r}; known: {sorted(STRATEGIES)}"
      )
    strategy = STRATEGIES[strategy]
  overrides = {k: v for k, v in overrides.items() if v is not None}
  return dataclasses.replace(strategy, **overrides)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Training hyper-parameters shared by the initial indexing and updates.

  warm_start, warm_start_temperature: how a pretrained-encoder model's
  initial params are made (gr/model/warm_start.py; ignored for T5); with
  warm_start off, new docid rows are not set from document embeddings
  either (the ablation).
  mesh_data, mesh_model: the ('data', 'model') mesh every update trains
  on, as train()'s (-1: all remaining devices).
  """

  batch_size: int = 32
  input_length: int = 64
  optimizer: optimizer_lib.OptimizerConfig = optimizer_lib.OptimizerConfig()
  seed: int = 0
  log_every: int = 100
  mesh_data: int = -1
  mesh_model: int = 1
  warm_start: bool = True
  warm_start_temperature: float = 0.05
