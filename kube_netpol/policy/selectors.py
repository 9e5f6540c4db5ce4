"""Kubernetes label selectors, compiled once when a policy changes."""

from __future__ import annotations

import re
from typing import Any, Mapping

from kube_netpol.api.errors import InvalidObject

_SET_OPERATORS = ("In", "NotIn")
_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_label_key(key: object, path: str) -> str:
    """A qualified name, as the API server requires: [prefix/]name."""
    if not isinstance(key, str):
        raise InvalidObject(f"invalid label key {key!r}", path)
    prefix, _, name = key.rpartition("/")
    if (
        not name
        or len(name) > 63
        or not _NAME.match(name)
        or ("/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
    ):
        raise InvalidObject(f"invalid label key {key!r}", path)
    return key


def check_label_value(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidObject(f"label value {value!r} must be a string", path)
    if len(value) > 63 or (value and not _NAME.match(value)):
        raise InvalidObject(f"invalid label value {value!r}", path)
    return value
_EXISTENCE_OPERATORS = ("Exists", "DoesNotExist")


class LabelSelector:
    """A compiled metav1.LabelSelector: matchLabels AND every matchExpression.

    An empty selector matches everything. ``matches`` takes any mapping with
    ``get`` and ``in`` (a dict or a protobuf map field).
    """

    __slots__ = ("_equal", "_expressions", "matches_all", "source")

    def __init__(
        self,
        equal: tuple[tuple[str, str], ...] = (),
        expressions: tuple[tuple[str, str, frozenset[str]], ...] = (),
        source: Mapping[str, Any] | None = None,
    ) -> None:
        self._equal = equal
        self._expressions = expressions
        self.matches_all = not equal and not expressions
        self.source = source or {}

    @property
    def required_labels(self) -> tuple[tuple[str, str], ...]:
        """The matchLabels pairs: a pod lacking any of them is never matched (an index key)."""
        return self._equal

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.matches_all:
            return True
        get = labels.get
        for key, expected in self._equal:
            if get(key) != expected:
                return False
        for key, operator, values in self._expressions:
            value = get(key)
            if operator == "In":
                if value is None or value not in values:
                    return False
            elif operator == "NotIn":
                if value is not None and value in values:
                    return False
            elif operator == "Exists":
                if value is None:
                    return False
            elif value is not None:  # DoesNotExist
                return False
        return True

    def __repr__(self) -> str:
        return f"LabelSelector({self.source!r})"


MATCH_ALL = LabelSelector()


def parse_label_selector(obj: Any, path: str = "selector") -> LabelSelector:
    """Compile a LabelSelector object; raise InvalidObject on anything malformed."""
    if obj is None:
        obj = {}
    if not isinstance(obj, Mapping):
        raise InvalidObject("must be an object", path)
    unknown = set(obj) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise InvalidObject(f"unknown field(s) {sorted(unknown)}", path)
    match_labels = obj.get("matchLabels")
    if match_labels is None:
        match_labels = {}
    if not isinstance(match_labels, Mapping):
        raise InvalidObject("must be an object", f"{path}.matchLabels")
    equal: list[tuple[str, str]] = []
    for key, value in match_labels.items():
        where = f"{path}.matchLabels"
        equal.append((check_label_key(key, where), check_label_value(value, where)))
    expressions: list[tuple[str, str, frozenset[str]]] = []
    raw_expressions = obj.get("matchExpressions")
    if raw_expressions is None:
        raw_expressions = []
    if not isinstance(raw_expressions, list):
        raise InvalidObject("must be a list", f"{path}.matchExpressions")
    for i, expr in enumerate(raw_expressions):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise InvalidObject("must be an object", where)
        unknown_fields = set(expr) - {"key", "operator", "values"}
        if unknown_fields:
            raise InvalidObject(f"unknown field(s) {sorted(unknown_fields)}", where)
        key = expr.get("key")
        operator = expr.get("operator")
        values = expr.get("values")
        if values is None:
            values = []
        if not key:
            raise InvalidObject("key is required", where)
        check_label_key(key, where)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidObject("values must be a list of strings", where)
        for value in values:
            check_label_value(value, f"{where}.values")
        if operator in _SET_OPERATORS:
            if not values:
                raise InvalidObject(f"operator {operator} needs at least one value", where)
        elif operator in _EXISTENCE_OPERATORS:
            if values:
                raise InvalidObject(f"operator {operator} takes no values", where)
        else:
            raise InvalidObject(f"unknown operator {operator!r} (expected In, NotIn, Exists or DoesNotExist)", where)
        expressions.append((key, operator, frozenset(values)))
    return LabelSelector(tuple(equal), tuple(expressions), dict(obj))
