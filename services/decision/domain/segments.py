"""Rule-based segments: a small rule language shop staff write, compiled once into closures and
matched against a visitor's facts on every request. It never evaluates Python: names are looked up
in the facts mapping and only the functions listed below exist.

Rule language
=============

A rule is a condition on the visitor's facts::

    traffic_source == "EMAIL" and visit_number >= 2
    category_affinity["sweaters"] > 0.3 or "review_sensitive" in traits
    not (country in ["FR", "BE"]) and attributes.loyalty_card is not null
    starts_with(lower(utm_campaign), "soldes")

Grammar (keywords are case-insensitive; ``#`` is not a comment)::

    rule        := or_expr END
    or_expr     := and_expr ( "or" and_expr )*
    and_expr    := not_expr ( "and" not_expr )*
    not_expr    := "not" not_expr | comparison
    comparison  := operand [ compare_op operand
                           | [ "not" ] "in" operand
                           | "is" [ "not" ] "null" ]
    compare_op  := "==" | "!=" | "<" | "<=" | ">" | ">="
    operand     := literal | list | call | fact | "(" or_expr ")"
    fact        := NAME ( "." NAME | "[" STRING "]" )*
    call        := FUNCTION "(" [ or_expr ( "," or_expr )* ] ")"
    list        := "[" [ literal ( "," literal )* [ "," ] ] "]"
    literal     := STRING | [ "-" ] NUMBER | "true" | "false" | "null"
    STRING      := '"' ... '"' | "'" ... "'"    escapes: \\\\ \\" \\' \\n \\t
    NUMBER      := digits [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ]
    NAME        := letter or "_", then letters, digits, "_"

Precedence, loosest first: ``or``, ``and``, ``not``, comparisons; comparisons do not chain.

Functions: ``starts_with(text, prefix)``, ``ends_with(text, suffix)``, ``contains(haystack,
needle)`` (substring of a string, element of a collection, key of a mapping), ``lower(text)``,
``exists(fact)`` (the fact is present and not null).

Semantics, chosen so that a rule never fails on a request:

- A missing fact is ``null``; ``m.key`` / ``m["key"]`` look a key up in a mapping fact and give
  ``null`` when the key is missing or the fact is not a mapping.
- ``==`` holds only between values of the same kind (string, number, boolean, null); ``!=`` is
  exactly ``not ==``, so ``country != "FR"`` matches a visitor whose country is unknown.
- ``<``, ``<=``, ``>``, ``>=`` compare two numbers or two strings; any other pair is false
  (``null < 3`` and ``"a" > 2`` are false, never an error).
- ``x in [...]`` is equality with an element; ``"s" in traits`` is membership in a collection fact;
  ``"k" in category_affinity`` is a key of a mapping fact; anything else is false. ``not in`` is
  ``not (x in y)``.
- The rule matches when it evaluates to exactly ``true``; a bare non-boolean value does not match.

Limits keep a hostile rule cheap: at most ``MAX_RULE_LENGTH`` characters, ``MAX_NESTING``
levels of parentheses / ``not`` / calls, and ``MAX_LIST_ITEMS`` items per list.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

MAX_RULE_LENGTH: Final = 2000
MAX_NESTING: Final = 32
MAX_LIST_ITEMS: Final = 200

Facts = Mapping[str, object]
Evaluator = Callable[[Facts], object]


class RuleSyntaxError(ValueError):
    """A rule that does not compile; `position` is the 0-based character offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at {position}")
        self.message = message
        self.position = position


# Token kinds.
_STRING: Final = "string"
_NUMBER: Final = "number"
_NAME: Final = "name"
_KEYWORD: Final = "keyword"
_SYMBOL: Final = "symbol"
_END: Final = "end"

