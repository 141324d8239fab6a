"""The README's set-up commands are the ones CI runs; the repository has what it promises."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a bash block of set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_two_setup_commands() -> None:
    commands = setup_commands()
    assert len(commands) == 2
    assert "sharedft-fx demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = setup_commands()[1].split(" && ")[1:]
    assert install.replace(" -q", "") in ci.replace(" -q", "")
    assert test.split(".venv/bin/python -m pytest")[0] == ""
    assert ".venv/bin/python -m pytest -q -n 2" in ci
    assert "python3 -m venv .venv" in ci


def test_repository_layout() -> None:
    for path in ("pyproject.toml", "LICENSE", "sharedft_fx/py.typed", "passes/README.md",
                 "tools/gen_pass_docs.py"):
        assert (ROOT / path).exists(), path
    assert 'sharedft-fx = "sharedft_fx.cli:main"' in (ROOT / "pyproject.toml").read_text()
