"""Validate a run's merged parameters against the models, with errors that name the key."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import ValidationError

from machining_t2v.parameters.models import PIPELINE_PARAMETERS, Params, Scalar, _number_to_text


class ParameterError(ValueError):
    """The run's parameters have an unknown key or a value of the wrong type."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"The run's parameters (conf/<env>/parameters*.yml and --params) have "
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''}; nothing was run:\n{lines}"
        )


def check_parameters(parameters: Mapping[str, Any],
                     models: Mapping[str, type[Params]] = PIPELINE_PARAMETERS) -> dict[str, Params]:
    """Validate a run's merged parameters, each top-level key against its model in ``models``
    (the product's :data:`PIPELINE_PARAMETERS` unless another project passes its own).

    Returns:
        the parameters as typed models, by top-level key (nodes are not given these: they
        receive the plain dicts).

    Raises:
        ParameterError: listing every unknown key (with the valid keys at its level and, for a
            misspelling, the closest one) and every value of the wrong type, by dotted path.
    """
    problems: list[str] = []
    typed: dict[str, Params] = {}
    order = list(models)
    # In the models' order, unknown keys last: the config loader's order varies.
    for key in sorted(parameters, key=lambda key: (order.index(key) if key in order else len(order), str(key))):
        value = parameters[key]
        model = models.get(key)
        if model is None:
            problems.append(_unknown_key(str(key), models))
            continue
        try:
            typed[key] = model.model_validate(value)
        except ValidationError as error:
            problems.extend(_problems(key, error, models))
    if problems:
        raise ParameterError(problems)
    return typed


def _problems(key: str, error: ValidationError, models: Mapping[str, type[Params]]) -> list[str]:
    by_path: dict[str, list[dict[str, Any]]] = {}
    annotation_of: dict[str, Any] = {}
    for item in error.errors():
        path, annotation = _resolve(models[key], key, item["loc"])
        by_path.setdefault(path, []).append(item)
        annotation_of[path] = annotation
    # A list that fails as a whole and at one item (a union of text and a list of texts) is
    # reported at the item only.
    deepest = [path for path in by_path
               if not any(other.startswith((f"{path}.", f"{path}[")) for other in by_path)]
    problems = []
    for path in deepest:
        items = by_path[path]
        kinds = {item["type"] for item in items}
        value = items[0].get("input")
        if "extra_forbidden" in kinds:
            problems.append(_unknown_key(path, models))
        elif "missing" in kinds:
            problems.append(f"{path} is missing")
        elif annotation_of[path] is not None and all(_is_type_error(kind) for kind in kinds):
            problems.append(f"{path} must be {_describe(annotation_of[path])}, got {value!r}")
        else:
            messages = "; ".join(dict.fromkeys(item["msg"] for item in items))
            problems.append(f"{path}: {messages}, got {value!r}")
    return problems


def _is_type_error(kind: str) -> bool:
    return kind.endswith("_type") or kind in ("literal_error", "int_from_float")


def _unknown_key(path: str, models: Mapping[str, type[Params]]) -> str:
    parent, _, key = path.rpartition(".")
    valid = _valid_keys(parent, models)
    message = f"Unknown parameter {path}"
    if valid is None:
        return message
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        message += f": did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"{message} (valid keys of {parent or 'the parameters'}: {', '.join(valid)})"


def _valid_keys(parent: str, models: Mapping[str, type[Params]]) -> list[str] | None:
    """The keys accepted at dotted ``parent`` (``""``: the top level), or None if not a model."""
    if not parent:
        return list(models)
    parts = _split_path(parent)
    annotation: Any = models.get(str(parts[0]))
    for part in parts[1:]:
        model = _model_in(annotation)
        if model is None:
            return None
        if isinstance(part, int):
            annotation = model
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
    model = _model_in(annotation)
    return None if model is None else list(model.model_fields)


def _split_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in path.split("."):
        name, *indices = piece.split("[")
        if name:
            parts.append(name)
        parts.extend(int(index.rstrip("]")) for index in indices)
    return parts


def _model_in(annotation: Any) -> type[Params] | None:
    """The model an annotation is, holds a list of, or holds as an optional."""
    if isinstance(annotation, type) and issubclass(annotation, Params):
        return annotation
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if (typing.get_origin(annotation) is list or _is_union(annotation)) and len(args) == 1:
        return _model_in(args[0])
    return None


def _resolve(model: type[Params], key: str, loc: Iterable[str | int]) -> tuple[str, Any]:
    """(dotted path, annotation there) of a pydantic error location under top-level ``key``.

    pydantic puts the name of the union member it tried into the location; those are skipped.
    """
    path = key
    walking: Any = model
    annotation: Any = walking
    tag_next = False
    for item in loc:
        walking = _without_none(walking)
        if tag_next:
            tag_next = False
            walking = next((arg for arg in typing.get_args(walking) if _tag(arg) == item), None)
            continue
        if isinstance(walking, type) and issubclass(walking, Params):
            path = f"{path}.{item}"
            field = walking.model_fields.get(str(item))
            walking = field.annotation if field is not None else None
        elif typing.get_origin(walking) is list and isinstance(item, int):
            path += f"[{item}]"
            walking = typing.get_args(walking)[0]
        elif typing.get_origin(walking) is dict:
            path = f"{path}.{item}"
            walking = typing.get_args(walking)[1]
        else:
            path += f"[{item}]" if isinstance(item, int) else f".{item}"
            walking = None
        annotation = walking
        tag_next = _is_union(_without_none(walking))
    return path, annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _without_none(annotation: Any) -> Any:
    """``annotation`` without ``None`` among its union members."""
    if not _is_union(annotation):
        return annotation
    members = typing.get_args(annotation)
    args = tuple(arg for arg in members if arg is not type(None))
    if len(args) == len(members):
        return annotation
    return args[0] if len(args) == 1 else Union[args]  # noqa: UP007


def _tag(annotation: Any) -> str:
    """The name pydantic gives a union member in an error location."""
    if typing.get_origin(annotation) is Annotated:
        return f"function-before[{_number_to_text.__name__}(), {_tag(typing.get_args(annotation)[0])}]"
    if typing.get_origin(annotation) is list:
        return f"list[{_tag(typing.get_args(annotation)[0])}]"
    return getattr(annotation, "__name__", str(annotation))


def _describe(annotation: Any) -> str:
    """What a value of ``annotation`` looks like, in words."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _describe(typing.get_args(annotation)[0])
    if annotation == Scalar:
        return "a single value (a string, a number, true or false, or null)"
    if _is_union(annotation):
        members = typing.get_args(annotation)
        described = [_describe(arg) for arg in members if arg is not type(None)]
        if type(None) in members:
            described.append("null")
        return " or ".join(dict.fromkeys(described))
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"a list of {_plural(typing.get_args(annotation)[0])}"
    if origin is dict:
        return f"a mapping of {_plural(typing.get_args(annotation)[1])}"
    if isinstance(annotation, type) and issubclass(annotation, Params):
        return f"a mapping with keys {', '.join(annotation.model_fields)}"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return names.get(annotation, str(annotation))


def _plural(annotation: Any) -> str:
    described = _describe(annotation)
    if described.startswith("a "):
        return described[2:] + "s"
    if described.startswith("one of "):
        return "values among " + described[len("one of "):]
    return f"({described})"