_KEYWORDS: Final = frozenset({"and", "or", "not", "in", "is", "null", "true", "false"})
_COMPARE_OPS: Final = ("==", "!=", "<=", ">=", "<", ">")
_PUNCTUATION: Final = frozenset("()[],.-")
# Operators from other languages staff are likely to type, with what to write instead.
_FOREIGN_OPERATORS: Final = {
    "&&": "and",
    "||": "or",
    "===": "==",
    "!==": "!=",
    "<>": "!=",
    "=": "==",
    "!": "not",
    "&": "and",
    "|": "or",
}
_ESCAPES: Final = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str  # keywords lowercased, symbols as written
    value: object  # decoded string or number
    position: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char.isspace():
            index += 1
        elif char in "\"'":
            value, index_after = _read_string(text, index)
            tokens.append(_Token(_STRING, text[index:index_after], value, index))
            index = index_after
        elif _is_digit(char):
            number, index_after = _read_number(text, index)
            tokens.append(_Token(_NUMBER, text[index:index_after], number, index))
            index = index_after
        elif char.isalpha() or char == "_":
            end = index + 1
            while end < length and (text[end].isalnum() or text[end] == "_"):
                end += 1
            word = text[index:end]
            if not word.isascii():
                raise RuleSyntaxError(f"names must be ASCII, got '{word}'", index)
            lowered = word.lower()
            kind = _KEYWORD if lowered in _KEYWORDS else _NAME
            # A keyword keeps its spelling in `value` for when it is a map key (attributes.Is).
            tokens.append(_Token(kind, lowered if kind == _KEYWORD else word, word, index))
            index = end
        else:
            operator = _read_operator(text, index)
            tokens.append(_Token(_SYMBOL, operator, None, index))
            index += len(operator)
    tokens.append(_Token(_END, "end of rule", None, length))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    parts: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == quote:
            return "".join(parts), index + 1
        if char == "\\":
            escaped = text[index + 1 : index + 2]
            if escaped not in _ESCAPES:
                raise RuleSyntaxError(f"unknown escape '\\{escaped}' in string", index)
            parts.append(_ESCAPES[escaped])
            index += 2
        else:
            parts.append(char)
            index += 1
    raise RuleSyntaxError("unterminated string", start)


def _is_digit(char: str) -> bool:
    # str.isdigit() also accepts "²" and other digits int() rejects.
    return "0" <= char <= "9" and len(char) == 1


def _read_number(text: str, start: int) -> tuple[int | float, int]:
    index = start

    def digits() -> None:
        nonlocal index
        while index < len(text) and _is_digit(text[index]):
            index += 1

    digits()
    is_float = False
    if text[index : index + 1] == "." and _is_digit(text[index + 1 : index + 2]):
        is_float = True
        index += 1
        digits()
    if text[index : index + 1] in ("e", "E"):
        exponent_start = index
        index += 1
        if text[index : index + 1] in ("+", "-"):
            index += 1
        if not _is_digit(text[index : index + 1]):
            raise RuleSyntaxError("malformed number exponent", exponent_start)
        is_float = True
        digits()
    if index < len(text) and (text[index].isalnum() or text[index] == "_"):
        raise RuleSyntaxError(f"malformed number '{text[start : index + 1]}'", start)
    literal = text[start:index]
    if is_float:
        number = float(literal)
        if not math.isfinite(number):
            raise RuleSyntaxError(f"number out of range '{literal}'", start)
        return number, index
    return int(literal), index


def _read_operator(text: str, start: int) -> str:
    # Longer foreign operators first: "===" and "<>" would otherwise read as "==" and "<".
    for foreign in ("===", "!==", "<>", "&&", "||"):
        if text.startswith(foreign, start):
            raise RuleSyntaxError(f"unknown operator '{foreign}', use '{_FOREIGN_OPERATORS[foreign]}'", start)
    for symbol in _COMPARE_OPS:
        if text.startswith(symbol, start):
            return symbol
    char = text[start]
    if char in _FOREIGN_OPERATORS:
        raise RuleSyntaxError(f"unknown operator '{char}', use '{_FOREIGN_OPERATORS[char]}'", start)
    if char in _PUNCTUATION:
        return char
    raise RuleSyntaxError(f"unexpected character {char!r}", start)


