"""GEMMA_PERFORMANCE__HUGE_PAGES on the embedded model: where the packed weights live once loaded
(read from /proc/self/smaps), and the same greedy text either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma_chat import GemmaLLM, GenerationConfig, get_settings
from gemma_chat.infrastructure.llm.engine import q8 as q8_module
from gemma_chat.infrastructure.llm.engine.converted_store import WEIGHTS

pytestmark = pytest.mark.slow

HUGE_PAGES_UNAVAILABLE = q8_module._huge_pages_unavailable()
GREEDY = GenerationConfig(temperature=0, max_new_tokens=16)
CHAT = [{"role": "user", "content": "Describe the sea."}]


def mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps entry of the mapping that holds ``address``: its path (empty for an
    anonymous one) and its fields (``Rss``, ``Anonymous``, ``AnonHugePages``: "<n> kB")."""
    entry: dict[str, str] | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and not head[0].endswith(":"):  # "start-end perms offset dev inode path"
            if entry is not None:
                return entry
            start, end = (int(a, 16) for a in head[0].split("-"))
            entry = {"path": head[5] if len(head) > 5 else ""} if start <= address < end else None
        elif entry is not None:
            entry[head[0].rstrip(":")] = head[1]
    assert entry is not None, f"no mapping holds {address:#x}"
    return entry


def kilobytes(entry: dict[str, str], field: str) -> int:
    return int(entry[field])


async def greedy_text_and_mappings(
    embedded_llm: GemmaLLM, huge_pages: bool
) -> tuple[str, list[dict[str, str]]]:
    """The greedy answer with ``huge_pages`` set, and the mappings of the head (read whole by
    every step) and of a block's weights."""
    llm = GemmaLLM(
        get_settings(
            cache_dir=str(embedded_llm.settings.cache_dir),
            model={"chat_format": "gemma"},
            performance={"engine": "native", "huge_pages": huge_pages},
        )
    )
    await llm.load()
    try:
        text = (await llm.generate(CHAT, GREEDY)).text
        model = llm._require_generator().model  # type: ignore[attr-defined]
        head = mapping_of(model.lm_head.q.data_ptr())
        block = mapping_of(model.blocks[0].gate_up.q.data_ptr())
    finally:
        await llm.unload()
    return text, [head, block]


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="no /proc/self/smaps (Linux)")
@pytest.mark.asyncio
async def test_huge_pages_off_leaves_the_weights_in_the_converted_files_mapping(
    embedded_llm: GemmaLLM,
) -> None:
    text, entries = await greedy_text_and_mappings(embedded_llm, huge_pages=False)
    assert text
    for entry in entries:  # the converted file's pages: page cache, shared, droppable
        assert entry["path"].endswith(WEIGHTS), entry
        assert kilobytes(entry, "Rss") > 0, entry
        assert kilobytes(entry, "Anonymous") == 0, entry
        assert kilobytes(entry, "AnonHugePages") == 0, entry


@pytest.mark.skipif(HUGE_PAGES_UNAVAILABLE is not None, reason=f"{HUGE_PAGES_UNAVAILABLE}")
@pytest.mark.asyncio
async def test_huge_pages_on_holds_the_weights_in_anonymous_2mb_pages_with_the_same_text(
    embedded_llm: GemmaLLM,
) -> None:
    text, entries = await greedy_text_and_mappings(embedded_llm, huge_pages=True)
    for entry in entries:  # the process's own memory, in 2 MB pages
        assert entry["path"] == "", entry
        assert kilobytes(entry, "AnonHugePages") > 0, entry
    off, _ = await greedy_text_and_mappings(embedded_llm, huge_pages=False)
    assert text == off
