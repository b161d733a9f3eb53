"""Which Debian archive to bootstrap from: the one the host's own apt already uses.

Templates are built from the archive address in the host's apt sources, never from a
hostname written into Shoal, so a machine behind a private mirror or a snapshot proxy
builds from that. Both source formats are read: deb822 ``*.sources`` files and one-line
``sources.list`` / ``*.list`` files. Security, updates, backports and third-party
repositories (nodesource, cloud SDKs, ...) are passed over: the main archive is the entry
whose suite is a bare Debian codename and which carries the ``main`` component.

    >>> find_mirror([("sources.list", "deb http://mirror.example/debian bookworm main")])
    'http://mirror.example/debian'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import ShoalError

DEBIAN_SUITES = frozenset(
    {
        "buster",
        "bullseye",
        "bookworm",
        "trixie",
        "forky",
        "duke",
        "sid",
        "oldoldstable",
        "oldstable",
        "stable",
        "testing",
        "unstable",
    }
)

_OPTIONS = re.compile(r"\[[^\]]*\]")


class MirrorNotFound(ShoalError):
    pass


@dataclass(frozen=True)
class SourceEntry:
    """One ``deb`` source: an archive address with its suites and components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""


def parse_one_line(text: str) -> list[SourceEntry]:
    """Entries of a one-line-style file; ``deb-src`` and commented lines are skipped."""
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        signed_by = ""
        options = _OPTIONS.search(line)
        if options:
            m = re.search(r"signed-by=(\S+)", options.group(0))
            signed_by = m.group(1).rstrip("]") if m else ""
            line = _OPTIONS.sub(" ", line, count=1)
        words = line.split()
        if len(words) < 3 or words[0] != "deb":
            continue
        entries.append(SourceEntry(words[1], (words[2],), tuple(words[3:]), signed_by))
    return entries


def parse_deb822(text: str) -> list[SourceEntry]:
    """Entries of a deb822 ``.sources`` file; stanzas with ``Enabled: no`` are skipped."""
    entries = []
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in stanza.get("types", "").split():
            continue
        suites = tuple(stanza.get("suites", "").split())
        components = tuple(stanza.get("components", "").split())
        for uri in stanza.get("uris", "").split():
            entries.append(SourceEntry(uri, suites, components, stanza.get("signed-by", "")))
    return entries


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif raw[0] in " \t":
            # Continuation line (e.g. an inline Signed-By key block).
            if key:
                fields[key] += "\n" + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()


def _score(entry: SourceEntry) -> int | None:
    if not any(suite in DEBIAN_SUITES for suite in entry.suites):
        return None
    if "main" not in entry.components:
        return None
    if not entry.uri.startswith(("http://", "https://", "file:", "mirror+")):
        return None
    score = 0
    if entry.uri.rstrip("/").endswith("/debian"):
        score += 2
    if "debian-archive-keyring" in entry.signed_by:
        score += 1
    return score


def find_mirror(files: Iterable[tuple[str, str]]) -> str:
    """The main Debian archive URI among ``(file name, text)`` pairs, in apt's order.

    Raises :class:`MirrorNotFound` when no entry qualifies.
    """
    best: tuple[int, str] | None = None
    for name, text in files:
        entries = parse_deb822(text) if name.endswith(".sources") else parse_one_line(text)
        for entry in entries:
            score = _score(entry)
            if score is not None and (best is None or score > best[0]):
                best = (score, entry.uri.rstrip("/"))
    if best is None:
        raise MirrorNotFound(
            "no main Debian archive (a 'deb' entry for a Debian suite with component 'main') "
            "in the host's apt sources; pass --mirror URI"
        )
    return best[1]


def source_files(etc_apt: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    """``(name, text)`` of every apt source file apt itself would read, in apt's order."""
    files: list[tuple[str, str]] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        files.append((main.name, main.read_text(errors="replace")))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix in (".list", ".sources") and path.is_file():
                files.append((path.name, path.read_text(errors="replace")))
    return files


def host_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The host's main Debian archive URI, e.g. ``http://<mirror>/debian``."""
    return find_mirror(source_files(etc_apt))
