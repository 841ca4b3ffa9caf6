"""The segment rule language: parsing, every operator, null and type-mismatch semantics, errors
with positions, and that no rule can run code."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.decision.domain.segments import (
    MAX_LIST_ITEMS,
    MAX_NESTING,
    MAX_RULE_LENGTH,
    RuleSyntaxError,
    Segment,
    compile_rule,
    matching_segments,
)

VISITOR: Mapping[str, object] = {
    "traffic_source": "EMAIL",
    "utm_campaign": "SOLDES_hiver",
    "device_type": "mobile",
    "country": "FR",
    "visit_number": 3,
    "first_visit": False,
    "cart_value": 59.9,
    "price_band": "premium",
    "category_affinity": {"sweaters": 0.42, "scarves": 0.1},
    "traits": frozenset({"review_sensitive", "night_owl"}),
    "attributes": {"loyalty_card": "gold"},
    "rfm_segment": None,
}


def matches(rule: str, facts: Mapping[str, object] = VISITOR) -> bool:
    return compile_rule(rule).matches(facts)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ('traffic_source == "EMAIL"', True),
        ("traffic_source == 'PAID'", False),
        ('traffic_source != "PAID"', True),
        ("visit_number < 4", True),
        ("visit_number <= 3", True),
        ("visit_number > 3", False),
        ("visit_number >= 3", True),
        ("cart_value > 59.5", True),
        ("3 == visit_number", True),
        ("4 > visit_number", True),
        ("visit_number == 3.0", True),
        ('price_band >= "basic"', True),
        ("first_visit == false", True),
        ("first_visit", False),
        ("not first_visit", True),
        ('country in ["FR", "BE"]', True),
        ('country not in ["FR", "BE"]', False),
        ("visit_number in [1, 2, 3]", True),
        ('"review_sensitive" in traits', True),
        ('"bargain_hunter" in traits', False),
        ('"bargain_hunter" not in traits', True),
        ('"sweaters" in category_affinity', True),
        ('"shoes" in category_affinity', False),
        ('category_affinity["sweaters"] > 0.4', True),
        ('category_affinity["shoes"] > 0.4', False),
        ('attributes.loyalty_card == "gold"', True),
        ("attributes.missing is null", True),
        ("attributes.loyalty_card is not null", True),
        ("rfm_segment is null", True),
        ('starts_with(utm_campaign, "SOLDES")', True),
        ('starts_with(lower(utm_campaign), "soldes")', True),
        ('ends_with(utm_campaign, "hiver")', True),
        ('contains(utm_campaign, "_h")', True),
        ('contains(traits, "night_owl")', True),
        ('contains(category_affinity, "scarves")', True),
        ('lower(device_type) == "mobile"', True),
        ("exists(attributes.loyalty_card)", True),
        ("exists(rfm_segment)", False),
        ("exists(never_heard_of)", False),
        ('TRAFFIC_SOURCE == "EMAIL"', False),  # fact names are case-sensitive, keywords are not
        ('traffic_source == "EMAIL" AND NOT first_visit', True),
        ("visit_number > -1", True),
        ("true", True),
        ("null", False),
    ],
)
def test_every_operator(rule: str, expected: bool) -> None:
    assert matches(rule) is expected


def test_and_binds_tighter_than_or_and_not_tighter_than_and() -> None:
    # Read as: true or (false and false)  -> true. Left-to-right would give false.
    assert matches("visit_number == 3 or country == 'DE' and first_visit")
    assert not matches("(visit_number == 3 or country == 'DE') and first_visit")
    # not applies to the comparison only: (not false) and true.
    assert matches("not first_visit and visit_number == 3")
    assert not matches("not (first_visit or visit_number == 3)")
    assert matches("not not (visit_number == 3)")


def test_a_missing_fact_is_null() -> None:
    assert matches("never_heard_of is null")
    assert matches("never_heard_of == null")
    assert not matches("never_heard_of == 0")
    assert matches('never_heard_of != "x"')  # != is exactly `not ==`
    assert not matches('never_heard_of["k"] > 0')
    assert not matches('"x" in never_heard_of')
    assert matches('"x" not in never_heard_of')
    assert not matches("never_heard_of", {})


@pytest.mark.parametrize(
    "rule",
    [
        "rfm_segment < 3",
        "rfm_segment >= 3",
        '"a" > 2',
        "2 < 'a'",
        "traits > 1",
        "category_affinity == category_affinity",
        "first_visit < true",
        "visit_number == '3'",
        "first_visit == 0",  # booleans are not numbers
        "0 in [false]",
        "false in [0]",
        "visit_number in ['3']",
        "starts_with(visit_number, '3')",
        "contains(cart_value, 5)",
        "lower(visit_number) == '3'",
        "traffic_source.nested == 'x'",
        "1 in traits",
    ],
)
def test_type_mismatches_are_false_not_errors(rule: str) -> None:
    assert matches(rule) is False


def test_names_lists_the_facts_read() -> None:
    rule = compile_rule('category_affinity["sweaters"] > 0.3 and (lower(country) == "fr" or "x" in traits)')
    assert rule.names == frozenset({"category_affinity", "country", "traits"})


def test_strings_support_both_quotes_and_escapes() -> None:
    facts = {"utm_campaign": 'say "hi"\n', "city": "l'Isle"}
    assert matches(r'utm_campaign == "say \"hi\"\n"', facts)
    assert matches(r"city == 'l\'Isle'", facts)
    assert matches('city == "l\'Isle"', facts)


@pytest.mark.parametrize(
    ("rule", "message", "position"),
    [
        ('(visit_number > 2 and country == "FR"', "expected ')', got end of rule", 37),
        ("visit_number > 2)", "expected 'and', 'or' or end of rule, got ')'", 16),
        ("visit_number === 2", "unknown operator '===', use '=='", 13),
        ("visit_number = 2", "unknown operator '=', use '=='", 13),
        ("a == 1 && b == 2", "unknown operator '&&', use 'and'", 7),
        ("visit_number > 2 and", "expected a value, got end of rule", 20),
        ("and visit_number > 2", "expected a value, got 'and'", 0),
        ('country == "FR', "unterminated string", 11),
        ('country == "F\\R"', "unknown escape '\\R' in string", 13),
        ("", "empty rule", 0),
        ("a == 1 == 2", "expected 'and', 'or' or end of rule, got '=='", 7),
        ("visit_number > 2 $", "unexpected character '$'", 17),
        ("country in [1, ", "expected ']' to close the list", 11),
        ("country in ['FR' 'BE']", "expected ',', got ''BE''", 17),
        ("['FR'] == country", "a list can only follow 'in'", 0),
        ("lower(a, b) == 'x'", "lower() takes 1 argument(s), got 2", 0),
        ("exists('x')", "exists() takes one fact name", 0),
        ("visit_number > 3x", "malformed number '3x'", 15),
        ("a is 3", "expected 'null', got '3'", 5),
        ("a.1 == 2", "expected a key name after '.', got '1'", 2),
        ("a[b] == 2", "expected a quoted key after '[', got 'b'", 2),
    ],
)
def test_malformed_rules_report_what_and_where(rule: str, message: str, position: int) -> None:
    with pytest.raises(RuleSyntaxError) as raised:
        compile_rule(rule)
    assert raised.value.message == message
    assert raised.value.position == position
    assert str(raised.value) == f"{message} at {position}"
    assert isinstance(raised.value, ValueError)


def test_nesting_and_size_limits() -> None:
    deep = "(" * (MAX_NESTING + 1) + "true" + ")" * (MAX_NESTING + 1)
    with pytest.raises(RuleSyntaxError, match="nested deeper"):
        compile_rule(deep)
    assert matches("(" * MAX_NESTING + "true" + ")" * MAX_NESTING)
    with pytest.raises(RuleSyntaxError, match="nested deeper"):
        compile_rule("not " * (MAX_NESTING + 1) + "true")
    with pytest.raises(RuleSyntaxError, match="longer than"):
        compile_rule("true or " * (MAX_RULE_LENGTH // 8) + "true")
    too_many = ", ".join(str(n) for n in range(MAX_LIST_ITEMS + 1))
    with pytest.raises(RuleSyntaxError, match="list longer"):
        compile_rule(f"visit_number in [{too_many}]")


@pytest.mark.parametrize(
    "rule",
    [
        '__import__("os").system("true")',
        "eval('1')",
        "open('/etc/passwd')",
        "visit_number.__class__ == 1",
        "lambda: 1",
        "[x for x in traits]",
        "().__class__",
    ],
)
def test_rules_cannot_run_code(rule: str) -> None:
    try:
        compiled = compile_rule(rule)
    except RuleSyntaxError:
        return
    # Anything that compiles is only a lookup in the facts: dunder names are just missing keys.
    assert compiled.matches(VISITOR) is False


def test_unknown_function_names_the_known_ones() -> None:
    with pytest.raises(RuleSyntaxError) as raised:
        compile_rule('__import__("os")')
    assert raised.value.position == 0
    assert "unknown function '__import__'" in raised.value.message
    assert "starts_with" in raised.value.message


def test_matching_segments_keeps_the_given_order() -> None:
    segments = [
        Segment.from_rule_text("email", "Email visitors", 'traffic_source == "EMAIL"'),
        Segment.from_rule_text("first", "First visits", "first_visit"),
        Segment.from_rule_text("sweaters", "Sweater fans", 'category_affinity["sweaters"] >= 0.3', "autumn push"),
    ]
    assert matching_segments(segments, VISITOR) == ["email", "sweaters"]
    assert matching_segments(segments, {}) == []
    with pytest.raises(RuleSyntaxError):
        Segment.from_rule_text("bad", "Bad", "visit_number >")


RULE_ALPHABET = st.sampled_from(
    [*"()[]{},.-+*/\\'\"=!<>&|$#:; _0123456789aeinotrsx", "and", "or", "not", "in", "is", "null", "lower", "exists"]
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_random_text_only_ever_raises_rule_syntax_error(text: str) -> None:
    with contextlib.suppress(RuleSyntaxError):
        compile_rule(text)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(RULE_ALPHABET, max_size=40).map(" ".join),
    st.dictionaries(
        st.sampled_from(["a", "x", "in", "e"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=5),
            st.frozensets(st.text(max_size=3), max_size=3),
            st.dictionaries(st.text(max_size=3), st.floats(), max_size=3),
        ),
    ),
)
def test_rule_like_text_compiles_or_fails_cleanly_and_matching_never_raises(
    text: str, facts: dict[str, object]
) -> None:
    try:
        rule = compile_rule(text)
    except RuleSyntaxError:
        return
    assert isinstance(rule.matches(facts), bool)
