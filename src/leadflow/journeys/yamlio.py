"""Reading journeys-as-code files: YAML as JSON would read it.

PyYAML's safe loader follows YAML 1.1, where an unquoted `yes:` or `no:` (a branch's two ways)
becomes a boolean key, `10:00` becomes 600 (base 60) and `2026-04-15` a date object. Journey
files mean none of that, so `YamlLoader` keeps YAML 1.2's core scalars: only true/false are
booleans, only plain decimal numbers are numbers, and dates and times stay text.
"""

from __future__ import annotations

import re

import yaml


class YamlLoader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 core scalars (see the module docstring)."""


_REPLACED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
             "tag:yaml.org,2002:timestamp"}
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                 list("-+0123456789"))
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?[0-9]+[eE][-+]?[0-9]+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def yaml_load(text: str) -> object:
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_load_all(text: str) -> list[object]:
    """Every non-empty document of a YAML stream."""
    return [doc for doc in yaml.load_all(text, Loader=YamlLoader) if doc is not None]  # noqa: S506
