"""Method options of table rows: defaults, matching against records, row overrides.

The defaults and the matching are the record store's (:mod:`mtlbench.records`);
this module adds what rows need on top.  A row names a method and the options it sets (``overrides``); every other
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

import json
from typing import Any, Iterable

from ..errors import UserError
# what a record's method options are matched on is the record store's
from ..records import canonical_options, method_defaults, options_match, same_value, stale_options

__all__ = ["canonical_options", "effective_overrides", "method_defaults", "options_key", "options_match",
           "parse_overrides", "same_value", "stale_options"]


def effective_overrides(method: str, overrides: dict) -> dict:
    """The overrides that differ from the method's defaults (all of them when it is unregistered)."""
    defaults = method_defaults(method, overrides.get("architecture"))
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
