"""Typed settings: pydantic models whose every value is type- and range-checked when it is read.

Each problem becomes one line naming its key path, for example ``augmentation.flip: expected true or
false, got 'no'`` or ``training.epochs: must be at least 1``; an unknown key is named with the closest
valid one. Numbers may be written in any of YAML's forms (``1e-3`` included, which YAML 1.1 reads as
text); booleans must be ``true`` or ``false``.

Example:
    >>> from mucosa.settings import Settings, Int
    >>> from pydantic import Field
    >>> class Demo(Settings):
    ...     epochs: Int = Field(10, ge=1)
    >>> Demo(epochs="1e2").epochs
    100
    >>> Demo(epochs=0)
    Traceback (most recent call last):
    ...
    mucosa.errors.ConfigError: epochs: must be at least 1
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from mucosa.errors import ConfigError

__all__ = ["Settings", "Int", "Float", "Bool", "Text", "Pathname", "whole_number", "yaml_load", "read_yaml",
           "format_errors", "closest"]


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(message: str, value: Any) -> PydanticCustomError:
    return PydanticCustomError("mucosa", message + ", got {got}", {"got": _got(value)})


def _to_number(value: Any) -> float | int:
    """int or float from a number or its text; ``bool`` is not a number here."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            return float(text)
    return value


def _number(value: Any) -> float:
    try:
        number = float(_to_number(value))
    except (ValueError, OverflowError):
        raise _fail("expected a number", value) from None
    if not math.isfinite(number):
        raise _fail("expected a finite number", value)
    return number


def whole_number(value: Any) -> int:
    """An int from an int, a whole float or their text (``1e2`` too); raises a one-line pydantic error."""
    try:
        number = _to_number(value)
    except (ValueError, OverflowError):
        raise _fail("expected a whole number", value) from None
    if isinstance(number, float):
        if not (math.isfinite(number) and number.is_integer()):
            raise _fail("expected a whole number", value)
        number = int(number)
    return number


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("expected true or false", value)
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail("expected text", value)
    return value


def _pathname(value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise _fail("expected a file or folder name", value)
    return Path(value)


Int = Annotated[int, BeforeValidator(whole_number)]
Float = Annotated[float, BeforeValidator(_number)]
Bool = Annotated[bool, BeforeValidator(_flag)]
Text = Annotated[str, BeforeValidator(_text)]
Pathname = Annotated[Path, BeforeValidator(_pathname)]  # a file or folder; whether it exists is the user's check


MAX_YAML_DEPTH = 32  # a config nests three levels; far deeper is a mistake or an attack on the parser


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 numbers such as ``1e-3`` (no dot) as floats, and refuses
    aliases (``*name``: a kilobyte of nested aliases expands to gigabytes, the "billion laughs") and nesting
    deeper than :data:`MAX_YAML_DEPTH`, before anything is expanded."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a mucosa config; "
                                              "write the value out", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no code runs), with ``1e-3`` read as a number."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def read_yaml(path: Path) -> Any:
    """A YAML file's content, read safely; a ConfigError naming the file when it is missing or not YAML."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return yaml_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None


def closest(name: str, choices: list[str]) -> str | None:
    """The valid name closest to a misspelt one, if any is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Names of the settings at ``loc`` inside ``model`` (``None`` where loc is not a settings group)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return list(model.model_fields)


def _unknown(model: type[BaseModel], loc: tuple) -> str:
    known = _fields_at(model, loc[:-1]) or []
    what = "setting" if loc[:-1] or model.__name__ != "RunConfig" else "section"
    guess = closest(str(loc[-1]), known)
    if guess:
        return f"unknown {what}; did you mean '{guess}'?"
    return f"unknown {what}; known: {', '.join(known)}"


_RANGES = {"greater_than_equal": ("ge", "must be at least {}"), "less_than_equal": ("le", "must be at most {}"),
           "greater_than": ("gt", "must be more than {}"), "less_than": ("lt", "must be less than {}")}


def _message(model: type[BaseModel], error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "mucosa":
        return error["msg"]
    if kind in _RANGES:
        key, text = _RANGES[kind]
        return text.format(ctx[key])
    if kind == "extra_forbidden":
        return _unknown(model, tuple(error["loc"]))
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        guess = closest(str(error["input"]), options)
        hint = f"; did you mean '{guess}'?" if guess and guess != error["input"] else ""
        return f"expected one of {', '.join(options)}, got {_got(error['input'])}{hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of settings, got {type(error['input']).__name__}"
    if kind in ("frozen_instance", "frozen_field"):
        return "cannot be changed; make a changed copy with .replace(...)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def format_errors(error: ValidationError, model: type[BaseModel], prefix: str = "",
                  labels: dict[str, str] | None = None) -> list[str]:
    """One line per problem: ``key.path: what is wrong``.

    Args:
        prefix: key path of ``model`` inside a larger config (``training`` for a TrainingConfig).
        labels: shown instead of a key path, e.g. ``{"training.threads": "--threads"}``.
    """
    lines = []
    for item in error.errors():
        path = ".".join([prefix] * bool(prefix) + [str(p) for p in item["loc"]]) or prefix or "config"
        shown = (labels or {}).get(path, path)
        lines.append(f"{shown}: {_message(model, item)}")
    return list(dict.fromkeys(lines))


class Settings(BaseModel):
    """Base of every settings group: unknown keys refused, values checked on creation and assignment.

    Invalid values raise :class:`~mucosa.errors.ConfigError` (one line per problem, key paths prefixed
    with :attr:`SECTION`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    SECTION: ClassVar[str] = ""  # each group's key in a run config, prefixed to its error lines

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError("\n".join(format_errors(error, type(self), self._section()))) from None

    # Only direct calls come here: nested sections are validated by pydantic itself (as BaseModel.__init__
    # is), so a whole config reports all of its problems at once.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as error:
            raise ConfigError("\n".join(format_errors(error, type(self), self._section()))) from None

    @classmethod
    def _section(cls) -> str:
        return cls.SECTION

    def replace(self, **changes: Any):
        """A checked copy with some settings changed (like ``dataclasses.replace``)."""
        return type(self)(**{**dict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for YAML, JSON and checkpoints)."""
        return self.model_dump()
