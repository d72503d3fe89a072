"""Stop sequences: ``cut_at_stop`` on a whole text, and ``StopSequenceFilter`` while it streams."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma_chat.infrastructure.llm.generation.stop_sequences import StopSequenceFilter, cut_at_stop


def stream_through(stops: Sequence[str], deltas: Sequence[str]) -> tuple[list[str], bool]:
    """Feed ``deltas`` like a generator would (it stops once a stop is seen), then flush."""
    stop_filter = StopSequenceFilter(stops)
    pieces = []
    for delta in deltas:
        pieces.append(stop_filter.push(delta))
        if stop_filter.stopped:
            break
    pieces.append(stop_filter.flush())
    return pieces, stop_filter.stopped


def split_at(text: str, points: Sequence[int]) -> list[str]:
    """``text`` in pieces at ``points`` (those past its end left out)."""
    bounds = [0, *sorted({p for p in points if p <= len(text)}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


# -- cut_at_stop -------------------------------------------------------------------------------


def test_text_without_a_stop_sequence_is_returned_whole() -> None:
    assert cut_at_stop("hello world", ["STOP"]) == ("hello world", False)


def test_text_is_cut_before_the_stop_sequence() -> None:
    assert cut_at_stop("hello\nUser: more", ["\nUser:"]) == ("hello", True)


def test_no_stop_sequences_cut_nothing() -> None:
    assert cut_at_stop("anything", []) == ("anything", False)


def test_the_first_of_several_stop_sequences_wins() -> None:
    assert cut_at_stop("one two three", ["three", "two"]) == ("one ", True)


def test_a_stop_sequence_at_the_very_start_leaves_nothing() -> None:
    assert cut_at_stop("STOP and more", ["STOP"]) == ("", True)


def test_of_two_stops_ending_together_the_longer_cuts_earlier() -> None:
    assert cut_at_stop("hi\n\nUser: x", ["\nUser:", "\n\nUser:"]) == ("hi", True)


def test_the_stop_that_is_complete_first_decides_the_cut() -> None:
    # "c" is complete at position 3 while "abcd" only is at 4: a token-by-token generation stops
    # at "c", so the whole-text cut must agree with it.
    assert cut_at_stop("xabcd", ["abcd", "c"]) == ("xab", True)


def test_an_empty_stop_sequence_is_ignored() -> None:
    assert cut_at_stop("text", ["", "x"]) == ("te", True)
    assert cut_at_stop("text", [""]) == ("text", False)


# -- StopSequenceFilter: examples --------------------------------------------------------------


def test_text_without_stops_is_released_as_it_comes() -> None:
    stop_filter = StopSequenceFilter(["STOP"])
    assert stop_filter.push("hello ") == "hello "
    assert stop_filter.push("world") == "world"
    assert stop_filter.flush() == ""
    assert stop_filter.text == "hello world"
    assert not stop_filter.stopped


def test_a_possible_start_of_a_stop_sequence_is_held_back() -> None:
    stop_filter = StopSequenceFilter(["\nUser:"])
    assert stop_filter.push("Hi!\nUs") == "Hi!"
    assert stop_filter.text == "Hi!"


def test_a_held_back_prefix_is_released_when_it_does_not_become_a_stop() -> None:
    stop_filter = StopSequenceFilter(["\nUser:"])
    assert stop_filter.push("Hi!\nUs") == "Hi!"
    assert stop_filter.push("ually") == "\nUsually"
    assert not stop_filter.stopped


def test_flush_releases_a_held_back_prefix() -> None:
    stop_filter = StopSequenceFilter(["\nUser:"])
    assert stop_filter.push("Bye\nUse") == "Bye"
    assert stop_filter.flush() == "\nUse"
    assert stop_filter.text == "Bye\nUse"


def test_a_stop_split_over_deltas_is_caught() -> None:
    stop_filter = StopSequenceFilter(["<end>"])
    released = [stop_filter.push(d) for d in ["ok <", "en", "d> junk"]]
    assert "".join(released) == "ok "
    assert stop_filter.stopped


def test_nothing_is_released_after_a_stop() -> None:
    stop_filter = StopSequenceFilter(["STOP"])
    assert stop_filter.push("done STOP after") == "done "
    assert stop_filter.stopped
    assert stop_filter.push("more text") == ""
    assert stop_filter.flush() == ""
    assert stop_filter.text == "done "


def test_an_empty_delta_releases_nothing() -> None:
    stop_filter = StopSequenceFilter(["x"])
    assert stop_filter.push("") == ""
    assert not stop_filter.stopped


def test_without_stop_sequences_everything_is_released_at_once() -> None:
    stop_filter = StopSequenceFilter([])
    assert stop_filter.push("abc") == "abc"
    assert stop_filter.flush() == ""


def test_empty_stop_sequences_are_ignored_by_the_filter() -> None:
    stop_filter = StopSequenceFilter(["", "zz"])
    assert stop_filter.push("abc") == "abc"
    assert not stop_filter.stopped


def test_the_longest_matching_prefix_of_any_stop_is_held_back() -> None:
    stop_filter = StopSequenceFilter(["abc", "bcx"])
    assert stop_filter.push("zab") == "z"  # "ab" could become "abc"
    assert stop_filter.push("c") == ""
    assert stop_filter.stopped
    assert stop_filter.text == "z"


# -- StopSequenceFilter: any split of any text -------------------------------------------------

_ALPHABET = "ab\nU:"
_stops = st.lists(st.text(alphabet=_ALPHABET, min_size=1, max_size=4), max_size=3)
_split_points = st.lists(st.integers(min_value=0, max_value=40), max_size=12)


@st.composite
def _stops_and_text(draw: st.DrawFn) -> tuple[list[str], str]:
    """Stop sequences, and a text made of them and of single characters (so stops do occur).

    Often one stop is a piece of another that ends before it: with such overlapping stops, which
    one cuts depends on how much text has been seen, and that is where a filter goes wrong.
    """
    stops = draw(_stops)
    if stops and len(stops[0]) > 1 and draw(st.booleans()):
        first = stops[0]
        start = draw(st.integers(min_value=0, max_value=len(first) - 2))
        end = draw(st.integers(min_value=start + 1, max_value=len(first) - 1))
        stops.append(first[start:end])
    piece = st.sampled_from(_ALPHABET)
    if stops:  # as likely a whole stop as a single character
        piece = st.one_of(st.sampled_from(stops), piece)
    pieces = draw(st.lists(piece, max_size=12))
    return stops, "".join(pieces)


@settings(max_examples=200, deadline=None, database=None)
@given(case=_stops_and_text(), points=_split_points)
def test_streamed_pieces_join_to_the_whole_text_cut(
    case: tuple[list[str], str], points: list[int]
) -> None:
    stops, text = case
    deltas = split_at(text, points)
    pieces, stopped = stream_through(stops, deltas)
    expected, found = cut_at_stop(text, stops)
    assert "".join(pieces) == expected
    assert stopped == found


@settings(max_examples=200, deadline=None, database=None)
@given(case=_stops_and_text(), points=_split_points)
def test_released_text_never_contains_a_stop(
    case: tuple[list[str], str], points: list[int]
) -> None:
    stops, text = case
    stop_filter = StopSequenceFilter(stops)
    for delta in split_at(text, points):
        stop_filter.push(delta)
        released = stop_filter.text
        assert not any(stop in released for stop in stops)
        if stop_filter.stopped:
            break


@settings(max_examples=100, deadline=None, database=None)
@given(case=_stops_and_text())
def test_one_character_at_a_time_matches_the_whole_text_cut(case: tuple[list[str], str]) -> None:
    stops, text = case
    pieces, _ = stream_through(stops, list(text))
    assert "".join(pieces) == cut_at_stop(text, stops)[0]


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (["xabc", "d"], "xab"),
        (["xabcd"], "xab"),
        (["x", "a", "b", "c", "d"], "xab"),
    ],
)
def test_overlapping_stops_cut_the_same_however_the_text_is_split(
    deltas: list[str], expected: str
) -> None:
    pieces, stopped = stream_through(["abcd", "c"], deltas)
    assert "".join(pieces) == expected
    assert stopped


@settings(max_examples=300, deadline=None, database=None)
@given(case=_stops_and_text(), points=_split_points)
def test_what_is_held_back_is_the_longest_tail_that_begins_a_stop(
    case: tuple[list[str], str], points: list[int]
) -> None:
    stops, text = case
    stop_filter = StopSequenceFilter(stops)
    seen, released = "", 0
    for delta in split_at(text, points):
        stop_filter.push(delta)
        if stop_filter.stopped:
            break
        seen += delta
        longest = max(
            (
                size
                for stop in stops
                for size in range(1, min(len(stop) - 1, len(seen)) + 1)
                if seen.endswith(stop[:size])
            ),
            default=0,
        )
        released = max(released, len(seen) - longest)
        assert stop_filter.text == seen[:released]
