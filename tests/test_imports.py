"""The dependency between the two stages runs one way: `preprocessing` (PyTorch) imports
`gems_jax.data`, whose schema is the contract, and nothing in `gems_jax/` imports `preprocessing`
or a PyTorch package, at any level (module, function or class body).

The one exception: `gems_jax/tools/convert_swin.py` reads timm/PyTorch checkpoint files, so it may
import torch and safetensors inside the functions that read them (never at module level).
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gems_jax"
FORBIDDEN = ("preprocessing", "torch", "timm", "torchvision", "facenet_pytorch")
LAZY_TORCH_ALLOWED = {"tools/convert_swin.py": ("torch", "safetensors")}


def _imports(tree: ast.AST):
  """(top-level module name, line, inside a function) of every absolute import in `tree`."""
  def walk(node, in_function):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        for alias in child.names:
          yield alias.name.split(".")[0], child.lineno, in_function
      elif isinstance(child, ast.ImportFrom) and child.level == 0:
        yield child.module.split(".")[0], child.lineno, in_function
      yield from walk(child, in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef)))
  yield from walk(tree, False)


def forbidden_imports(path: pathlib.Path, relative: str) -> list[str]:
  """`relative:line imports name` for each import of `path` that breaks the rule above."""
  allowed = LAZY_TORCH_ALLOWED.get(relative, ())
  found = []
  for name, line, in_function in _imports(ast.parse(path.read_text(), str(path))):
    if name in FORBIDDEN and not (in_function and name in allowed):
      found.append(f"{relative}:{line} imports {name}")
  return found


def test_gems_jax_imports_neither_preprocessing_nor_torch():
  files = sorted(PACKAGE.rglob("*.py"))
  assert len(files) > 20  # The scan sees the package.
  found = [hit for path in files
           for hit in forbidden_imports(path, path.relative_to(PACKAGE).as_posix())]
  assert not found, "gems_jax must not import these (see tests/test_imports.py):\n" + "\n".join(
      found)


@pytest.mark.parametrize("source, relative, expected", [
    ("import torch.nn as nn\n", "models/x.py", ["models/x.py:1 imports torch"]),
    ("def f():\n  from preprocessing import extract\n", "predict.py",
     ["predict.py:2 imports preprocessing"]),
    ("class A:\n  import timm\n", "x.py", ["x.py:2 imports timm"]),
    ("import torch\n", "tools/convert_swin.py", ["tools/convert_swin.py:1 imports torch"]),
    ("def load():\n  import safetensors.torch\n  import torch\n", "tools/convert_swin.py", []),
    ("def load():\n  import torch\n", "tools/other.py", ["tools/other.py:2 imports torch"]),
    ("from . import torch_free\nimport torchmetrics_like\n", "x.py", []),
])
def test_the_scan_catches_every_level(tmp_path, source, relative, expected):
  path = tmp_path / "module.py"
  path.write_text(source)
  assert forbidden_imports(path, relative) == expected
