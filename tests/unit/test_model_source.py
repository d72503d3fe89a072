"""Where a model name's weights come from; nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest

from gemma_chat.domain.errors import ModelNotFoundError
from gemma_chat.infrastructure.llm.loading.model_source import ModelSource, resolve_model_source
from gemma_chat.shared.config import EMBEDDED_MODEL_NAME

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so that no model of this machine's real cache is found."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variables when it is imported: point its constant there too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # a relative "owner/name" must not find a local folder
    return cache


def add_to_cache(cache: Path, repo_id: str) -> Path:
    """Lay out a cached hub snapshot as huggingface_hub does."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


# -- local files and directories ---------------------------------------------------------------


def test_a_gguf_file_is_its_directory_and_file_name(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    source = resolve_model_source(str(model))
    assert source == ModelSource(tmp_path.resolve(), "tiny.gguf")
    assert source.gguf_path == tmp_path.resolve() / "tiny.gguf"


def test_the_gguf_suffix_is_case_insensitive(tmp_path: Path) -> None:
    model = tmp_path / "TINY.GGUF"
    model.write_bytes(b"GGUF")
    assert resolve_model_source(str(model)).gguf_file == "TINY.GGUF"


def test_a_home_relative_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model_source("~/m.gguf") == ModelSource(tmp_path.resolve(), "m.gguf")


def test_a_file_that_is_not_gguf_is_not_a_model(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf file") as info:
        resolve_model_source(str(weights))
    assert info.value.model_name == str(weights)


def test_a_directory_with_a_config_is_a_transformers_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "extra.gguf").write_bytes(b"GGUF")  # config.json wins
    source = resolve_model_source(str(tmp_path))
    assert source == ModelSource(tmp_path.resolve())
    assert source.gguf_path is None


def test_a_directory_with_exactly_one_gguf_file_uses_it(tmp_path: Path) -> None:
    (tmp_path / "only.gguf").write_bytes(b"GGUF")
    (tmp_path / "README.md").write_text("hi")
    assert resolve_model_source(str(tmp_path)) == ModelSource(tmp_path.resolve(), "only.gguf")


def test_a_directory_with_two_gguf_files_is_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match=r"exactly one \.gguf"):
        resolve_model_source(str(tmp_path))


def test_an_empty_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"neither a config\.json"):
        resolve_model_source(str(tmp_path))


# -- the hub cache -----------------------------------------------------------------------------


def test_a_hub_id_that_is_not_cached_is_not_found(hub_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model_source("google/gemma-3-1b-it")


def test_a_cached_hub_id_resolves_to_its_snapshot(hub_cache: Path) -> None:
    snapshot = add_to_cache(hub_cache, "acme/tiny-model")
    source = resolve_model_source("acme/tiny-model")
    assert source == ModelSource(snapshot.resolve())


def test_an_unknown_revision_of_a_cached_hub_id_is_not_found(hub_cache: Path) -> None:
    add_to_cache(hub_cache, "acme/tiny-model")
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model_source("acme/tiny-model", revision="v2")


# -- names that are nothing --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["no such model", "./missing/model", "a/b/c", "/nowhere/model.gguf", "~/x/y"]
)
def test_a_name_that_is_neither_a_path_nor_a_hub_id_is_not_found(
    name: str, hub_cache: Path
) -> None:
    with pytest.raises(ModelNotFoundError, match="No such file or directory"):
        resolve_model_source(name)


def test_the_not_found_message_gives_the_hints(hub_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_source("definitely not a model")
    message = str(info.value)
    assert "'definitely not a model'" in message
    assert "GEMMA_MODEL__NAME" in message
    assert "internet connection" in message
    assert "disk space" in message
    assert isinstance(info.value, FileNotFoundError)


# -- the embedded model ------------------------------------------------------------------------


def test_the_embedded_model_is_its_packaged_gguf_file() -> None:
    source = resolve_model_source(EMBEDDED_MODEL_NAME)
    assert source.gguf_file is not None
    assert source.gguf_file.endswith(".gguf")
    assert source.gguf_path is not None
    assert source.gguf_path.is_file()
