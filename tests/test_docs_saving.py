"""docs/saving.md runs as written: its Python blocks, in page order, in one empty folder (a later
block may read what an earlier one wrote), the way a reader pastes them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "saving.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE, flags=re.S)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("saving")


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_block_runs_as_written(number, folder):
    code = BLOCKS[number]
    for module in re.findall(r"^(?:import|from) (transformers|onnxruntime)\b", code, flags=re.M):
        pytest.importorskip(module)
    if "onnxruntime" in code:
        pytest.importorskip("onnxscript")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"docs/saving.md python block {number} failed:\n{code}\n{run.stderr[-3000:]}"


def test_the_page_has_a_block_for_each_way():
    joined = "\n".join(BLOCKS)
    for needle in ("load_from_checkpoint", "load_pruned", "load_pretrained", "from_pretrained", "onnx.export"):
        assert needle in joined, needle
