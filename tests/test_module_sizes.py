"""The layout's size rules (issue 19): no module over 500 lines, and no
function over 80 lines except the two entry loops (train's step loop and
the web app factory), so each stays readable in one sitting."""

import ast
import pathlib

import pytest

GR = pathlib.Path(__file__).resolve().parents[1] / "gr"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# The two entry loops the issue names: a gin-bound signature and its Args
# docstring make most of their length.
LONG_FUNCTIONS_ALLOWED = {
  ("gr/train/loop.py", "train"),
  ("gr/serve/app.py", "create_app"),
}
MODULES = sorted(GR.rglob("*.py"))


def _name(path: pathlib.Path) -> str:
  return str(path.relative_to(GR.parent))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_is_at_most_500_lines(path):
  lines = len(path.read_text().splitlines())
  assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_functions_are_at_most_80_lines(path):
  long = [
    (node.name, node.end_lineno - node.lineno + 1)
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    and (_name(path), node.name) not in LONG_FUNCTIONS_ALLOWED
  ]
  assert not long, f"{_name(path)}: {long}"


def test_the_allowed_long_functions_exist():
  """The exceptions name real functions (a rename must update them)."""
  for module, function in LONG_FUNCTIONS_ALLOWED:
    tree = ast.parse((GR.parent / module).read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert function in names, (module, function)
