"""Repository-level checks: the README's config reference matches the schema; ruff is clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_config_reference_is_generated_from_the_schema():
    from engine.control.config import Config
    from engine.chain.schema import reference_markdown

    readme = (ROOT / "docs" / "config-reference.md").read_text()
    start = readme.index("<!-- reference:begin -->") + len("<!-- reference:begin -->")
    end = readme.index("<!-- reference:end -->")
    expected = "\n".join(reference_markdown(Config, "")) + "\n"
    assert readme[start:end].strip() == expected.strip(), (
        "docs/config-reference.md is stale: regenerate it with `edgeproxy reference`")


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```sh") + 1: lines.index("```sh") + 3]
    assert block[0].endswith("edgeproxy run -c config.toml")
    assert block[1].endswith("python -m pytest")
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is part of the test extras; install with pip install -e '.[test]'")
    result = subprocess.run([ruff, "check", "engine", "tests", "bench", "setup.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_is_listed_for_installation():
    """`pip install .` (the README's first command) ships only the packages pyproject lists."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".")
             for top in ("engine", "ext") for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject packages: {sorted(found - listed)}"


def _imports_between_subpackages() -> dict:
    """engine's subpackages -> those they import or cimport (engine/*.py modules count as
    "engine"; engine/errors.py is the leaf everyone may use)."""
    import re
    pattern = re.compile(r"^\s*(?:from\s+(engine(?:\.\w+)*)\s+c?import|c?import\s+(engine(?:\.\w+)*))",
                         re.M)

    def node(module: str) -> str:
        parts = module.split(".")
        if len(parts) > 1 and (ROOT / "engine" / parts[1]).is_dir():
            return "engine." + parts[1]
        return "engine.errors" if parts[1:2] == ["errors"] else "engine"

    edges: dict = {}
    for path in (ROOT / "engine").rglob("*"):
        if path.suffix not in (".py", ".pyx", ".pxd"):
            continue
        rel = path.relative_to(ROOT).with_suffix("")
        src = node(".".join(rel.parts))
        for a, b in pattern.findall(path.read_text()):
            dst = node(a or b)
            if dst != src:
                edges.setdefault(src, set()).add(dst)
    return edges


def test_engine_subpackages_import_one_way():
    """DESIGN.md: control -> filters -> chain -> {upstream, stores} -> wire/ext; the codec
    (http) -> chain. A cycle, even through a lazy import, fails here."""
    edges = _imports_between_subpackages()
    state: dict = {}
    path: list = []

    def visit(n):
        state[n] = "open"
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = "done"

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert "engine.filters" not in edges.get("engine.chain", ())
    assert edges.get("engine.wire", set()) <= {"engine.errors"}  # a leaf
