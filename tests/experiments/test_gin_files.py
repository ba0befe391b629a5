"""Every .gin file in gin/ and configs/ parses with the real registrations.

No unknown configurable is skipped. Run files are parsed after a model file
with their %gin.REQUIRED macros supplied; every parse must build the MODEL
it configures. The model files must match network.T5Config's presets.
"""

import dataclasses
import pathlib
import re

import gin
import pytest

from gr.model import models
from gr.model import network

# Imported for its gin registrations only.
from gr.experiments import configurables  # noqa: F401  # pylint: disable=unused-import

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL_FILES = sorted((REPO / 'gin' / 'models').glob('*.gin'))
RUN_FILES = sorted((REPO / 'gin' / 'runs').glob('*.gin'))
CONFIG_FILES = sorted((REPO / 'configs').glob('**/*.gin'))
PRESETS = {
  't5_tiny': network.T5Config.tiny,
  't5_small': network.T5Config.small,
  't5_base': network.T5Config.base,
}


@gin.configurable
def gin_test_probe(model=None):
  """Lets a test build whatever %MODEL a parsed config describes."""
  return model


def _parse(files: list[pathlib.Path], bindings: list[str] = ()):
  gin.clear_config()
  gin.add_config_file_search_path(str(REPO))
  gin.parse_config_files_and_bindings(
    [str(f) for f in files],
    list(bindings) + ['gin_test_probe.model = %MODEL'],
    skip_unknown=False,
  )
  try:
    return gin_test_probe()
  finally:
    gin.clear_config()


def _required_macros(path: pathlib.Path) -> list[str]:
  """Macros set to %gin.REQUIRED in `path` or the files it includes."""
  text = path.read_text()
  names = re.findall(r'^(\w+)\s*=\s*%gin\.REQUIRED', text, flags=re.M)
  for include in re.findall(r"^include\s+['\"](.+)['\"]", text, flags=re.M):
    names += _required_macros(REPO / include)
  return names


def _placeholders(path: pathlib.Path) -> list[str]:
  return [f"{name} = 'placeholder'" for name in _required_macros(path)]


def test_there_are_files_to_check():
  assert {f.stem for f in MODEL_FILES} >= set(PRESETS)
  assert 'train' in {f.stem for f in RUN_FILES}


@pytest.mark.parametrize('path', MODEL_FILES, ids=lambda p: p.name)
def test_model_file_builds_its_preset(path):
  model = _parse([path])
  assert isinstance(model, models.EncoderDecoderModel)
  if path.stem in PRESETS:
    expected = PRESETS[path.stem](model.config.vocab_size)
    assert dataclasses.asdict(model.config) == dataclasses.asdict(expected)


@pytest.mark.parametrize('path', RUN_FILES, ids=lambda p: p.name)
def test_run_file_parses_after_a_model_file(path):
  model_file = REPO / 'gin' / 'models' / 't5_tiny.gin'
  model = _parse([model_file, path], _placeholders(path))
  assert model.config.emb_dim == 64
  if _required_macros(path):
    with pytest.raises(ValueError, match='REQUIRED'):
      _parse([model_file, path])


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.name)
def test_config_file_parses(path):
  """Alone, except for the macros it leaves %gin.REQUIRED."""
  assert isinstance(
    _parse([path], _placeholders(path)), models.EncoderDecoderModel
  )


def test_train_gin_binds_every_train_argument():
  gin.clear_config()
  gin.parse_config_files_and_bindings(
    [
      str(REPO / 'gin' / 'models' / 't5_tiny.gin'),
      str(REPO / 'gin' / 'runs' / 'train.gin'),
    ],
    ["MIXTURE_OR_TASK_NAME = 'x'", 'TRAIN_STEPS = 1', "MODEL_DIR = '/x'"],
  )
  try:
    for name in (
      'model',
      'mixture_or_task_name',
      'train_steps',
      'model_dir',
      'batch_size',
      'input_length',
      'target_length',
      'optimizer',
    ):
      gin.query_parameter(f'train.{name}')
    assert gin.query_parameter('OptimizerConfig.name') == 'adafactor'
  finally:
    gin.clear_config()
