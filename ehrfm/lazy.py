"""Lazy package attributes (PEP 562).

Packages whose public names import their modules on first use (PEP 562), so that importing the
package stays light (no torch, no polars).
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(__all__, __getattr__) for `package`, whose public names live in modules named by `exports`.

    Args:
        package: the package's name, for the AttributeError message.
        exports: {public name: full name of the module that defines it} ("sweeps.plan").
    """

    def module_getattr(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(exports), module_getattr
