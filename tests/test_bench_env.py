"""gr.bench_env: the load record every benchmark prints."""

import os

from gr import bench_env


def test_machine_load_warns_above_half_a_load_per_core(monkeypatch, capsys):
  cores = os.cpu_count() or 1
  monkeypatch.setattr(os, 'getloadavg', lambda: (cores * 0.75, 0.0, 0.0))
  record = bench_env.machine_load('before')
  out = capsys.readouterr()
  assert record['busy'] and record['per_core'] == 0.75
  assert 'before' in out.out and 'WARNING' in out.err


def test_machine_load_quiet_machine_has_no_warning(monkeypatch, capsys):
  cores = os.cpu_count() or 1
  monkeypatch.setattr(os, 'getloadavg', lambda: (cores * 0.25, 0.0, 0.0))
  record = bench_env.machine_load('after')
  assert not record['busy']
  assert capsys.readouterr().err == ''


def test_run_seconds_warms_up_then_times_each_call():
  calls = []
  times = bench_env.run_seconds(lambda: calls.append(1), 3)
  assert len(calls) == 4  # one untimed warm-up call, then three timed
  assert len(times) == 3 and all(t >= 0 for t in times)
