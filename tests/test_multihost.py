"""Multi-host training: 2 local processes on loopback, 1 CPU device each.

Each process runs tests/support/multihost_worker.py: jax.distributed.initialize
(gloo collectives), its own shard of the toy task, a few sharded steps and
orbax checkpoints into one shared directory.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(stdout JSON, stderr) of each process, in process order."""
  model_dir = tmp_path_factory.mktemp('multihost') / 'model'
  env = dict(
    os.environ,
    PYTHONPATH=str(REPO),
    XLA_FLAGS='--xla_force_host_platform_device_count=1',
    JAX_PLATFORMS='cpu',
  )
  coordinator = f'127.0.0.1:{_free_port()}'
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        str(REPO / 'tests' / 'support' / 'multihost_worker.py'),
        coordinator,
        str(NUM_PROCESSES),
        str(i),
        str(model_dir),
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(NUM_PROCESSES)
  ]
  outputs = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=400)
      assert proc.returncode == 0, err[-3000:]
      outputs.append((json.loads(out.strip().splitlines()[-1]), err))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return outputs, model_dir


def _losses(log: str) -> list[str]:
  return re.findall(r'step (\d+)/4 .*? loss (\S+)', log)


def test_two_processes_train_in_lockstep(runs):
  """One test (not three) so that pytest-xdist starts the processes once."""
  outputs, model_dir = runs
  results = [result for result, _ in outputs]
  assert [r['process_index'] for r in results] == [0, 1]
  assert all(r['devices'] == NUM_PROCESSES and r['step'] == 4 for r in results)
  # Same global step on both: identical losses and params...
  assert results[0]['params_checksum'] == results[1]['params_checksum']
  losses = [_losses(err) for _, err in outputs]
  assert [step for step, _ in losses[0]] == ['1', '2', '3', '4']
  assert losses[0] == losses[1]
  # ...from different per-process shards of the data.
  assert (
    results[0]['local_batch_checksum'] != results[1]['local_batch_checksum']
  )
  # Both processes wrote one checkpoint, loadable in this process.
  from gr.train import checkpoints  # pylint: disable=g-import-not-at-top

  params = checkpoints.restore_params(model_dir)
  assert sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) == [
    '2',
    '4',
  ]
  assert params['token_embedder']['embedding'].shape == (128, 32)
