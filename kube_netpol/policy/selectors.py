"""Kubernetes label selectors, compiled once when a policy changes."""

from __future__ import annotations

from typing import Any, Mapping

from kube_netpol.policy.errors import InvalidObject

_SET_OPERATORS = ("In", "NotIn")
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

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.matches_all:
            return True
        get = labels.get
        for key, value in self._equal:
            if get(key) != value:
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
    match_labels = obj.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise InvalidObject("must be an object", f"{path}.matchLabels")
    equal: list[tuple[str, str]] = []
    for key, value in match_labels.items():
        if not isinstance(key, str) or not key:
            raise InvalidObject(f"invalid label key {key!r}", f"{path}.matchLabels")
        if not isinstance(value, str):
            raise InvalidObject(f"label value for {key!r} must be a string", f"{path}.matchLabels")
        equal.append((key, value))
    expressions: list[tuple[str, str, frozenset[str]]] = []
    raw_expressions = obj.get("matchExpressions") or []
    if not isinstance(raw_expressions, list):
        raise InvalidObject("must be a list", f"{path}.matchExpressions")
    for i, expr in enumerate(raw_expressions):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise InvalidObject("must be an object", where)
        key = expr.get("key")
        operator = expr.get("operator")
        values = expr.get("values") or []
        if not isinstance(key, str) or not key:
            raise InvalidObject("key is required", where)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidObject("values must be a list of strings", where)
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
