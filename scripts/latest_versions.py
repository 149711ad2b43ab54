"""Print the versions of meshca's direct dependencies installed in this environment next to the
versions pinned in the lock, so a break in ``make test-latest`` is easy to trace to a release.

Usage: ``python scripts/latest_versions.py requirements/lock.txt`` (run with the venv's python).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def normalise(name: str) -> str:
    """The PEP 503 form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def _requirements(distribution: str) -> list[tuple[str, list[str], str | None]]:
    """(name, extras asked for, the extra this requirement belongs to) of each requirement."""
    found: list[tuple[str, list[str], str | None]] = []
    try:
        declared = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return found
    for requirement in declared:
        match = _NAME.match(requirement)
        if not match:
            continue
        extras = [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]
        marker = _EXTRA_MARKER.search(requirement)
        found.append((normalise(match.group(1)), extras, marker.group(1) if marker else None))
    return found


def direct_dependencies() -> list[str]:
    """meshca's requirements (runtime and test extra) and what their requested extras add
    (``psycopg[binary]`` -> ``psycopg-binary``), names only, in declared order."""
    names: list[str] = []
    for name, extras, _ in _requirements("meshca"):
        added = [name] + [
            dep for dep, _, extra in _requirements(name) if extra is not None and extra in extras
        ]
        names += [n for n in added if n not in names]
    return names


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    locked = locked_versions(Path(argv[1]))
    names = direct_dependencies()
    width = max(len(name) for name in names)
    newer = 0
    print(f"newest versions the floors allow (python {sys.version.split()[0]}), against the lock:")
    for name in names:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "(not installed)"
        pinned = locked.get(name, "-")
        note = "" if installed == pinned else f"   (lock: {pinned})"
        newer += bool(note)
        print(f"  {name:<{width}}  {installed}{note}")
    print(f"{newer} of {len(names)} differ from {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
