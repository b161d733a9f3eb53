"""The build mirror comes from the host's apt sources: main archive only, any format."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.template.mirror import MirrorNotFound, find_mirror, host_mirror

DEBIAN12_DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror-a.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://mirror-a.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

# Security first, to show order alone does not decide.
DEBIAN13_DEB822 = """\
Types: deb deb-src
URIs: https://security.example/debian-security/
Suites: trixie-security
Components: main contrib non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp

Types: deb deb-src
URIs: https://mirror-b.example/debian/
Suites: trixie trixie-updates
Components: main contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp
"""

NODESOURCE_DEB822 = """\
Types: deb
URIs: https://node.example/node_20.x
Suites: nodistro
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/nodesource.gpg
"""

THIRD_PARTY_SAME_SUITE = """\
Types: deb
URIs: https://docker.example/linux/debian
Suites: bookworm
Components: stable
"""

ONE_LINE_DEBIAN12 = """\
# See sources.list(5)
deb-src http://src.example/debian bookworm main
deb [ arch=amd64 signed-by=/usr/share/keyrings/a.gpg ] http://mirror-c.example/debian bookworm main
deb http://mirror-c.example/debian-security bookworm-security main
deb http://mirror-c.example/debian bookworm-updates main
# deb http://commented.example/debian bookworm main
"""

ONE_LINE_THIRD_PARTY = """\
deb https://cloud.example/apt cloud-sdk-bookworm main
deb [signed-by=/usr/share/keyrings/pg.gpg] http://pg.example/apt bookworm-pgdg main
"""


def test_debian12_deb822_with_security_picks_main_archive() -> None:
    assert find_mirror([("debian.sources", DEBIAN12_DEB822)]) == "http://mirror-a.example/debian"


def test_debian13_deb822_security_listed_first_is_skipped() -> None:
    files = [("debian.sources", DEBIAN13_DEB822), ("nodesource.sources", NODESOURCE_DEB822)]
    assert find_mirror(files) == "https://mirror-b.example/debian"


def test_one_line_sources_skip_deb_src_comments_security_and_options() -> None:
    files = [("sources.list", ONE_LINE_DEBIAN12), ("google.list", ONE_LINE_THIRD_PARTY)]
    assert find_mirror(files) == "http://mirror-c.example/debian"


def test_third_party_with_a_debian_suite_but_no_main_component_is_not_the_archive() -> None:
    files = [("docker.sources", THIRD_PARTY_SAME_SUITE), ("debian.sources", DEBIAN12_DEB822)]
    assert find_mirror(files) == "http://mirror-a.example/debian"


def test_disabled_stanza_is_ignored() -> None:
    disabled = "Enabled: no\n" + DEBIAN12_DEB822.replace("mirror-a", "mirror-off").split("\n\n")[0]
    files = [("a.sources", disabled), ("b.sources", DEBIAN12_DEB822)]
    assert find_mirror(files) == "http://mirror-a.example/debian"


def test_only_third_party_and_security_raises_with_a_hint() -> None:
    files = [
        ("nodesource.sources", NODESOURCE_DEB822),
        ("google.list", ONE_LINE_THIRD_PARTY),
        ("sec.list", "deb http://x.example/debian-security bookworm-security main\n"),
    ]
    with pytest.raises(MirrorNotFound, match="--mirror"):
        find_mirror(files)


def test_host_mirror_reads_etc_apt_like_apt_does(tmp_path: Path) -> None:
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (tmp_path / "sources.list").write_text("# moved to sources.list.d\n")
    (parts / "debian.sources").write_text(DEBIAN12_DEB822)
    (parts / "nodesource.sources").write_text(NODESOURCE_DEB822)
    # apt ignores files with other suffixes, and so do we.
    (parts / "old.list.disabled").write_text("deb http://stale.example/debian bookworm main\n")
    assert host_mirror(tmp_path) == "http://mirror-a.example/debian"


def test_host_mirror_of_this_machine_is_a_debian_archive() -> None:
    if not Path("/etc/apt").is_dir():
        pytest.skip("not a Debian host")
    uri = host_mirror()
    assert uri.startswith(("http://", "https://", "file:"))
    assert "security" not in uri
