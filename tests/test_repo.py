"""Repository-level checks: the README's config reference matches the schema; ruff is clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_readme_config_reference_is_generated_from_the_schema():
    from engine.control.config import Config
    from engine.chain.schema import reference_markdown

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- reference:begin -->") + len("<!-- reference:begin -->")
    end = readme.index("<!-- reference:end -->")
    expected = "\n".join(reference_markdown(Config, "")) + "\n"
    assert readme[start:end].strip() == expected.strip(), (
        "README config reference is stale: regenerate it with `edgeproxy reference`")


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
