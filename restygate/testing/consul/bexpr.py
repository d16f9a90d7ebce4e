"""A subset of Consul's ``?filter`` language (hashicorp/go-bexpr) for the test server.

Supported, with go-bexpr's meaning: ``Selector == "value"``, ``!=``, ``"value" in Selector`` and
``not in`` (membership in a list, or substring of a string), values quoted or numbers, ``Selector is empty`` / ``is not empty``,
combined with ``and``, ``or``, ``not`` and parentheses. A selector is a dotted path into the JSON object
the endpoint filters (``ServiceName``, ``Service.Tags``, ``Node.Meta.rack``). A selector the object does
not have, or anything else this subset does not parse, is refused with Consul's 400 wording, so a test can
never pass against data a real agent would not return.
"""

from __future__ import annotations

import json
import re
from typing import Callable, FrozenSet, List, Optional, Tuple

from .model import JSON, ConsulError

Predicate = Callable[[JSON], bool]

_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<number>-?[0-9]+(?:\.[0-9]+)?)|(?P<op>==|!=|\(|\))'
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*))"
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "empty"})


def _error(message: str) -> ConsulError:
    return ConsulError(400, f"Failed to create boolean expression evaluator: {message}")


def _tokens(text: str) -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise _error(f"syntax error at offset {position}")
        position = match.end()
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "string":
            value = json.loads(value) if value.startswith('"') else value[1:-1]
        out.append((kind, value))
    return out


def _lookup(value: JSON, path: str) -> Tuple[bool, JSON]:
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


class _Parser:
    """Recursive descent over the token list; builds a predicate, validating selectors against ``fields``."""

    def __init__(self, tokens: List[Tuple[str, str]], fields: FrozenSet[str]) -> None:
        self._tokens = tokens
        self._at = 0
        self._fields = fields

    def _peek(self) -> Optional[Tuple[str, str]]:
        return self._tokens[self._at] if self._at < len(self._tokens) else None

    def _take(self, kind: str, value: Optional[str] = None) -> str:
        token = self._peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            raise _error(f"syntax error near token {self._at + 1}")
        self._at += 1
        return token[1]

    def _is(self, kind: str, value: str) -> bool:
        return self._peek() == (kind, value)

    def parse(self) -> Predicate:
        predicate = self._or()
        if self._peek() is not None:
            raise _error(f"syntax error near token {self._at + 1}")
        return predicate

    def _or(self) -> Predicate:
        terms = [self._and()]
        while self._is("word", "or"):
            self._at += 1
            terms.append(self._and())
        return terms[0] if len(terms) == 1 else (lambda v: any(t(v) for t in terms))

    def _and(self) -> Predicate:
        terms = [self._not()]
        while self._is("word", "and"):
            self._at += 1
            terms.append(self._not())
        return terms[0] if len(terms) == 1 else (lambda v: all(t(v) for t in terms))

    def _not(self) -> Predicate:
        if self._is("word", "not"):
            self._at += 1
            inner = self._not()
            return lambda v: not inner(v)
        if self._is("op", "("):
            self._at += 1
            inner = self._or()
            self._take("op", ")")
            return inner
        return self._match()

    def _selector(self) -> str:
        token = self._peek()
        if token is None or token[0] != "word" or token[1] in _KEYWORDS:
            raise _error(f"syntax error near token {self._at + 1}")
        self._at += 1
        if token[1].split(".")[0] not in self._fields:
            raise _error(f'Selector "{token[1]}" is not valid')
        return token[1]

    def _match(self) -> Predicate:
        token = self._peek()
        if token is not None and token[0] == "string":
            self._at += 1
            needle = token[1]
            negate = self._is("word", "not")
            if negate:
                self._at += 1
            self._take("word", "in")
            path = self._selector()

            def contains(v: JSON) -> bool:
                found, value = _lookup(v, path)
                hit = found and isinstance(value, (list, str, dict)) and needle in value
                return hit != negate

            return contains
        path = self._selector()
        if self._is("word", "is"):
            self._at += 1
            negate = self._is("word", "not")
            if negate:
                self._at += 1
            self._take("word", "empty")

            def empty(v: JSON) -> bool:
                found, value = _lookup(v, path)
                return (not found or not value) != negate

            return empty
        op = self._take("op")
        if op not in ("==", "!="):
            raise _error(f"syntax error near token {self._at}")
        token = self._peek()
        if token is None or token[0] not in ("string", "number"):
            raise _error(f"syntax error near token {self._at + 1}")
        self._at += 1
        wanted = token[1]

        def equals(v: JSON) -> bool:
            found, value = _lookup(v, path)
            return (found and str(value) == wanted) == (op == "==")

        return equals


def compile_filter(text: str, fields: FrozenSet[str]) -> Predicate:
    """The predicate for ``?filter=text`` over objects whose top-level keys are ``fields``."""
    return _Parser(_tokens(text), fields).parse()
