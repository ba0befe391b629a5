"""One process of tests/test_multihost.py: a few steps of the toy task.

  python tests/support/multihost_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID DIR

Logs the train loop's lines (with losses) to stderr and prints one JSON
line: the final step, a checksum of the final params and a checksum of this
process's first input batch.
"""

import json
import sys


def main(
  coordinator: str, num_processes: int, process_id: int, model_dir: str
) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  from gr import partitioning  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.INFO)  # the loss lines go to stderr
  partitioning.initialize_distributed(coordinator, num_processes, process_id)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gr.model import models
  from gr.model import network
  from gr.train import loop as train  # pylint: disable=g-import-not-at-top
  from gr.train import data as data_lib  # pylint: disable=g-import-not-at-top
  from tests.support import toy_tasks  # pylint: disable=g-import-not-at-top

  model = models.EncoderDecoderModel(
    network.T5Config.tiny(
      128,
      emb_dim=32,
      head_dim=8,
      mlp_dim=64,
      num_encoder_layers=1,
      num_decoder_layers=1,
    )
  )
  lengths = dict(input_length=10, target_length=10, batch_size=8, seed=0)
  state = train.train(
    model=model,
    mixture_or_task_name=toy_tasks.TOY_TASK,
    train_steps=4,
    model_dir=model_dir,
    log_every=1,
    checkpoint_every=2,
    **lengths,
  )
  first = next(
    data_lib.task_batches(toy_tasks.TOY_TASK, split='train', **lengths)
  )
  params = jax.device_get(state.params)
  print(
    json.dumps(
      {
        'process_index': jax.process_index(),
        'devices': jax.device_count(),
        'step': int(jax.device_get(state.step)),
        'params_checksum': float(
          sum(np.abs(x).sum() for x in jax.tree.leaves(params))
        ),
        'local_batch_checksum': int(first['encoder_input_tokens'].sum()),
      }
    ),
    flush=True,
  )


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
