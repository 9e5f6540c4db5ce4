"""Small checks of scenario fields; each raises ScenarioError naming the field and what is wrong."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from kube_netpol.tools.conformance.errors import ScenarioError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def as_mapping(data: object, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ScenarioError(f"must be a mapping, not {type_name(data)}", where)
    return data


def as_list(data: object, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise ScenarioError(f"must be a list, not {type_name(data)}", where)
    return data


def as_string(data: object, where: str, allow_empty: bool = False) -> str:
    if not isinstance(data, str) or (not data and not allow_empty):
        raise ScenarioError(f"must be a non-empty string, not {type_name(data)}", where)
    return data


TYPE_NAMES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


def type_name(data: object) -> str:
    if data is None:
        return "nothing"
    kind = TYPE_NAMES.get(type(data), type(data).__name__)
    return kind if isinstance(data, (list, dict)) else f"{kind} {data!r}"


def check_fields(
    data: Mapping[str, Any], where: str, required: Sequence[str] = (), optional: Sequence[str] = ()
) -> None:
    # Unknown fields first: a misspelt required field is best reported as the misspelling.
    allowed = (*required, *optional)
    for key in data:
        if key not in allowed:
            raise ScenarioError(f"unknown field {key!r} (expected: {', '.join(map(str, allowed))})", where)
    for key in required:
        if key not in data:
            raise ScenarioError(f"{key} is required", where)


def valid_name(data: object, where: str, pattern: re.Pattern[str], what: str) -> str:
    text = as_string(data, where)
    if not pattern.match(text) or len(text) > 253:
        raise ScenarioError(f"{text!r} is not a valid name for {what} (lower case letters, digits, '-')", where)
    return text


def valid_names(data: object, where: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    names = tuple(valid_name(item, f"{where}[{i}]", pattern, what) for i, item in enumerate(as_list(data, where)))
    no_duplicates(names, where, "name")
    return names


def choice(data: object, where: str, choices: Sequence[str]) -> str:
    if data not in choices:
        raise ScenarioError(f"must be one of {', '.join(choices)}, not {type_name(data)}", where)
    return str(data)


def port_number(data: object, where: str) -> int:
    if isinstance(data, bool) or not isinstance(data, int) or not 1 <= data <= 65535:
        raise ScenarioError(f"must be a port number 1-65535, not {type_name(data)}", where)
    return data


def port_name(data: object, where: str) -> str:
    text = as_string(data, where)
    if len(text) > 15 or not _PORT_NAME.match(text) or "--" in text or not any(c.isalpha() for c in text):
        raise ScenarioError(
            f"{text!r} is not a port name (at most 15 lower case letters, digits and '-', with a letter)", where
        )
    return text


def label_map(data: object, where: str) -> dict[str, str]:
    if data is None:
        return {}
    given = as_mapping(data, where)
    for key, value in given.items():
        if not isinstance(key, str) or not key:
            raise ScenarioError(f"label key {key!r} must be a non-empty string", where)
        if not isinstance(value, str):
            # YAML reads `version: 1` or `enabled: true` as a number or a boolean.
            raise ScenarioError(f"label {key!r} must have a string value, not {type_name(value)} (quote it)", where)
    return dict(given)


def no_duplicates(items: Iterable[object], where: str, what: str) -> None:
    seen: set[object] = set()
    for item in items:
        if item in seen:
            raise ScenarioError(f"{what} {item!r} appears twice", where)
        seen.add(item)
