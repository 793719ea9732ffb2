"""The README's examples run as written: ```bash blocks in a shell, ```python blocks in Python, the ```yaml
recipe through a compile.  (```sh blocks are the set-up and test commands; CI runs those.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_setup_and_test_commands():
    sh = blocks("sh")
    assert "pip install torch==2.13.0" in sh[0] and "qcompiler demo" in sh[0]
    assert sh[1].strip() == "python -m pytest"
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\npython -m pytest\n" in ci  # CI runs exactly the README's test command


@pytest.fixture
def env(tmp_path, zoo):
    e = dict(os.environ)
    e["MODEL"] = str(zoo.onnx_path("resnet"))
    e["CALIB"] = str(zoo.calibration_npz("resnet", 128))
    e["VIT"] = str(zoo.onnx_path("transformer"))  # MatMul/Gemm layers, for the weight-only example
    e["VIT_CALIB"] = str(zoo.calibration_npz("transformer", 32))
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")
    return e


def test_bash_blocks_in_order(env, tmp_path):
    """The shell examples, in README order, in one working folder (later blocks use earlier outputs)."""
    for index, block in enumerate(blocks("bash")):
        script = "set -euo pipefail\n" + block
        r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README bash block {index}:\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks(index, env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks("python")[index], f"README.md[python {index}]", "exec"), {})


def test_yaml_recipe_block(env, tmp_path):
    (tmp_path / "recipe.yaml").write_text(blocks("yaml")[0])
    r = subprocess.run(["qcompiler", "compile", env["MODEL"], "-o", "w4.onnx", "--pipeline", "trt-int8", "--config",
                        "recipe.yaml", "--calib-data", env["CALIB"]], cwd=tmp_path, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "w4.onnx.recipe.json").exists()
