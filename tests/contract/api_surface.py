"""A stable text description of kube_netpol.api's public surface: names, signatures, fields and members."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import typing

import kube_netpol.api as api

_PROTOBUF = "google._upb._message"


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"


def _class(name: str, cls: type) -> list[str]:
    if cls.__module__.startswith("kube_netpol.api.generated") or type(cls).__module__.startswith("google"):
        return [f"{name}: protobuf message {cls.DESCRIPTOR.full_name}"]  # type: ignore[attr-defined]
    lines = [f"{name}: class{'(Protocol)' if getattr(cls, '_is_protocol', False) else ''}"]
    if issubclass(cls, enum.Enum):
        return lines + [f"  {member.name} = {member.value!r}" for member in cls]
    if dataclasses.is_dataclass(cls):
        lines += [f"  field {f.name}: {f.type}" for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls) if getattr(cls, "_is_protocol", False) else {}
    lines += [f"  attribute {attr}: {hint}" for attr, hint in sorted(hints.items())]
    lines += [f"  slots {tuple(cls.__slots__)}" for _ in [0] if "__slots__" in cls.__dict__ and not dataclasses.is_dataclass(cls)]
    for member, value in sorted(vars(cls).items()):
        if member.startswith("_") and member not in ("__init__", "__call__"):
            continue
        if isinstance(value, property):
            lines.append(f"  property {member}")
        elif callable(value) or isinstance(value, (classmethod, staticmethod)):
            lines.append(f"  def {member}{_signature(getattr(cls, member))}")
    return lines


def describe() -> str:
    lines: list[str] = []
    for name in sorted(api.__all__):
        obj = getattr(api, name)
        if isinstance(obj, type):
            lines += _class(name, obj)
        elif callable(obj) and not typing.get_origin(obj):
            lines.append(f"{name}: def{_signature(obj)}")
        else:
            lines.append(f"{name}: {obj!r}"[:200])
    text = "\n".join(lines) + "\n"
    return re.sub(r" at 0x[0-9a-f]+", "", text)  # object addresses differ from run to run


if __name__ == "__main__":
    # python tests/contract/api_surface.py > tests/contract/api_surface.txt   (after a deliberate API change)
    print(describe(), end="")
