"""Roles, messages and token usage."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from gemma_chat.domain.errors import InvalidMessageError, ValidationError
from gemma_chat.domain.models import Message, Role, TokenUsage

# -- Role --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["user", Role.USER])
def test_a_role_parses_from_its_value_or_itself(value: object) -> None:
    assert Role.parse(value) is Role.USER


def test_an_unknown_role_lists_the_accepted_ones() -> None:
    with pytest.raises(InvalidMessageError, match=r"'bot'.*system, user, assistant"):
        Role.parse("bot")


def test_a_role_is_its_string_value() -> None:
    assert Role.ASSISTANT == "assistant"
    assert f"{Role.SYSTEM}" == "system"


# -- Message -----------------------------------------------------------------------------------


def test_a_message_turns_a_role_string_into_a_role() -> None:
    message = Message("assistant", "Hi")  # type: ignore[arg-type]
    assert message.role is Role.ASSISTANT


def test_a_message_has_a_fresh_id_and_an_aware_utc_time() -> None:
    first, second = Message(Role.USER, "a"), Message(Role.USER, "a")
    assert first.id != second.id
    assert first.created_at.tzinfo is not None
    assert first.created_at.utcoffset() == UTC.utcoffset(None)


@pytest.mark.parametrize("content", ["", "   ", "\n\t"])
@pytest.mark.parametrize("role", [Role.USER, Role.SYSTEM])
def test_user_and_system_messages_must_not_be_blank(role: Role, content: str) -> None:
    with pytest.raises(InvalidMessageError, match="must not be empty"):
        Message(role, content)


def test_an_assistant_may_answer_nothing() -> None:
    assert Message(Role.ASSISTANT, "").content == ""


@pytest.mark.parametrize("content", [None, 42, b"bytes", ["list"]])
def test_content_must_be_a_string(content: object) -> None:
    with pytest.raises(InvalidMessageError, match="must be a string"):
        Message(Role.ASSISTANT, content)  # type: ignore[arg-type]


def test_an_unknown_role_is_rejected_on_construction() -> None:
    with pytest.raises(InvalidMessageError, match="Unknown role"):
        Message("wizard", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("token_count", [-1, 1.5, "3", True])
def test_a_token_count_must_be_a_non_negative_integer(token_count: object) -> None:
    with pytest.raises(InvalidMessageError, match="token_count"):
        Message(Role.USER, "x", token_count=token_count)  # type: ignore[arg-type]


@pytest.mark.parametrize("message_id", ["", None, 7])
def test_a_message_id_must_be_a_non_empty_string(message_id: object) -> None:
    with pytest.raises(InvalidMessageError, match="id"):
        Message(Role.USER, "x", id=message_id)  # type: ignore[arg-type]


def test_a_zero_token_count_is_fine() -> None:
    assert Message(Role.USER, "x", token_count=0).token_count == 0


def test_validation_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        Message(Role.USER, "")
    assert issubclass(InvalidMessageError, ValidationError)


def test_a_message_is_immutable() -> None:
    message = Message(Role.USER, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.content = "y"  # type: ignore[misc]


def test_a_message_becomes_a_role_content_dict() -> None:
    assert Message(Role.USER, "Hi").to_chat_message() == {"role": "user", "content": "Hi"}


def test_a_message_survives_a_dict_round_trip() -> None:
    message = Message(
        Role.ASSISTANT,
        "Grüße 👋",
        id="m1",
        created_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        token_count=4,
    )
    data = message.to_dict()
    assert data == {
        "id": "m1",
        "role": "assistant",
        "content": "Grüße 👋",
        "created_at": "2024-05-06T07:08:09.123456+00:00",
        "token_count": 4,
    }
    assert Message.from_dict(data) == message


def test_a_stored_message_without_a_token_count_is_fine() -> None:
    data = Message(Role.USER, "x").to_dict()
    del data["token_count"]
    assert Message.from_dict(data).token_count is None


# -- TokenUsage --------------------------------------------------------------------------------


def test_token_usage_totals_and_adds() -> None:
    usage = TokenUsage(10, 5) + TokenUsage(1, 2)
    assert usage == TokenUsage(11, 7)
    assert usage.total_tokens == 18
    assert TokenUsage().total_tokens == 0


def test_token_usage_has_a_dict_form_with_the_total() -> None:
    usage = TokenUsage(3, 4)
    assert usage.to_dict() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert TokenUsage.from_dict(usage.to_dict()) == usage


@pytest.mark.parametrize("value", [-1, 1.0, True, "2", None])
@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
def test_token_counts_must_be_non_negative_integers(field: str, value: object) -> None:
    with pytest.raises(InvalidMessageError, match=field):
        TokenUsage(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1.9, "5", float("inf"), float("nan"), True])
def test_stored_token_usage_is_not_coerced(value: object) -> None:
    with pytest.raises(InvalidMessageError):
        TokenUsage.from_dict({"prompt_tokens": value, "completion_tokens": 0})


@pytest.mark.parametrize("role", [Role.USER, Role.SYSTEM, Role.ASSISTANT])
def test_a_lone_surrogate_is_rejected_in_any_role(role: Role) -> None:
    # UTF-8 cannot encode it: neither SQLite nor a tokenizer could take the message.
    with pytest.raises(InvalidMessageError, match=r"content contains the lone surrogate U\+DC80"):
        Message(role, "ok \udc80")


def test_an_answer_may_hold_control_characters_but_a_user_may_not() -> None:
    assert Message(Role.ASSISTANT, "a\x00b").content == "a\x00b"
    with pytest.raises(InvalidMessageError, match="U\\+0000"):
        Message(Role.USER, "a\x00b")
