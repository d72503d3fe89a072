"""A conversation's state: messages, system prompt, usage, and its stored form."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from gemma_chat.domain.errors import InvalidMessageError
from gemma_chat.domain.models import ChatSession, Role, TokenUsage


def full_session() -> ChatSession:
    session = ChatSession(
        "Ünïcode 标题 🚀",
        system_prompt="Réponds en français. 日本語もOK.",
        metadata={"user": "zoë", "tags": ["a", "b"], "nested": {"n": 1, "ok": True}},
        id="session-1",
        created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    session.record_turn("Bonjour ☕", "Salut ! 👋", TokenUsage(12, 4), user_token_count=3)
    session.add_user_message("Encore\nune ligne")
    session.add_assistant_message("", token_count=0, token_usage=TokenUsage(20, 0))
    return session


# -- construction and the system prompt --------------------------------------------------------


def test_a_new_session_is_empty_with_defaults() -> None:
    session = ChatSession()
    assert session.title == "New Chat"
    assert len(session.id) == 32
    assert session.system_prompt is None
    assert session.messages == ()
    assert session.message_count == 0
    assert session.token_usage == TokenUsage()
    assert session.metadata == {}
    assert session.updated_at == session.created_at


def test_two_sessions_get_different_ids() -> None:
    assert ChatSession().id != ChatSession().id


def test_a_title_must_be_a_string() -> None:
    with pytest.raises(InvalidMessageError, match="title must be a string"):
        ChatSession(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("session_id", ["", 42])
def test_a_given_id_must_be_a_non_empty_string(session_id: object) -> None:
    with pytest.raises(InvalidMessageError, match="id"):
        ChatSession(id=session_id)  # type: ignore[arg-type]


def test_the_metadata_is_a_copy_of_what_was_given() -> None:
    given: dict[str, Any] = {"k": "v"}
    session = ChatSession(metadata=given)
    given["k"] = "changed"
    assert session.metadata == {"k": "v"}


def test_the_system_prompt_can_be_set_and_replaced() -> None:
    session = ChatSession(system_prompt="Be brief.")
    assert session.system_prompt == "Be brief."
    session.system_prompt = "Be verbose."
    assert session.system_prompt == "Be verbose."
    session.system_prompt = None
    assert session.system_prompt is None


@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_a_blank_system_prompt_means_none(blank: str) -> None:
    session = ChatSession(system_prompt="x")
    session.system_prompt = blank
    assert session.system_prompt is None
    assert session.to_chat_messages() == []


def test_a_system_prompt_must_be_a_string() -> None:
    session = ChatSession()
    with pytest.raises(InvalidMessageError, match="System prompt must be a string"):
        session.system_prompt = 3  # type: ignore[assignment]
    with pytest.raises(InvalidMessageError):
        ChatSession(system_prompt=["x"])  # type: ignore[arg-type]


def test_a_change_moves_updated_at_forward() -> None:
    session = ChatSession(created_at=datetime(2020, 1, 1, tzinfo=UTC))
    session.add_user_message("hi")
    assert session.updated_at > session.created_at


# -- adding messages ---------------------------------------------------------------------------


def test_messages_are_appended_in_order() -> None:
    session = ChatSession()
    user = session.add_user_message("Hi", token_count=1)
    answer = session.add_assistant_message("Hello", token_count=2)
    assert session.messages == (user, answer)
    assert (user.role, user.content, user.token_count) == (Role.USER, "Hi", 1)
    assert (answer.role, answer.content, answer.token_count) == (Role.ASSISTANT, "Hello", 2)
    assert session.message_count == 2


def test_the_messages_property_is_a_snapshot() -> None:
    session = ChatSession()
    before = session.messages
    session.add_user_message("Hi")
    assert before == ()
    assert isinstance(session.messages, tuple)


def test_an_invalid_user_message_leaves_the_session_unchanged() -> None:
    session = ChatSession()
    with pytest.raises(InvalidMessageError):
        session.add_user_message("   ")
    assert session.messages == ()


def test_an_assistant_message_adds_its_usage() -> None:
    session = ChatSession()
    session.add_assistant_message("a", token_usage=TokenUsage(5, 1))
    session.add_assistant_message("b", token_usage=TokenUsage(7, 2))
    session.add_assistant_message("c")
    assert session.token_usage == TokenUsage(12, 3)


def test_record_turn_adds_both_messages_and_the_usage() -> None:
    session = ChatSession()
    user, answer = session.record_turn("Q?", "A.", TokenUsage(9, 4), user_token_count=2)
    assert session.messages == (user, answer)
    assert (user.role, user.content, user.token_count) == (Role.USER, "Q?", 2)
    assert (answer.role, answer.content, answer.token_count) == (Role.ASSISTANT, "A.", 4)
    assert session.token_usage == TokenUsage(9, 4)


@pytest.mark.parametrize(
    ("user", "assistant", "user_tokens"),
    [("", "fine", None), ("ok", None, None), ("ok", "fine", -3), (None, "fine", None)],
)
def test_a_turn_with_any_invalid_part_adds_nothing(
    user: Any, assistant: Any, user_tokens: Any
) -> None:
    session = ChatSession()
    session.record_turn("first", "turn", TokenUsage(1, 1))
    before = session.to_dict()
    with pytest.raises(InvalidMessageError):
        session.record_turn(user, assistant, TokenUsage(5, 5), user_token_count=user_tokens)
    assert session.to_dict() == before


def test_an_empty_answer_is_a_valid_turn() -> None:
    session = ChatSession()
    _, answer = session.record_turn("Say nothing", "", TokenUsage(3, 0))
    assert answer.content == ""


def test_clear_forgets_messages_and_usage_but_keeps_the_rest() -> None:
    session = full_session()
    session.clear()
    assert session.messages == ()
    assert session.token_usage == TokenUsage()
    assert session.id == "session-1"
    assert session.title == "Ünïcode 标题 🚀"
    assert session.system_prompt == "Réponds en français. 日本語もOK."
    assert session.metadata["user"] == "zoë"


# -- chat messages -----------------------------------------------------------------------------


def test_chat_messages_start_with_the_system_prompt() -> None:
    session = ChatSession(system_prompt="Be brief.")
    session.add_user_message("Hi")
    session.add_assistant_message("Hello")
    assert session.to_chat_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_a_system_prompt_set_later_still_comes_first() -> None:
    session = ChatSession()
    session.add_user_message("Hi")
    session.system_prompt = "Late rule."
    assert session.to_chat_messages()[0] == {"role": "system", "content": "Late rule."}


def test_chat_messages_can_leave_out_the_system_prompt() -> None:
    session = ChatSession(system_prompt="Be brief.")
    session.add_user_message("Hi")
    assert session.to_chat_messages(include_system=False) == [{"role": "user", "content": "Hi"}]


# -- stored form -------------------------------------------------------------------------------


def test_a_session_survives_a_dict_round_trip() -> None:
    session = full_session()
    restored = ChatSession.from_dict(session.to_dict())
    assert restored == session
    assert restored.to_dict() == session.to_dict()
    assert restored.messages == session.messages
    assert restored.token_usage == TokenUsage(32, 4)
    assert restored.updated_at == session.updated_at


def test_a_session_survives_a_json_round_trip() -> None:
    session = full_session()
    for ensure_ascii in (True, False):
        text = json.dumps(session.to_dict(), ensure_ascii=ensure_ascii)
        restored = ChatSession.from_dict(json.loads(text))
        assert restored == session
        assert restored.title == "Ünïcode 标题 🚀"
        assert restored.metadata == {
            "user": "zoë",
            "tags": ["a", "b"],
            "nested": {"n": 1, "ok": True},
        }
        assert [m.content for m in restored.messages] == [
            "Bonjour ☕",
            "Salut ! 👋",
            "Encore\nune ligne",
            "",
        ]


def test_the_stored_form_is_versioned_and_complete() -> None:
    data = full_session().to_dict()
    assert data["schema_version"] == 2
    assert set(data) == {
        "schema_version",
        "id",
        "title",
        "system_prompt",
        "metadata",
        "created_at",
        "updated_at",
        "token_usage",
        "messages",
    }
    assert data["token_usage"] == {"prompt_tokens": 32, "completion_tokens": 4, "total_tokens": 36}


def test_an_empty_session_survives_a_round_trip() -> None:
    session = ChatSession()
    assert ChatSession.from_dict(session.to_dict()) == session


def test_a_minimal_stored_session_loads() -> None:
    stamp = "2024-01-01T00:00:00+00:00"
    session = ChatSession.from_dict(
        {"id": "s", "title": "t", "created_at": stamp, "updated_at": stamp}
    )
    assert (session.id, session.messages, session.token_usage) == ("s", (), TokenUsage())


def _stored(**changes: Any) -> dict[str, Any]:
    data = full_session().to_dict()
    data.update(changes)
    return data


def _with_message(**changes: Any) -> dict[str, Any]:
    data = full_session().to_dict()
    data["messages"][0].update(changes)
    return data


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(None, id="none"),
        pytest.param("a string", id="string"),
        pytest.param([1, 2], id="list"),
        pytest.param({}, id="empty"),
        pytest.param({k: v for k, v in _stored().items() if k != "title"}, id="no-title"),
        pytest.param({k: v for k, v in _stored().items() if k != "id"}, id="no-id"),
        pytest.param(_stored(id=None), id="null-id"),
        pytest.param(_stored(title=7), id="title-not-a-string"),
        pytest.param(_stored(created_at="yesterday"), id="bad-created-at"),
        pytest.param(_stored(updated_at=12), id="updated-at-not-a-string"),
        pytest.param(_stored(system_prompt=5), id="system-prompt-not-a-string"),
        pytest.param(_stored(metadata="abc"), id="metadata-a-string"),
        pytest.param(_stored(messages=5), id="messages-not-a-list"),
        pytest.param(_stored(messages=["hi"]), id="message-a-string"),
        pytest.param(_stored(token_usage=[1]), id="usage-a-list"),
        pytest.param(_stored(token_usage={"prompt_tokens": -1, "completion_tokens": 0}), id="neg"),
        pytest.param(
            _stored(token_usage={"prompt_tokens": float("inf"), "completion_tokens": 0}),
            id="usage-inf",
        ),
        pytest.param(_stored(token_usage={"prompt_tokens": 1}), id="usage-incomplete"),
        pytest.param(_with_message(role="wizard"), id="message-role"),
        pytest.param(_with_message(content=""), id="message-empty-user"),
        pytest.param(_with_message(content=None), id="message-content-none"),
        pytest.param(_with_message(created_at="noon"), id="message-time"),
        pytest.param(_with_message(token_count="3"), id="message-token-count"),
        pytest.param(_with_message(id=None), id="message-id"),
    ],
)
def test_garbage_is_rejected_with_an_invalid_message_error(data: Any) -> None:
    with pytest.raises(InvalidMessageError):
        ChatSession.from_dict(data)


# -- equality ----------------------------------------------------------------------------------


def test_sessions_with_different_contents_differ() -> None:
    session = full_session()
    other = ChatSession.from_dict(session.to_dict())
    other.add_user_message("one more")
    assert other != session


def test_a_session_is_not_equal_to_other_types_and_not_hashable() -> None:
    session = ChatSession()
    assert session != session.to_dict()
    with pytest.raises(TypeError):
        hash(session)


def test_the_repr_names_the_session() -> None:
    session = full_session()
    assert repr(session) == "ChatSession(id='session-1', title='Ünïcode 标题 🚀', messages=4)"


# -- text that cannot be stored or tokenized ---------------------------------------------------

LONE_SURROGATE, NUL = "\ud800", "\x00"


@pytest.mark.parametrize("bad", [LONE_SURROGATE, NUL])
@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda bad: ChatSession(f"a{bad}"), "title"),
        (lambda bad: ChatSession(system_prompt=f"Be{bad} kind."), "system_prompt"),
        (lambda bad: ChatSession(metadata={"user": f"zo{bad}"}), "metadata.user"),
        (lambda bad: ChatSession(metadata={"user": {"name": bad}}), "metadata.user.name"),
        (lambda bad: ChatSession(metadata={"tags": ["ok", bad]}), "metadata.tags[1]"),
        (lambda bad: ChatSession(metadata={f"k{bad}": 1}), "metadata key"),
        (lambda bad: ChatSession(metadata={"deep": {f"k{bad}": 1}}), "metadata.deep key"),
        (lambda bad: ChatSession().add_user_message(f"hi{bad}"), "content"),
    ],
)
def test_text_that_cannot_be_stored_is_rejected_naming_its_field(
    build: Any, field: str, bad: str
) -> None:
    with pytest.raises(InvalidMessageError, match=re.escape(field)) as info:
        build(bad)
    assert bad not in str(info.value)  # the message itself can be encoded and stored
    str(info.value).encode("utf-8")


def test_unstorable_text_set_later_is_rejected_and_changes_nothing() -> None:
    session = ChatSession("title", system_prompt="prompt", metadata={"k": "v"})
    with pytest.raises(InvalidMessageError, match="title"):
        session.title = LONE_SURROGATE
    with pytest.raises(InvalidMessageError, match="system_prompt"):
        session.system_prompt = NUL
    with pytest.raises(InvalidMessageError, match=r"metadata\.k"):
        session.metadata = {"k": LONE_SURROGATE}
    assert (session.title, session.system_prompt, session.metadata) == (
        "title",
        "prompt",
        {"k": "v"},
    )


def test_a_turn_whose_answer_is_not_valid_unicode_adds_nothing() -> None:
    session = ChatSession()
    with pytest.raises(InvalidMessageError, match="content"):
        session.record_turn("hi", f"answer{LONE_SURROGATE}", TokenUsage(1, 1))
    assert session.messages == ()


def test_a_stored_session_with_unstorable_text_is_rejected() -> None:
    data = full_session().to_dict()
    data["metadata"] = {"user": LONE_SURROGATE}
    with pytest.raises(InvalidMessageError, match=r"metadata\.user"):
        ChatSession.from_dict(data)


def test_tabs_newlines_and_any_valid_unicode_are_fine() -> None:
    session = ChatSession(
        "a\tb 🚀", system_prompt="line\nline", metadata={"k\té": ["😀", {"x": "\U0010ffff"}]}
    )
    assert session.metadata == {"k\té": ["😀", {"x": "\U0010ffff"}]}


def test_the_version_is_not_part_of_equality_or_the_stored_form() -> None:
    session = full_session()
    copy = ChatSession.from_dict(session.to_dict())
    copy.version = 7
    assert copy == session
    assert "version" not in session.to_dict()
