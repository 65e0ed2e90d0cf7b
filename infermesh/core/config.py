"""Job configs: Hydra composes YAML and overrides; InferMesh code sees typed dataclasses only.

:func:`compose_config` composes ``<config_dir>/<name>.yaml`` with command-line overrides
(``trainer.max_steps=50``) into plain dicts, rejecting keys the YAML does not define;
:func:`to_dataclass` turns one section into the dataclass that owns it, checking each value's
type against the field's annotation. Every mistake is a one-line :class:`UsageError` that
names the key and the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path
from types import NoneType
from typing import Any, cast, get_args, get_type_hints

from omegaconf import DictConfig, OmegaConf

from infermesh.core.errors import UsageError

__all__ = ["compose_config", "one_line", "to_dataclass"]

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _yaml(value: Any) -> str:
    """Spell ``value`` as in an override (``null``, ``true``)."""
    return OmegaConf.to_yaml({"v": value}).partition(": ")[2].strip()


def _check_override_keys(base: DictConfig, overrides: list[str], source: str) -> None:
    """Reject an override of a key that the YAML does not define, naming the known keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except HydraException as exc:
            raise UsageError(
                f"cannot parse the override '{line}': {one_line(exc)}; "
                "write it as key=value, e.g. trainer.max_steps=50"
            ) from None
    for override in parsed:
        if override.is_add() or override.is_force_add():
            continue  # '+key=value' adds a key; the dataclass conversion rejects unknown ones
        key = override.key_or_group
        node: Any = base
        for depth, part in enumerate(key.split(".")):
            if not isinstance(node, DictConfig) or part not in node:
                where = ".".join(key.split(".")[:depth])
                known = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
                raise UsageError(
                    f"unknown config key '{key}' in override '{override.input_line}'; "
                    f"known keys{f' in {where}' if where else ''}: {known or 'none'} "
                    f"(see {source})"
                )
            node = node[part]


def _check_type(key: str, value: Any, hint: Any, example: Any) -> Any:
    """Return ``value`` if it fits the field type ``hint`` (int, float, str, bool, X | None)."""
    args = get_args(hint)
    optional = NoneType in args
    base = next(a for a in args if a is not NoneType) if args else hint
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    expected = _TYPE_NAMES[base] + (" or null" if optional else "")
    hint_value = "" if example is dataclasses.MISSING else f", e.g. {key}={_yaml(example)}"
    raise UsageError(f"{key} must be {expected}, got {value!r}; fix the override{hint_value}")


def to_dataclass(
    cls: Any, values: Any, section: str, source: str = "the config", **fixed: Any
) -> Any:
    """Build dataclass ``cls`` from the plain dict ``values``; ``fixed`` fields are not keys.

    The dataclass's own validation (``__post_init__`` raising ValueError) becomes a
    :class:`UsageError`.
    """
    if not isinstance(values, dict):
        raise UsageError(f"config section '{section}' must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in fixed}
    for key in values:
        if key not in fields:
            raise UsageError(
                f"unknown config key '{section}.{key}'; known keys in {section}: "
                f"{', '.join(fields)} (see {source})"
            )
    kwargs = {
        name: _check_type(f"{section}.{name}", value, hints[name], fields[name].default)
        for name, value in values.items()
    }
    try:
        return cls(**kwargs, **fixed)
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None


def _check_like_defaults(
    base: dict[str, Any], values: dict[str, Any], overrides: list[str], skip: Collection[str]
) -> None:
    """Reject an override whose value does not have the type of the YAML's default.

    Used where the dataclasses that own the sections are not importable (``infermesh jobs
    submit`` checks a job's config before sending it): a default of ``null`` accepts any
    value, an integer is accepted where the default is a number, and a section cannot be
    replaced by a scalar.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_add() or override.is_force_add() or override.is_delete():
            continue
        key = override.key_or_group
        if key.split(".")[0] in skip:
            continue
        default: Any = base
        value: Any = values
        for part in key.split("."):
            default, value = default[part], value[part]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                first = next(iter(default), "key")
                raise UsageError(
                    f"'{key}' is a config section, not a value; override one of its keys, "
                    f"e.g. {key}.{first}={_yaml(default[first]) if default else 'VALUE'}"
                )
            continue
        if default is None or isinstance(default, list):
            continue
        _check_type(key, value, type(default), default)


def compose_config(
    config_dir: str | Path,
    name: str,
    overrides: list[str],
    *,
    check_types: bool = False,
    typed_sections: Collection[str] = (),
) -> dict[str, Any]:
    """``<config_dir>/<name>.yaml`` composed with ``overrides``, resolved, as plain dicts.

    With ``check_types`` an override must also keep the type of the value it replaces (see
    :func:`_check_like_defaults`), except in ``typed_sections``, whose values the caller
    checks with their dataclass; without it the owning dataclasses check every value.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    source = str(Path(config_dir) / f"{name}.yaml")
    with initialize_config_dir(config_dir=str(config_dir), version_base=None, job_name=name):
        base_cfg = compose(name)
        _check_override_keys(base_cfg, overrides, source)
        try:
            cfg = compose(name, overrides=overrides)
            values = OmegaConf.to_container(cfg, resolve=True)
            base = OmegaConf.to_container(base_cfg, resolve=True) if check_types else None
        except (HydraException, OmegaConfBaseException) as exc:
            raise UsageError(f"bad override: {one_line(exc)}") from None
    if base is not None:
        _check_like_defaults(
            cast(dict[str, Any], base), cast(dict[str, Any], values), overrides, typed_sections
        )
    return cast(dict[str, Any], values)  # a config's top level is a mapping
