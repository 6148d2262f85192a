"""Method options of table rows: defaults, matching against records, row overrides.

A row names a method and the options it sets (``overrides``); every other
option is the method's default.  A record serves the row when its method
options equal the row's full options.  An option the record lacks (the record
was written before the option existed) counts as its default only when the
method declares it backward compatible: ``option(..., hash_default=False)``,
the same declaration that keeps it out of the config hash at its default.
Any other option a record lacks means the method changed what it computes
since (okd gaining ``profile`` and its profile options): the record serves no
row (:func:`stale_options` names the options, and the table says so).  For a
method that is not registered here only the row's own overrides are checked.

``--override METHOD.KEY=VALUE`` (:func:`parse_overrides`, :func:`apply_overrides`)
sets an option on every row of ``METHOD`` that does not set KEY itself, e.g.
``--override okd.profile=script`` builds Table 4 in OKD-MTL's script profile.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable

from ..errors import UserError

_DEFAULTS_CACHE: dict[str, dict | None] = {}


def method_defaults(method: str) -> dict | None:
    """The default options of a registered method, or None when it is not registered."""
    if method not in _DEFAULTS_CACHE:
        from ..registry import METHODS

        try:
            cls = METHODS.get(method).Config
            _DEFAULTS_CACHE[method] = {k: v for k, v in dataclasses.asdict(cls()).items()}
        except (UserError, TypeError, AttributeError):
            _DEFAULTS_CACHE[method] = None
    return _DEFAULTS_CACHE[method]


_NEUTRAL_CACHE: dict[str, frozenset] = {}


def neutral_options(method: str) -> frozenset:
    """Options of a registered method declared backward compatible (``hash_default=False``):
    a record lacking one counts as having its default."""
    if method not in _NEUTRAL_CACHE:
        from ..config import option_check
        from ..registry import METHODS

        names: set[str] = set()
        try:
            cls = METHODS.get(method).Config
            for f in dataclasses.fields(cls):
                check = option_check(f)
                if check is not None and not check.hash_default:
                    names.add(f.name)
        except (UserError, TypeError, AttributeError):
            pass
        _NEUTRAL_CACHE[method] = frozenset(names)
    return _NEUTRAL_CACHE[method]


def stale_options(record_options: dict, method: str) -> list[str]:
    """Options of the registered method that the record lacks and that are not backward
    compatible: a record lacking any predates a change of the method (empty: none)."""
    defaults = method_defaults(method)
    if defaults is None:
        return []
    have = set(record_options) - {"name"}
    neutral = neutral_options(method)
    return [k for k in defaults if k not in have and k not in neutral]


def canonical_options(method: str, overrides: dict) -> dict:
    """A row's full method options (defaults filled in when the method is registered)."""
    defaults = method_defaults(method)
    return {**(defaults or {}), **overrides}


def same_value(a: Any, b: Any) -> bool:
    """Equality that takes ``1`` and ``1.0`` (YAML ints and floats) as the same number."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def options_match(record_options: dict, method: str, overrides: dict) -> bool:
    """Whether a record's method options are the row's (overrides set, the rest default).

    A record lacking an option that is not backward compatible (:func:`stale_options`)
    matches no row."""
    if stale_options(record_options, method):
        return False
    defaults = method_defaults(method)
    have = {**(defaults or {}), **{k: v for k, v in record_options.items() if k != "name"}}
    want = canonical_options(method, overrides)
    return all(k in have and same_value(have[k], v) for k, v in want.items())


def effective_overrides(method: str, overrides: dict) -> dict:
    """The overrides that differ from the method's defaults (all of them when it is unregistered)."""
    defaults = method_defaults(method)
    if defaults is None:
        return dict(overrides)
    return {k: v for k, v in overrides.items() if k not in defaults or not same_value(defaults[k], v)}


def options_key(method: str, overrides: dict) -> str:
    """A hashable text of a row's full options (runs with equal keys are one run)."""
    return json.dumps(canonical_options(method, overrides), sort_keys=True, default=str)


# ---------------------------------------------------------------------------
# --override METHOD.KEY=VALUE
# ---------------------------------------------------------------------------

def parse_overrides(items: Iterable[str] | None, flag: str = "--override") -> dict[str, dict[str, Any]]:
    """``["okd.profile=script", "okd.T=0.05"]`` -> ``{"okd": {"profile": "script", "T": 0.05}}``.

    Values are YAML scalars (as with ``--set``).  A registered method's option
    must exist; the last of two values for one option wins.
    """
    from ..config import parse_set

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in str(item):
            raise UserError(f"{flag} {item!r} is not of the form METHOD.OPTION=VALUE",
                            hint=f"e.g. {flag} okd.profile=script")
        key, value = parse_set(str(item))
        method, dot, option = key.partition(".")
        if not dot or not method or not option:
            raise UserError(f"{flag} {item!r}: the key must be METHOD.OPTION (a method name, a dot, "
                            f"one of its options)", hint=f"e.g. {flag} okd.profile=script")
        defaults = method_defaults(method)
        if defaults is not None and option not in defaults:
            raise UserError(f"{flag} {item!r}: method {method!r} has no option {option!r}",
                            hint=f"its options: {', '.join(sorted(defaults))}")
        out.setdefault(method, {})[option] = value
    return out
