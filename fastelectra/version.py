"""This package's version, and the installed versions of others (recorded in bundles and in
benchmark results). Importable from any layer: the package root sits above them all."""

from __future__ import annotations

from collections.abc import Iterable

__version__ = "0.1.0"


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """The installed version of each of `names` (those not installed are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
