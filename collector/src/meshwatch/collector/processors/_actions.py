"""Attribute actions shared by the ``attributes`` and ``resource`` processors.

The same ``actions: [{key, value | from_attribute | default_value, pattern,
converted_type, action}]`` list as the OpenTelemetry Collector's
``attraction`` package, with the same meaning: ``insert`` (only when absent),
``update`` (only when present), ``upsert``, ``delete`` (key and/or key regex
``pattern``), ``hash`` (SHA-256 hex, value types hashed as the Collector does),
``extract`` (named regex groups of a string value become attributes) and
``convert`` (to ``string``, ``int`` or ``double``). Actions run in order on a
repeated ``KeyValue`` field in place.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ..otlp_values import any_to_string, find, python_to_any

__all__ = ["ActionConfig", "compile_actions", "hash_value"]

ActionName = Literal["insert", "update", "upsert", "delete", "hash", "extract", "convert"]


class ActionConfig(BaseModel):
    """One entry of ``actions``; combinations the Collector refuses are refused here too."""

    model_config = ConfigDict(extra="forbid")

    key: str = ""
    value: Any = None
    from_attribute: str = ""
    default_value: Any = None
    pattern: str = ""
    converted_type: Literal["string", "int", "double"] | None = None
    action: ActionName

    @field_validator("action", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> ActionConfig:
        sources = (self.value is not None) + bool(self.from_attribute)
        act = self.action
        if act in ("delete", "hash"):
            if not self.key and not self.pattern:
                raise ValueError(f"action {act!r} needs 'key' or 'pattern'")
            if sources:
                raise ValueError(f"action {act!r} takes no 'value' or 'from_attribute'")
        elif not self.key:
            raise ValueError(f"action {act!r} needs 'key'")
        if act in ("insert", "update", "upsert"):
            if sources == 0 and self.default_value is None:
                raise ValueError(f"action {act!r} on {self.key!r} needs 'value', 'from_attribute' or 'default_value'")
            if sources > 1:
                raise ValueError(f"action {act!r} on {self.key!r}: give only one of 'value' and 'from_attribute'")
            if self.pattern:
                raise ValueError(f"action {act!r} does not use 'pattern'")
        if act == "extract":
            if sources:
                raise ValueError("action 'extract' takes no value source")
            if not self.pattern:
                raise ValueError(f"action 'extract' on {self.key!r} needs 'pattern'")
            compiled = _compile(self.pattern)
            if not compiled.groupindex or compiled.groups != len(compiled.groupindex):
                raise ValueError(f"'pattern' {self.pattern!r} must use only named groups (?P<name>...)")
        elif self.pattern:
            _compile(self.pattern)
        if act == "convert":
            if self.converted_type is None:
                raise ValueError(f"action 'convert' on {self.key!r} needs 'converted_type' (string, int, double)")
            if sources or self.pattern:
                raise ValueError("action 'convert' takes only 'key' and 'converted_type'")
        elif self.converted_type is not None:
            raise ValueError(f"action {act!r} does not use 'converted_type'")
        return self


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"'pattern' {pattern!r} is not a valid regular expression: {exc}") from None


def hash_value(value: Any) -> None:
    """Replace an ``AnyValue`` by the hex SHA-256 of its value, as the Collector's ``sha2Hasher``."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        data = value.string_value.encode()
    elif kind == "bool_value":
        data = b"\x01" if value.bool_value else b"\x00"
    elif kind == "int_value":
        data = struct.pack("<q", value.int_value)
    elif kind == "double_value":
        data = struct.pack("<d", value.double_value)
    else:
        value.string_value = ""
        return
    value.string_value = hashlib.sha256(data).hexdigest()


def _convert(value: Any, target: str) -> None:
    kind = value.WhichOneof("value")
    if target == "string":
        if kind != "string_value":
            value.string_value = any_to_string(value)
        return
    if target == "int":
        if kind == "string_value":
            try:
                value.int_value = int(value.string_value.strip())
            except ValueError:
                try:
                    value.int_value = int(float(value.string_value))
                except (ValueError, OverflowError):
                    return
        elif kind == "double_value":
            try:
                value.int_value = int(value.double_value)
            except (ValueError, OverflowError):
                return
        elif kind == "bool_value":
            value.int_value = int(value.bool_value)
        return
    if kind == "string_value":
        try:
            value.double_value = float(value.string_value)
        except ValueError:
            return
    elif kind == "int_value":
        value.double_value = float(value.int_value)
    elif kind == "bool_value":
        value.double_value = 1.0 if value.bool_value else 0.0


Apply = Callable[[Any], bool]


def _compile_set(cfg: ActionConfig) -> Apply:
    """insert / update / upsert."""
    key = cfg.key
    act = cfg.action
    constant = python_to_any(cfg.value) if cfg.value is not None else None
    default = python_to_any(cfg.default_value) if cfg.default_value is not None else None
    source = cfg.from_attribute

    def source_value(attrs: Any) -> Any:
        if constant is not None:
            return constant
        if source:
            index = find(attrs, source)
            if index >= 0:
                return attrs[index].value
        return default

    def apply_set(attrs: Any) -> bool:
        value = source_value(attrs)
        if value is None:
            return False
        index = find(attrs, key)
        if index >= 0:
            if act == "insert":
                return False
            if attrs[index].value is value:
                return False
            copied = type(value)()
            copied.CopyFrom(value)  # the source may be this very list's entry
            attrs[index].value.CopyFrom(copied)
            return True
        if act == "update":
            return False
        copied = type(value)()
        copied.CopyFrom(value)
        attrs.add(key=key).value.CopyFrom(copied)
        return True

    return apply_set


def _compile_one(cfg: ActionConfig) -> Apply:
    key = cfg.key
    act = cfg.action
    if act in ("insert", "update", "upsert"):
        return _compile_set(cfg)
    regex = re.compile(cfg.pattern) if cfg.pattern else None
    if act == "delete":

        def apply_delete(attrs: Any) -> bool:
            doomed = [i for i, kv in enumerate(attrs) if kv.key == key or (regex is not None and regex.search(kv.key))]
            for index in reversed(doomed):
                del attrs[index]
            return bool(doomed)

        return apply_delete
    if act == "hash":

        def apply_hash(attrs: Any) -> bool:
            changed = False
            for kv in attrs:
                if kv.key == key or (regex is not None and regex.search(kv.key)):
                    hash_value(kv.value)
                    changed = True
            return changed

        return apply_hash
    if act == "extract":
        assert regex is not None
        names = list(regex.groupindex)

        def apply_extract(attrs: Any) -> bool:
            index = find(attrs, key)
            if index < 0 or attrs[index].value.WhichOneof("value") != "string_value":
                return False
            match = regex.search(attrs[index].value.string_value)
            if match is None:
                return False
            for name in names:
                text = match.group(name) or ""
                target = find(attrs, name)
                if target >= 0:
                    attrs[target].value.string_value = text
                else:
                    attrs.add(key=name).value.string_value = text
            return True

        return apply_extract
    target_type = cfg.converted_type or "string"

    def apply_convert(attrs: Any) -> bool:
        index = find(attrs, key)
        if index < 0:
            return False
        before = attrs[index].value.SerializeToString()
        _convert(attrs[index].value, target_type)
        return attrs[index].value.SerializeToString() != before

    return apply_convert


def compile_actions(actions: list[ActionConfig]) -> Apply:
    """One callable applying every action in order to an attribute list; True if anything changed."""
    steps = [_compile_one(action) for action in actions]

    def apply(attrs: Any) -> bool:
        changed = False
        for step in steps:
            if step(attrs):
                changed = True
        return changed

    return apply
