"""`nolag doctor`: which distribution `import nolag` comes from, and whether another one clashes.

This project is distributed as ``nolag-sync`` and imported as ``nolag``; the official asyncio
NoLag SDK is distributed as ``nolag`` and imported as ``nolag`` too. Installed side by side in
one environment, both write the same ``nolag/`` package directory: ``import nolag`` then loads
whichever files came last or first on ``sys.path``, and uninstalling either removes files the
other needs. Nothing fails at install time, so this module looks for it: every installed
distribution that declares the top-level package ``nolag`` (its ``top_level.txt``, or a
``nolag/`` entry in its ``RECORD``) other than ``nolag-sync`` is a clash.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import NamedTuple, Optional, TextIO

from nolag._version import __version__

__all__ = ["DISTRIBUTION", "Diagnosis", "Provider", "diagnose", "print_report", "version_text"]

DISTRIBUTION = "nolag-sync"
"""This project's distribution name (the import name is ``nolag``)."""

PACKAGE = "nolag"


class Provider(NamedTuple):
    """One installed distribution that provides the top-level package ``nolag``."""

    name: str
    """The distribution's name as its metadata gives it, e.g. ``nolag-sync`` or ``nolag``."""
    version: str
    location: str
    """The directory holding its ``.dist-info`` (a site-packages directory, usually)."""


class Diagnosis(NamedTuple):
    """What `nolag doctor` found."""

    imported_from: str
    """The file ``import nolag`` loads in this interpreter (``nolag/__init__.py``)."""
    ours: tuple[Provider, ...]
    """The ``nolag-sync`` distributions found (more than one: several installs on sys.path)."""
    others: tuple[Provider, ...]
    """Other distributions providing ``nolag``: each one is a clash."""

    @property
    def ok(self) -> bool:
        """True when no other distribution provides ``nolag``."""
        return not self.others


def _normalize(name: str) -> str:
    """A distribution name compared the standard way (PEP 503: case and -_. runs folded)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _provides_nolag(dist: metadata.Distribution) -> bool:
    """Whether `dist` declares the top-level package ``nolag`` (top_level.txt or RECORD)."""
    top_level = dist.read_text("top_level.txt")
    if top_level is not None and PACKAGE in top_level.split():
        return True
    return any(file.parts[:1] == (PACKAGE,) for file in dist.files or ())


def _location(dist: metadata.Distribution) -> str:
    """The directory that holds a distribution's metadata directory."""
    return str(Path(str(dist.locate_file(""))).resolve())


def providers(path: Optional[Sequence[str]] = None) -> list[Provider]:
    """Every installed distribution providing ``nolag`` on `path` (default sys.path), once each.

    A distribution found twice at the same location (sys.path naming one directory twice)
    counts once; the same name at two locations counts twice, since both are installed.
    """
    found: dict[tuple[str, str], Provider] = {}
    dists: Iterable[metadata.Distribution] = (
        metadata.distributions() if path is None else metadata.distributions(path=list(path))
    )
    for dist in dists:
        name = dist.metadata["Name"]
        if not name or not _provides_nolag(dist):
            continue
        provider = Provider(name, dist.version, _location(dist))
        found.setdefault((_normalize(name), provider.location), provider)
    return list(found.values())


def diagnose(path: Optional[Sequence[str]] = None) -> Diagnosis:
    """Where ``nolag`` is imported from and which distributions provide it (see the module doc)."""
    import nolag

    imported = str(Path(nolag.__file__ or "?").resolve())
    ours: dict[str, Provider] = {}  # one per version: a checkout's stale egg-info is no news
    others: list[Provider] = []
    for provider in providers(path):
        if _normalize(provider.name) == DISTRIBUTION:
            ours.setdefault(provider.version, provider)
        else:
            others.append(provider)
    return Diagnosis(imported, tuple(ours.values()), tuple(others))


def _clash_lines(diagnosis: Diagnosis) -> list[str]:
    lines = []
    for other in diagnosis.others:
        lines.append(
            f"warning: the distribution {other.name} {other.version} (in {other.location}) also "
            f"installs the package 'nolag'; with both in one environment 'import nolag' may "
            f"load either one (this one is {DISTRIBUTION}). Keep them in separate virtualenvs, "
            f"or remove one with: pip uninstall {other.name}"
        )
    return lines


def version_text(diagnosis: Optional[Diagnosis] = None) -> str:
    """The text of `nolag --version`: version, where nolag is imported from, any clash."""
    diagnosis = diagnosis or diagnose()
    lines = [f"{DISTRIBUTION} {__version__} (import nolag: {diagnosis.imported_from})"]
    if not diagnosis.ok:
        lines += [*_clash_lines(diagnosis), "run 'nolag doctor' for details"]
    return "\n".join(lines)


def print_report(out: TextIO = sys.stdout, diagnosis: Optional[Diagnosis] = None) -> int:
    """Write the `nolag doctor` report to `out`; the exit code: 0 fine, 1 a clash was found."""
    diagnosis = diagnosis or diagnose()
    python = f"{sys.executable} (Python {sys.version.split()[0]})"
    lines = [
        f"{DISTRIBUTION} {__version__}",
        f"python:        {python}",
        f"import nolag:  {diagnosis.imported_from}",
    ]
    for provider in (*diagnosis.ours, *diagnosis.others):
        lines.append(f"provides nolag: {provider.name} {provider.version} in {provider.location}")
    if not diagnosis.ours:
        lines.append(
            f"note: no installed {DISTRIBUTION} distribution found: nolag runs from a checkout "
            f"on sys.path, not from an install"
        )
    if diagnosis.ok:
        lines.append("ok: no other distribution provides the package 'nolag'")
    else:
        lines += _clash_lines(diagnosis)
    out.write("\n".join(lines) + "\n")
    out.flush()
    return 0 if diagnosis.ok else 1
