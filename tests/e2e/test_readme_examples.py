"""The README's examples run as written, as a new user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_chat.testing.tiny_gemma import build_tiny_gemma

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# Every Python block is a whole program, except those that say they are fragments.
BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    if not block.startswith("# fragment")
]
COMMANDS = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gemma(tmp_path_factory.mktemp("readme-model"))


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GEMMA_")}
    return subprocess.run(
        args, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=600
    )


def test_the_readme_starts_with_the_two_set_up_commands_and_ci_runs_the_second() -> None:
    first, second = COMMANDS[0].strip(), COMMANDS[1].strip()
    assert README.index(first) < README.index("## Quickstart")
    assert "examples/quickstart.py" in first
    assert second in (ROOT / ".ci" / "run").read_text()


def test_the_quickstart_in_the_readme_is_the_quickstart_script() -> None:
    script = (ROOT / "examples" / "quickstart.py").read_text()
    for line in ("session.system_prompt = ", "service.stream_response(", "health_check()"):
        assert line in BLOCKS[0]
        assert line in script


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_python_example_runs(index: int, tiny_model: Path, tmp_path: Path) -> None:
    code = BLOCKS[index]
    if "import pytest" in code:
        path = tmp_path / f"test_readme_{index}.py"
        path.write_text(code)
        result = run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)], tmp_path
        )
    else:
        # The examples that load the default model run here on the tiny model, through the same
        # code path; examples/quickstart.py runs on the embedded model below.
        result = run(
            [sys.executable, "-c", code],
            tmp_path,
            GEMMA_MODEL__NAME=str(tiny_model),
            GEMMA_CACHE_DIR=str(tmp_path / "cache"),
            # The tiny model's context is 512 tokens: keep its random answers short.
            GEMMA_MODEL__MAX_NEW_TOKENS="32",
        )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_quickstart_script_chats_with_the_embedded_model(tmp_path: Path) -> None:
    result = run([sys.executable, str(ROOT / "examples" / "quickstart.py")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TokenUsage(prompt_tokens=" in result.stdout
    assert "'status': 'healthy'" in result.stdout
