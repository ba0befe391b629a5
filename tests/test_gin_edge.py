"""The gin edge: gin and its registrations live in gr/experiments/ only.

No library module (every module under gr/ outside gr/experiments/) imports
gin or gr.experiments, by its source (ast) and in a fresh process; every gin
file reaches its registrations through gr.experiments; and each kind of
config file parses in a fresh process, with only what it imports itself.
"""

import ast
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'gr'
EDGE = PACKAGE / 'experiments'
LIBRARY_FILES = sorted(
  p for p in PACKAGE.rglob('*.py') if EDGE not in p.parents
)
GIN_FILES = sorted(
  [*(REPO / 'gin').rglob('*.gin'), *(REPO / 'configs').rglob('*.gin')]
)
CONFIG_FILES = sorted((REPO / 'configs').rglob('*.gin'))


def _module_name(path: pathlib.Path, root: pathlib.Path = REPO) -> str:
  parts = path.relative_to(root).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imported_modules(
  path: pathlib.Path, root: pathlib.Path = REPO
) -> set[str]:
  """Every module an import statement in `path` names (relative resolved),
  at any depth (a lazy import in a function counts); `from a import b`
  counts as a and a.b (b may be a submodule)."""
  package = _module_name(path, root)
  if path.name != '__init__.py':
    package = package.rpartition('.')[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')[: len(package.split('.')) - node.level + 1]
        base = '.'.join([*anchor, *([base] if base else [])])
      found.add(base)
      found.update(f'{base}.{alias.name}' for alias in node.names)
  return found


def _forbidden(module: str) -> bool:
  return (
    module == 'gin'
    or module.startswith('gin.')
    or module == 'gr.experiments'
    or module.startswith('gr.experiments.')
  )


def test_there_is_a_library_and_an_edge():
  names = {_module_name(p) for p in LIBRARY_FILES}
  assert {
    'gr.train.loop',
    'gr.continual.update',
    'gr.continual.dynamic_cells',
    'gr.model.models',
  } <= names
  assert (EDGE / '__init__.py').exists()
  assert not (PACKAGE / 'experiment.py').exists()
  assert not (PACKAGE / 'gin_cli.py').exists()


def test_the_walk_sees_every_form_of_import(tmp_path):
  probe = tmp_path / 'gr' / 'probe.py'
  probe.parent.mkdir()
  forms = {
    'import gin': 'gin',
    'import gin.config': 'gin.config',
    'from gin import configurable': 'gin',
    'import gr.experiments': 'gr.experiments',
    'from gr import experiments': 'gr.experiments',
    'from gr.experiments import configurables': 'gr.experiments',
    'from . import experiments': 'gr.experiments',
    'from .experiments.run import run_experiment': 'gr.experiments.run',
  }
  for source, module in forms.items():
    probe.write_text(f'def f():\n  {source}\n')  # a lazy import counts too
    found = set(filter(_forbidden, _imported_modules(probe, tmp_path)))
    assert module in found, source
  probe.write_text('from gr import experiment_utils\nimport ginger\n')
  assert not any(map(_forbidden, _imported_modules(probe, tmp_path)))


@pytest.mark.parametrize(
  'path', LIBRARY_FILES, ids=lambda p: str(p.relative_to(REPO))
)
def test_library_module_imports_neither_gin_nor_the_edge(path):
  assert not sorted(filter(_forbidden, _imported_modules(path)))


def test_importing_the_whole_library_loads_no_gin():
  """In a fresh process (seqio, flax, ... do not load gin either)."""
  modules = [_module_name(p) for p in LIBRARY_FILES]
  code = textwrap.dedent(f"""
    import importlib, sys
    for name in {modules!r}:
      importlib.import_module(name)
    loaded = sorted(
      m for m in sys.modules
      if m == 'gin' or m.startswith(('gin.', 'gr.experiments'))
    )
    print('LOADED', loaded)
  """)
  out = subprocess.run(
    [sys.executable, '-c', code],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert 'LOADED []' in out, out


def test_gin_cli_alone_loads_no_library():
  """The package's __init__ imports nothing: gin_cli stays light (it loads
  the console and the entry point, shared leaves, and no layer package)."""
  code = (
    'import sys; from gr.experiments import gin_cli; '
    "print('LOADED', sorted(m for m in sys.modules if m.startswith('gr.')))"
  )
  out = subprocess.run(
    [sys.executable, '-c', code],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert (
    "LOADED ['gr.console', 'gr.entry', 'gr.experiments', "
    "'gr.experiments.gin_cli']" in out
  ), out


def _gin_imports(path: pathlib.Path) -> set[str]:
  """Modules `path` and the files it includes import."""
  text = path.read_text()
  found = set(re.findall(r'^import\s+([\w.]+)', text, flags=re.M))
  for include in re.findall(r"^include\s+['\"](.+)['\"]", text, flags=re.M):
    found |= _gin_imports(REPO / include)
  return found


@pytest.mark.parametrize(
  'path', GIN_FILES, ids=lambda p: str(p.relative_to(REPO))
)
def test_gin_file_gets_its_registrations_from_the_edge(path):
  """It (or a file it includes) imports gr.experiments; a library module
  it imports registers nothing."""
  assert any(m.startswith('gr.experiments.') for m in _gin_imports(path))


def _required(path: pathlib.Path) -> list[str]:
  text = path.read_text()
  names = re.findall(r'^(\w+)\s*=\s*%gin\.REQUIRED', text, flags=re.M)
  for include in re.findall(r"^include\s+['\"](.+)['\"]", text, flags=re.M):
    names += _required(REPO / include)
  return names


# One config file per set of imports: each parses in a fresh process where
# nothing else registered its configurables first (tests/experiments/test_gin_files.py
# parses them all in one process, so one file's imports could hide another's
# missing one).
_BY_IMPORTS = {}
for _path in CONFIG_FILES:
  _BY_IMPORTS.setdefault(frozenset(_gin_imports(_path)), _path)


@pytest.mark.parametrize(
  'path', sorted(_BY_IMPORTS.values()), ids=lambda p: p.name
)
def test_config_file_parses_in_a_fresh_process(path):
  bindings = [f"{name} = 'placeholder'" for name in _required(path)]
  code = textwrap.dedent(f"""
    import gin
    gin.add_config_file_search_path({str(REPO)!r})
    gin.parse_config_files_and_bindings(
      [{str(path)!r}], {bindings!r}, skip_unknown=False
    )
    print('PARSED')
  """)
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True
  )
  assert 'PARSED' in result.stdout, result.stderr[-3000:]
