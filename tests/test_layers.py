"""gr/'s layer packages import downwards only, and no modules form a cycle."""

import ast
import pathlib

GR = pathlib.Path(__file__).resolve().parent.parent / 'gr'

# Lowest first: a module may import its own package and any package before it.
LAYERS = (
  'atomic_io',
  'partitioning',
  'batching',
  'bench_env',
  'console',
  'entry',
  'data',
  'docids',
  'index',
  'model',
  'decode',
  'train',
  'search',
  'queries',
  'continual',
  'serve',
  'experiments',
)

# (importing file, imported module) -> why the upward import is allowed.
EXCEPTIONS = {
  ('docids/semantic.py', 'gr.model.embed'): (
    'lazy, inside a function: the default MiniLM embedder when the caller '
    'passes neither an embedder nor embeddings'
  ),
}


def _module_of(path: pathlib.Path) -> str:
  parts = path.relative_to(GR.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every gr module `path` imports (a `from gr import x` names gr.x)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('gr.')}
    elif isinstance(node, ast.ImportFrom) and node.module:
      if node.module == 'gr' or node.module.startswith('gr.'):
        found |= {_resolve(node.module, a.name) for a in node.names}
  return found


def _resolve(package: str, name: str) -> str:
  """`from package import name`: the submodule if there is one, else package."""
  base = GR.parent.joinpath(*package.split('.'), name)
  is_module = base.with_suffix('.py').exists() or base.is_dir()
  return f'{package}.{name}' if is_module else package


def _layer(module: str) -> str:
  return module.split('.')[1]


def _graph() -> dict[str, set[str]]:
  return {
    _module_of(p): _imports(p)
    for p in GR.rglob('*.py')
    if p.parent.name != '__pycache__'
  }


def test_every_package_is_a_known_layer():
  assert {_layer(m) for m in _graph() if m != 'gr'} == set(LAYERS)


def test_imports_go_down_the_layers():
  upward = []
  for module, imports in _graph().items():
    if module == 'gr':
      continue
    path = module.removeprefix('gr.').replace('.', '/') + '.py'
    for target in imports:
      rank = LAYERS.index(_layer(target))
      if rank > LAYERS.index(_layer(module)):
        if (path, target) not in EXCEPTIONS:
          upward.append(f'{module} imports {target}')
  assert not upward, upward


def test_no_import_cycle():
  graph = _graph()
  modules = set(graph)
  edges = {m: {t for t in graph[m] if t in modules and t != m} for m in modules}
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for nxt in edges[node]:
      if state.get(nxt) == 'open':
        raise AssertionError(' -> '.join(stack + [node, nxt]))
      if nxt not in state:
        visit(nxt, stack + [node])
    state[node] = 'done'

  for module in sorted(modules):
    if module not in state:
      visit(module, [])


def test_the_checker_sees_an_upward_import(tmp_path):
  path = tmp_path / 'x.py'
  path.write_text('from gr.serve import retriever\nimport gr.model.bert\n')
  assert _imports(path) == {'gr.serve.retriever', 'gr.model.bert'}
