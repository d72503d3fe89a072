"""The public API: what ``gemma_chat`` exports is real, documented and cheap to import."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import gemma_chat


def test_every_name_in_all_is_importable_from_the_package() -> None:
    for name in gemma_chat.__all__:
        if name != "GemmaLLM":  # imports torch: checked by the integration tests
            assert getattr(gemma_chat, name) is not None, name


def test_all_lists_every_public_name_the_package_defines() -> None:
    public = {
        n
        for n in vars(gemma_chat)
        if not n.startswith("_") and n not in {"annotations", "TYPE_CHECKING", "Any"}
    }
    submodules = {m.name for m in pkgutil.iter_modules(gemma_chat.__path__)}
    assert public - submodules <= set(gemma_chat.__all__)
    assert sorted(gemma_chat.__all__) == sorted(set(gemma_chat.__all__))


def test_the_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    assert gemma_chat.__version__ == version("gemma-chat")


def test_the_http_api_states_the_package_version() -> None:
    from gemma_chat.server.app import create_app

    assert create_app().version == gemma_chat.__version__


def test_the_readme_imports_work() -> None:
    from gemma_chat import ChatSession, InferenceService  # noqa: F401


def test_an_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        gemma_chat.Nope  # noqa: B018


def test_importing_the_package_loads_neither_torch_nor_transformers() -> None:
    code = "import sys, gemma_chat; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_importing_the_package_or_the_vllm_adapter_loads_neither_openai_nor_vllm() -> None:
    code = (
        "import sys, gemma_chat; gemma_chat.VLLMLLM; "
        "print('openai' in sys.modules, 'vllm' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_the_remote_adapter_is_exported_on_first_use() -> None:
    from gemma_chat.infrastructure.llm.adapters.openai_compatible import OpenAICompatibleLLM

    assert gemma_chat.OpenAICompatibleLLM is OpenAICompatibleLLM


def test_every_module_declares_its_public_names() -> None:
    root = Path(gemma_chat.__file__).parent
    assert (root / "py.typed").is_file()
    for path in root.rglob("*.py"):
        if path.name in {"__init__.py", "__main__.py"}:
            continue
        tree = ast.parse(path.read_text())
        names = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        assert "__all__" in names, path


def test_the_domain_imports_only_the_standard_library() -> None:
    root = Path(gemma_chat.__file__).parent / "domain"
    allowed = set(sys.stdlib_module_names) | {"gemma_chat"}
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                top = words[1].split(".")[0]
                assert top in allowed or top == "__future__", f"{path.name}: {line}"