# Value kinds for comparisons; bool is checked before int because bool subclasses int.
_KIND_NULL: Final = 0
_KIND_BOOL: Final = 1
_KIND_NUMBER: Final = 2
_KIND_STRING: Final = 3
_KIND_OTHER: Final = 4

_COLLECTIONS: Final = (set, frozenset, tuple, list)


def _kind(value: object) -> int:
    if value is None:
        return _KIND_NULL
    if isinstance(value, bool):
        return _KIND_BOOL
    if isinstance(value, int | float):
        return _KIND_NUMBER
    if isinstance(value, str):
        return _KIND_STRING
    return _KIND_OTHER


def _equal(left: object, right: object) -> bool:
    kind = _kind(left)
    return kind == _kind(right) and kind != _KIND_OTHER and left == right


def _less(left: object, right: object) -> bool:
    kind = _kind(left)
    if kind != _kind(right) or kind not in (_KIND_NUMBER, _KIND_STRING):
        return False
    return bool(left < right)  # type: ignore[operator]


def _less_equal(left: object, right: object) -> bool:
    kind = _kind(left)
    if kind != _kind(right) or kind not in (_KIND_NUMBER, _KIND_STRING):
        return False
    return bool(left <= right)  # type: ignore[operator]


_COMPARATORS: Final[Mapping[str, Callable[[object, object], bool]]] = {
    "==": _equal,
    "!=": lambda left, right: not _equal(left, right),
    "<": _less,
    "<=": _less_equal,
    ">": lambda left, right: _less(right, left),
    ">=": lambda left, right: _less_equal(right, left),
}


_MIRRORED: Final = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_PYTHON_OPERATORS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _contained(element: object, container: object) -> bool:
    """`element in container` for a collection fact or a mapping fact, never raising."""
    if isinstance(container, _COLLECTIONS):
        if isinstance(element, str):
            # Strings only equal strings, so the container's own (often hashed) lookup is exact.
            return element in container
        if isinstance(element, int | float) or element is None:
            return any(_equal(element, item) for item in container)
        return False
    if isinstance(container, Mapping):
        return isinstance(element, str) and element in container
    return False


@dataclass(frozen=True, slots=True)
class _ListLiteral:
    """A list literal split by kind so `in` is a set lookup that never confuses true with 1."""

    strings: frozenset[str]
    numbers: frozenset[float]
    booleans: frozenset[bool]
    has_null: bool

    def holds(self, element: object) -> bool:
        kind = _kind(element)
        if kind == _KIND_STRING:
            return element in self.strings
        if kind == _KIND_NUMBER:
            return element in self.numbers
        if kind == _KIND_BOOL:
            return element in self.booleans
        return kind == _KIND_NULL and self.has_null


def _constant(value: object) -> Evaluator:
    return lambda facts: value


def _fact_lookup(name: str, keys: Sequence[str]) -> Evaluator:
    if not keys:
        return lambda facts: facts.get(name)
    key_path = tuple(keys)

    def lookup(facts: Facts) -> object:
        value = facts.get(name)
        for key in key_path:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value

    return lookup


def _as_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else None


def _starts_with(text: object, prefix: object) -> bool:
    return isinstance(text, str) and isinstance(prefix, str) and text.startswith(prefix)


def _ends_with(text: object, suffix: object) -> bool:
    return isinstance(text, str) and isinstance(suffix, str) and text.endswith(suffix)


def _contains(haystack: object, needle: object) -> bool:
    if isinstance(haystack, str):
        return isinstance(needle, str) and needle in haystack
    return _contained(needle, haystack)


_FUNCTIONS: Final[Mapping[str, tuple[int, Callable[..., object]]]] = {
    "starts_with": (2, _starts_with),
    "ends_with": (2, _ends_with),
    "contains": (2, _contains),
    "lower": (1, _as_lower),
}
_KNOWN_FUNCTIONS: Final = ", ".join(sorted([*_FUNCTIONS, "exists"]))


