"""README.md runs as written (issue 13 item 1): its Python blocks and its lightning-fair commands are
extracted and run here, in an empty directory, the way a new user pastes them. Small settings: the
test lowers ``max_epochs`` (named in SMALL) and nothing else; the two setup lines (venv + pip) are what
``.ci/run`` runs, checked to stay in step with it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
#: what the test changes in the blocks to keep them short: the number of epochs only
SMALL = [
    (re.compile(r"max_epochs=\d+"), "max_epochs=2"),
    (re.compile(r"prune_at=\d+"), "prune_at=0"),
]


def small(text: str) -> str:
    for pattern, value in SMALL:
        text = pattern.sub(value, text)
    return text


def python_blocks():
    return [code for lang, code in BLOCKS if lang == "python"]


def shell_blocks():
    return [code for lang, code in BLOCKS if lang in ("bash", "sh", "shell")]


def test_readme_has_the_two_commands_and_ci_runs_the_test_command():
    setup = [line for code in shell_blocks() for line in code.splitlines() if line.startswith("python3 -m venv")]
    assert len(setup) == 2, setup  # the demo command and the test command
    demo, tests = setup
    assert demo.endswith("examples/demo.py") and tests.endswith("-m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    for step in tests.split(" && "):  # CI runs the same steps (quietly)
        assert step.replace("pip install ", "pip install -q ") in ci or step in ci, step


@pytest.mark.parametrize("number", range(len(python_blocks())))
def test_python_block_runs_as_written(number, tmp_path):
    code = small(python_blocks()[number])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"README python block {number} failed:\n{code}\n{run.stderr[-3000:]}"


def test_cli_block_runs_as_written(tmp_path):
    (block,) = [code for code in shell_blocks() if "lightning-fair fit" in code]
    script = small(block)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"README commands failed:\n{script}\n{run.stderr[-3000:]}"
    assert (tmp_path / "pruned" / "pruned.ckpt").is_file() and (tmp_path / "pruned" / "report.json").is_file()
