"""Which required Python packages are missing or too old (no dependencies, no ``packaging``).

Slicer does not bundle every package the library needs (pandas, pyacvd, matplotlib),
and a package that is present in an old version (pandas 1.x under numpy 2) fails later
with an obscure error. :func:`unmet_requirements` checks the installed *versions*
(``importlib.metadata``) against simple specifiers such as ``pandas>=2.0`` or
``pyacvd==0.3.1``, without the ``packaging`` package, which Slicer 5.8 does not promise.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable, Iterable

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*((?:[<>=!~]=?|===?)\s*[^,;\s]+(?:\s*,\s*(?:[<>=!~]=?)\s*[^,;\s]+)*)?\s*$")
_CLAUSE = re.compile(r"^\s*(===|==|!=|~=|>=|<=|>|<)\s*([^\s]+)\s*$")
_PRE_RELEASE = {"dev": -4, "a": -3, "alpha": -3, "b": -2, "beta": -2, "rc": -1, "c": -1, "pre": -1, "preview": -1}


def parse_version(text: str) -> tuple:
    """A comparable key for a version text (PEP 440 subset): ``"2.2.3"`` -> ``(2, 2, 3, 0, 0)``.

    The release numbers are compared numerically, with missing trailing parts taken as 0
    (``2.0 == 2.0.0``); a pre-release (``2.0rc1``, ``2.0.0.dev0``) sorts before its release;
    a post-release or local part (``2.0.post1``, ``1.26.4+mkl``) after it. An epoch is
    honoured. Unparseable text gives ``(-1,)`` (older than everything).
    """
    m = re.match(r"^\s*v?(?:(\d+)!)?(\d+(?:\.\d+)*)(.*)$", str(text).strip().lower())
    if not m:
        return (-1,)
    epoch = int(m.group(1) or 0)
    release = [int(p) for p in m.group(2).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    rest = m.group(3)
    # (kind, number): kind -4..-1 for pre-releases, 0 for a release, 1 for a post-release.
    phase, number = 0, 0
    pre = re.match(r"^[-_.]?(dev|alpha|beta|preview|pre|rc|a|b|c)[-_.]?(\d*)", rest)
    post = re.match(r"^[-_.]?(post|rev|r)[-_.]?(\d*)", rest)
    if pre:
        phase, number = _PRE_RELEASE[pre.group(1)], int(pre.group(2) or 0)
    elif post:
        phase, number = 1, int(post.group(2) or 0)
    elif rest.startswith("+"):
        phase, number = 0, 1  # a local version sorts after its public version
    return (epoch, tuple(release), phase, number)


def _release_padded(key: tuple, n: int) -> tuple:
    release = key[1]
    return tuple(release) + (0,) * (n - len(release))


def version_satisfies(installed: str, specifier: str) -> bool:
    """Whether version text ``installed`` meets ``specifier`` (``">=2.0"``, ``"==0.3.1"``, ``">=1.26,<3"``).

    Supports ``==`` (with a trailing ``.*`` wildcard), ``!=``, ``>=``, ``<=``, ``>``, ``<``,
    ``~=`` and ``===``; clauses separated by commas must all hold. An empty specifier is met by
    any version.

    Raises:
        ValueError: a clause that is not a version comparison.
    """
    have = parse_version(installed)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        m = _CLAUSE.match(clause)
        if not m:
            raise ValueError(f"cannot read the version requirement {clause!r}")
        op, text = m.groups()
        if op == "===":
            ok = installed.strip() == text
        elif text.endswith(".*") and op in ("==", "!="):
            prefix = parse_version(text[:-2])
            n = len(text[:-2].split("."))
            ok = have[0] == prefix[0] and _release_padded(have, n)[:n] == _release_padded(prefix, n)
            ok = ok if op == "==" else not ok
        else:
            want = parse_version(text)
            if op == "==":
                ok = have == want
            elif op == "!=":
                ok = have != want
            elif op == ">=":
                ok = have >= want
            elif op == "<=":
                ok = have <= want
            elif op == ">":
                ok = have > want
            elif op == "<":
                ok = have < want
            else:  # "~=": at least this version, same release series (all but the last number)
                parts = text.split(".")
                if len(parts) < 2:
                    raise ValueError(f"'~=' needs at least two version numbers: {clause!r}")
                n = len(parts) - 1
                ok = have >= want and _release_padded(have, n)[:n] == _release_padded(want, n)[:n]
        if not ok:
            return False
    return True


def split_requirement(requirement: str) -> tuple[str, str]:
    """``"pandas>=2.0"`` -> ``("pandas", ">=2.0")`` (no extras, no markers).

    Raises:
        ValueError: text that is not a distribution name with optional version clauses.
    """
    m = _REQUIREMENT.match(requirement)
    if not m:
        raise ValueError(f"cannot read the requirement {requirement!r} (expected e.g. 'pandas>=2.0')")
    return m.group(1), (m.group(2) or "").replace(" ", "")


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (``importlib.metadata``), ``None`` when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet_requirements(
    requirements: Iterable[str],
    version_of: Callable[[str], str | None] = installed_version,
) -> list[tuple[str, str | None]]:
    """The requirements that are not met, each with the installed version (``None``: not installed).

    Args:
        requirements: texts such as ``"pandas>=2.0"``, ``"pyacvd==0.3.1"``.
        version_of: ``version_of(distribution name) -> version text or None`` (the installed one
            by default; tests pass their own).
    """
    out = []
    for requirement in requirements:
        name, specifier = split_requirement(requirement)
        have = version_of(name)
        if have is None or not version_satisfies(have, specifier):
            out.append((requirement, have))
    return out


def describe_unmet(unmet: list[tuple[str, str | None]]) -> str:
    """One line for a message: ``"pandas>=2.0 (1.5.3 installed), pyacvd==0.3.1 (not installed)"``."""
    return ", ".join(f"{req} ({'not installed' if have is None else have + ' installed'})" for req, have in unmet)


__all__ = ["describe_unmet", "installed_version", "parse_version", "split_requirement", "unmet_requirements", "version_satisfies"]