@dataclass(frozen=True, slots=True)
class _Node:
    """A compiled piece of a rule, with what the compiler needs to know about it."""

    evaluate: Evaluator
    constant: bool = False  # a literal: lets `in [..]` and comparisons fold at compile time
    fact_path: tuple[str, ...] = ()  # set when the node is a plain fact lookup (for exists())


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0
        self.names: set[str] = set()

    # -- token helpers --------------------------------------------------------------------------
    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != _END:
            self.index += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        token = self.current
        return token.kind == kind and (text is None or token.text == text)

    def expect(self, kind: str, text: str) -> _Token:
        if not self.at(kind, text):
            raise RuleSyntaxError(f"expected '{text}', got {self.describe(self.current)}", self.current.position)
        return self.advance()

    @staticmethod
    def describe(token: _Token) -> str:
        return "end of rule" if token.kind == _END else f"'{token.text}'"

    def enter(self, position: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise RuleSyntaxError(f"rule nested deeper than {MAX_NESTING} levels", position)

    def leave(self) -> None:
        self.depth -= 1

    # -- grammar --------------------------------------------------------------------------------
    def parse_rule(self) -> Evaluator:
        if self.at(_END):
            raise RuleSyntaxError("empty rule", 0)
        node = self.parse_or()
        if not self.at(_END):
            token = self.current
            raise RuleSyntaxError(f"expected 'and', 'or' or end of rule, got {self.describe(token)}", token.position)
        return node.evaluate

    def parse_or(self) -> _Node:
        terms = [self.parse_and()]
        while self.at(_KEYWORD, "or"):
            self.advance()
            terms.append(self.parse_and())
        if len(terms) == 1:
            return terms[0]
        evaluators = tuple(term.evaluate for term in terms)

        def any_true(facts: Facts) -> bool:
            # A plain loop: any() over a generator costs about a microsecond more per rule.
            for evaluate in evaluators:  # noqa: SIM110
                if evaluate(facts) is True:
                    return True
            return False

        return _Node(any_true)

    def parse_and(self) -> _Node:
        terms = [self.parse_not()]
        while self.at(_KEYWORD, "and"):
            self.advance()
            terms.append(self.parse_not())
        if len(terms) == 1:
            return terms[0]
        evaluators = tuple(term.evaluate for term in terms)

        def all_true(facts: Facts) -> bool:
            for evaluate in evaluators:  # noqa: SIM110 (same reason as any_true)
                if evaluate(facts) is not True:
                    return False
            return True

        return _Node(all_true)

    def parse_not(self) -> _Node:
        if self.at(_KEYWORD, "not"):
            token = self.advance()
            self.enter(token.position)
            inner = self.parse_not().evaluate
            self.leave()
            return _Node(lambda facts: inner(facts) is not True)
        return self.parse_comparison()

    def parse_comparison(self) -> _Node:
        left = self.parse_operand()
        token = self.current
        if token.kind == _SYMBOL and token.text in _COMPARATORS:
            self.advance()
            right = self.parse_operand()
            return self.compare(token.text, left, right)
        if self.at(_KEYWORD, "in"):
            self.advance()
            return self.membership(left, negated=False)
        if self.at(_KEYWORD, "not") and self.tokens[self.index + 1].text == "in":
            self.advance()
            self.advance()
            return self.membership(left, negated=True)
        if self.at(_KEYWORD, "is"):
            self.advance()
            negated = self.at(_KEYWORD, "not")
            if negated:
                self.advance()
            self.expect(_KEYWORD, "null")
            value = left.evaluate
            if negated:
                return _Node(lambda facts: value(facts) is not None)
            return _Node(lambda facts: value(facts) is None)
        return left

    @staticmethod
    def compare(operator_text: str, left: _Node, right: _Node) -> _Node:
        if left.constant and not right.constant:
            left, right = right, left
            operator_text = _MIRRORED[operator_text]
        left_value, right_value = left.evaluate, right.evaluate
        if not right.constant:
            comparator = _COMPARATORS[operator_text]
            return _Node(lambda facts: comparator(left_value(facts), right_value(facts)))
        # A fact against a literal is the common case (visit_number >= 2): specialise on the
        # literal's kind so matching does one type check and one Python comparison.
        constant = right_value({})
        kind = _kind(constant)
        if kind == _KIND_STRING and operator_text == "==":
            return _Node(lambda facts: left_value(facts) == constant)
        if kind == _KIND_STRING and operator_text == "!=":
            return _Node(lambda facts: left_value(facts) != constant)
        if kind in (_KIND_NUMBER, _KIND_STRING):
            python_operator = _PYTHON_OPERATORS[operator_text]
            accepted = (int, float) if kind == _KIND_NUMBER else (str,)

            def compare_to_literal(facts: Facts) -> bool:
                value = left_value(facts)
                return (
                    isinstance(value, accepted)
                    and value is not True
                    and value is not False
                    and python_operator(value, constant)
                )

            return _Node(compare_to_literal)
        comparator = _COMPARATORS[operator_text]
        return _Node(lambda facts: comparator(left_value(facts), constant))

    def membership(self, element: _Node, negated: bool) -> _Node:
        element_value = element.evaluate
        if self.at(_SYMBOL, "["):
            choices = self.parse_list()
            if negated:
                return _Node(lambda facts: not choices.holds(element_value(facts)))
            return _Node(lambda facts: choices.holds(element_value(facts)))
        container_value = self.parse_operand().evaluate
        if negated:
            return _Node(lambda facts: not _contained(element_value(facts), container_value(facts)))
        return _Node(lambda facts: _contained(element_value(facts), container_value(facts)))

    def parse_operand(self) -> _Node:
        token = self.current
        if token.kind in (_STRING, _NUMBER) or (token.kind == _KEYWORD and token.text in ("true", "false", "null")):
            return _Node(_constant(self.parse_literal()), constant=True)
        if token.kind == _SYMBOL and token.text == "-":
            return _Node(_constant(self.parse_literal()), constant=True)
        if token.kind == _SYMBOL and token.text == "(":
            self.advance()
            self.enter(token.position)
            inner = self.parse_or()
            self.leave()
            self.expect(_SYMBOL, ")")
            return inner
        if token.kind == _SYMBOL and token.text == "[":
            raise RuleSyntaxError("a list can only follow 'in'", token.position)
        if token.kind == _NAME:
            if self.tokens[self.index + 1].text == "(":
                return self.parse_call()
            return self.parse_fact()
        if token.kind == _END:
            raise RuleSyntaxError("expected a value, got end of rule", token.position)
        raise RuleSyntaxError(f"expected a value, got {self.describe(token)}", token.position)

    def parse_literal(self) -> object:
        token = self.advance()
        if token.kind in (_STRING, _NUMBER):
            return token.value
        if token.kind == _KEYWORD and token.text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token.text]
        if token.kind == _SYMBOL and token.text == "-":
            number = self.current
            if number.kind != _NUMBER:
                raise RuleSyntaxError("expected a number after '-'", token.position)
            self.advance()
            value = number.value
            assert isinstance(value, int | float)
            return -value
        raise RuleSyntaxError(f"expected a literal, got {self.describe(token)}", token.position)

    def parse_list(self) -> _ListLiteral:
        opening = self.expect(_SYMBOL, "[")
        items: list[object] = []
        while not self.at(_SYMBOL, "]"):
            if len(items) >= MAX_LIST_ITEMS:
                raise RuleSyntaxError(f"list longer than {MAX_LIST_ITEMS} items", self.current.position)
            if self.at(_END):
                raise RuleSyntaxError("expected ']' to close the list", opening.position)
            items.append(self.parse_literal())
            if not self.at(_SYMBOL, "]"):
                self.expect(_SYMBOL, ",")
        self.advance()
        return _ListLiteral(
            strings=frozenset(item for item in items if isinstance(item, str)),
            numbers=frozenset(item for item in items if isinstance(item, int | float) and not isinstance(item, bool)),
            booleans=frozenset(item for item in items if isinstance(item, bool)),
            has_null=any(item is None for item in items),
        )

    def parse_fact(self) -> _Node:
        name = self.advance().text
        self.names.add(name)
        keys: list[str] = []
        while self.at(_SYMBOL, ".") or self.at(_SYMBOL, "["):
            separator = self.advance()
            if separator.text == ".":
                key = self.current
                if key.kind not in (_NAME, _KEYWORD):
                    raise RuleSyntaxError(f"expected a key name after '.', got {self.describe(key)}", key.position)
                keys.append(str(self.advance().value))
            else:
                key = self.current
                if key.kind != _STRING:
                    raise RuleSyntaxError(f"expected a quoted key after '[', got {self.describe(key)}", key.position)
                value = self.advance().value
                assert isinstance(value, str)
                keys.append(value)
                self.expect(_SYMBOL, "]")
        return _Node(_fact_lookup(name, keys), fact_path=(name, *keys))

    def parse_call(self) -> _Node:
        name_token = self.advance()
        name = name_token.text
        if name != "exists" and name not in _FUNCTIONS:
            raise RuleSyntaxError(f"unknown function '{name}' (known: {_KNOWN_FUNCTIONS})", name_token.position)
        opening = self.expect(_SYMBOL, "(")
        self.enter(opening.position)
        arguments: list[_Node] = []
        while not self.at(_SYMBOL, ")"):
            if arguments:
                self.expect(_SYMBOL, ",")
            arguments.append(self.parse_or())
        self.advance()
        self.leave()
        if name == "exists":
            if len(arguments) != 1 or not arguments[0].fact_path:
                raise RuleSyntaxError("exists() takes one fact name", name_token.position)
            value = arguments[0].evaluate
            return _Node(lambda facts: value(facts) is not None)
        arity, function = _FUNCTIONS[name]
        if len(arguments) != arity:
            raise RuleSyntaxError(f"{name}() takes {arity} argument(s), got {len(arguments)}", name_token.position)
        if arity == 1:
            only = arguments[0].evaluate
            return _Node(lambda facts: function(only(facts)))
        first, second = arguments[0].evaluate, arguments[1].evaluate
        return _Node(lambda facts: function(first(facts), second(facts)))


