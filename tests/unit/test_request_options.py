"""Prefer, Idempotency-Key and the query flags: one grammar for the server and the document.

The patterns in `gateway/prefer.py` are both what the server checks and what
`/openapi.json` publishes; the property tests hold the two readings of each pattern (the
server's Python `re`, a client's ECMA-262 engine) to the same answers.
"""

from __future__ import annotations

import functools
import re

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgate.context import REQUEST_ID_PATTERN
from batchgate.errors import BadRequest
from batchgate.gateway.prefer import (
    IDEMPOTENCY_KEY_PATTERN,
    PREFER_PATTERN,
    Preferences,
    check_idempotency_key,
    parse_prefer,
    query_flag,
)
from batchgate.models import JOB_ID_PATTERN, new_job_id


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("wait=5", Preferences(5.0)),
        ('WAIT = "2.5"', Preferences(2.5)),
        ("respond-async", Preferences(None, True)),
        ("respond-async, wait=0.1", Preferences(0.1, True)),
        ("return=minimal; foo=bar, wait=1", Preferences(1.0)),
        ('handling="a, b", wait=2', Preferences(2.0)),
        ("waitx=abc", Preferences()),
        ("wait=5;x", Preferences(5.0)),
    ],
)
def test_prefer_takes_rfc_7240_lists(header: str, parsed: Preferences) -> None:
    assert parse_prefer([header]) == parsed


@pytest.mark.parametrize(
    "header",
    ["wait", "wait=", "wait=abc", "wait=nan", "wait=inf", "wait=1e5", "wait=-1", "wait=.5",
     "wait=" + "9" * 21, "", "a,,b", "@", "wait=5 6", "wait=٣"],
)  # fmt: skip
def test_prefer_refuses_what_its_grammar_does_not_have(header: str) -> None:
    with pytest.raises(BadRequest):
        parse_prefer([header])


@pytest.mark.parametrize("key", ["a", "8e03978e-40d5-43e8", '"quoted"', "in side", "~" * 255])
def test_idempotency_keys_are_visible_ascii(key: str) -> None:
    assert check_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "caf\u00e9", "tab\there", " lead"])
def test_other_idempotency_keys_are_refused(key: str) -> None:
    with pytest.raises(BadRequest, match="1 to 255 visible ASCII"):
        check_idempotency_key(key)


def test_query_flags() -> None:
    assert query_flag("redirect", None) is False
    assert [query_flag("redirect", v) for v in ("true", "1", "false", "0")] == [
        True, True, False, False,
    ]  # fmt: skip
    with pytest.raises(BadRequest, match="redirect='yes'"):
        query_flag("redirect", "yes")


@functools.cache
def _ecma(pattern: str) -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for({"type": "string", "pattern": pattern})


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


_TOKEN = st.text("abcwait-WAIT!#*.~_019", min_size=1, max_size=8)
_VALUE = st.one_of(
    st.from_regex(r"[0-9]{1,21}(\.[0-9]{0,21})?", fullmatch=True),
    st.sampled_from(["abc", "1e5", "-1", "nan", '"2"', '"a, b"', "", " 3"]),
    _TOKEN,
)
_PREFERENCE = st.builds(
    lambda name, value, params: name + ("" if value is None else "=" + value) + params,
    st.one_of(st.sampled_from(["wait", "WAIT", "respond-async", "wait "]), _TOKEN),
    st.none() | _VALUE,
    st.sampled_from(["", ";x", "; y=1", ";", ";=2"]),
)
_PREFER = st.lists(_PREFERENCE, min_size=1, max_size=3).flatmap(
    lambda prefs: st.sampled_from([",", ", ", " ,", ",,"]).map(lambda sep: sep.join(prefs))
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_PREFER, _HEADER_TEXT))
def test_the_prefer_pattern_is_what_the_server_accepts(header: str) -> None:
    try:
        parse_prefer([header])
        accepted = True
    except BadRequest:
        accepted = False
    assert accepted == (re.fullmatch(PREFER_PATTERN, header) is not None)
    assert accepted == _ecma(PREFER_PATTERN).is_valid(header)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.from_regex(IDEMPOTENCY_KEY_PATTERN, fullmatch=True), _HEADER_TEXT))
def test_the_idempotency_key_pattern_is_what_the_server_accepts(key: str) -> None:
    key = key.strip("\n")
    try:
        check_idempotency_key(key)
        accepted = True
    except BadRequest:
        accepted = False
    documented = _ecma(IDEMPOTENCY_KEY_PATTERN).is_valid(key) and 1 <= len(key) <= 255
    assert accepted == documented


def test_ids_match_their_documented_patterns() -> None:
    for _ in range(100):
        assert re.fullmatch(JOB_ID_PATTERN, new_job_id())
    assert _ecma(REQUEST_ID_PATTERN).is_valid("req-1:a/b+c=d@e.f_g")
