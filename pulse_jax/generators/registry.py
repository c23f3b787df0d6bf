"""The generator families this pulse-jax knows, by name: what ``--arch``, the demo, model.json, the
converters' messages and the family options' flags all read. A new family is a module that defines a
``Family`` and one line in generators/__init__.py that registers it (docs/architecture.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pulse_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Family:
    name: str                  # model.json's "architecture", --arch's value
    title: str                 # for messages: "StyleGAN2"
    generator: type            # implements base.Generator; built from a config: generator(config)
    config: type               # the frozen architecture config (a dataclass with to_dict())
    presets: Mapping[str, Any]  # named configs; the demo's is ``demo_preset``
    demo_preset: str
    files: str                 # the files users convert into this family, for messages and --help
    variants: Mapping[str, str] = dataclasses.field(default_factory=dict)  # demo names -> presets (e.g. T, R)


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in _FAMILIES and _FAMILIES[family.name] != family:
        raise ValueError(f"a generator family named {family.name!r} is registered already")
    if family.demo_preset not in family.presets or not set(family.variants.values()) <= set(family.presets):
        raise ValueError(f"{family.name}: a demo preset is not one of its presets")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Forget a family (for tests that register one of their own)."""
    _FAMILIES.pop(name, None)


def families() -> tuple[Family, ...]:
    return tuple(_FAMILIES.values())


def names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def family(name: str, what: str = "architecture") -> Family:
    if not isinstance(name, str) or name not in _FAMILIES:
        raise CheckpointError(f"{what}: unknown architecture {name!r}; this pulse-jax knows "
                              f"{', '.join(sorted(_FAMILIES))} (upgrade pulse-jax, or convert the model again)")
    return _FAMILIES[name]


def family_of_config(config: Any) -> Family:
    for f in _FAMILIES.values():
        if isinstance(config, f.config):
            return f
    raise TypeError(f"no registered generator family takes a {type(config).__name__}")


def demo_choices() -> dict[str, tuple[Family, str]]:
    """What ``demo --arch`` takes: each family's name (its demo preset) and its variants' names (theirs)."""
    out = {}
    for f in _FAMILIES.values():
        out[f.name] = (f, f.demo_preset)
        out.update({name: (f, preset) for name, preset in f.variants.items()})
    return out


def known_files() -> str:
    """What every family reads, in one sentence, for a converter's refusal."""
    return "; ".join(f"{f.title}: {f.files}" for f in _FAMILIES.values())