@dataclass(frozen=True, slots=True)
class SegmentRule:
    """A compiled rule: `matches` runs the closures built once by `compile_rule`."""

    text: str
    names: frozenset[str]  # the facts the rule reads, so the caller can build only those
    _evaluate: Evaluator = field(repr=False, compare=False)

    def matches(self, facts: Facts) -> bool:
        return self._evaluate(facts) is True


def compile_rule(text: str) -> SegmentRule:
    """Parses and compiles a rule; raises RuleSyntaxError with the offending position."""
    if len(text) > MAX_RULE_LENGTH:
        raise RuleSyntaxError(f"rule longer than {MAX_RULE_LENGTH} characters", MAX_RULE_LENGTH)
    parser = _Parser(text)
    evaluate = parser.parse_rule()
    return SegmentRule(text=text, names=frozenset(parser.names), _evaluate=evaluate)


@dataclass(frozen=True, slots=True)
class Segment:
    segment_id: str
    name: str
    rule_text: str
    rule: SegmentRule
    description: str = ""

    @classmethod
    def from_rule_text(cls, segment_id: str, name: str, rule_text: str, description: str = "") -> Segment:
        """Compiles `rule_text`; raises RuleSyntaxError when it does not compile."""
        return cls(segment_id, name, rule_text, compile_rule(rule_text), description)


def matching_segments(segments: Iterable[Segment], facts: Facts) -> list[str]:
    """Ids of the segments whose rule the visitor's facts match, in the order given."""
    return [segment.segment_id for segment in segments if segment.rule.matches(facts)]
