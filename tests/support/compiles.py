"""Counting XLA compiles: `counting_compiles()` yields a list that gets the
function name (e.g. "jit(search)") of each backend compile in this process
while the block runs."""

import contextlib

import jax
from jax._src import dispatch  # BACKEND_COMPILE_EVENT


@contextlib.contextmanager
def counting_compiles():
  compiles: list[str] = []

  def listener(event: str, duration: float, **kwargs) -> None:
    del duration
    if event == dispatch.BACKEND_COMPILE_EVENT:
      compiles.append(str(kwargs.get("fun_name")))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
