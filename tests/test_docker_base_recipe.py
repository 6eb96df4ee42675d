"""The Docker tests' base image recipe: where Debian comes from and what the cache tag covers."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from tests.harness.docker_images import BaseRecipe, ImageError, apt_sources, debian_mirror

DEB822 = """\
Types: deb
# a comment between fields
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""


def apt_dir(tmp_path: Path, sources_list: str, parts: dict[str, str] | None = None) -> Path:
    """An /etc/apt with `sources.list` and files in `sources.list.d`."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(sources_list)
    for name, text in (parts or {}).items():
        (tmp_path / "sources.list.d" / name).write_text(text)
    return tmp_path


def test_the_mirror_serving_bookworm_main_is_chosen(tmp_path: Path) -> None:
    one_line = (
        "deb [signed-by=/k.gpg] https://packages.example/apt cloud-sdk-bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
    )
    # A file apt does not read (no .list / .sources suffix) is left out as well.
    parts = {"debian.sources": DEB822, "other.sources.disabled": DEB822.replace("mirror", "off")}
    directory = apt_dir(tmp_path, one_line, parts)
    assert debian_mirror("bookworm", directory) == "http://mirror.example/debian"
    uris = [source.uri for source in apt_sources(directory)]
    assert "http://disabled.example/debian" not in uris  # Enabled: no
    assert "http://src.example/debian" not in uris  # deb-src
    assert "http://off.example/debian" not in uris


def test_one_line_sources_with_options_and_continued_deb822_fields(tmp_path: Path) -> None:
    continued = "Types: deb\nURIs: http://a.example/debian\n  http://b.example/debian/\n"
    continued += "Suites: bookworm\nComponents: main\n"
    commented = "# deb http://commented.example bookworm main\n"
    directory = apt_dir(tmp_path, commented, {"a.sources": continued})
    assert [s.uri for s in apt_sources(directory)] == [
        "http://a.example/debian",
        "http://b.example/debian/",
    ]
    assert debian_mirror("bookworm", directory) == "http://a.example/debian"


def test_no_debian_mirror_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no Debian mirror for sid main"):
        debian_mirror("sid", apt_dir(tmp_path, "deb http://x.example/debian sid contrib\n"))


def test_the_tag_changes_with_every_input_of_the_recipe() -> None:
    recipe = BaseRecipe("bookworm", "http://m/debian", ("python3",), (("a.crt", "00"),))
    variants = [
        attrs.evolve(recipe, mirror="http://other/debian"),
        attrs.evolve(recipe, packages=("python3", "python3-venv")),
        attrs.evolve(recipe, local_cas=(("a.crt", "01"),)),
        attrs.evolve(recipe, local_cas=()),
    ]
    assert recipe.tag.startswith("letta-appservice-test-base:bookworm-")
    assert recipe.tag == attrs.evolve(recipe).tag  # a copy: same tag, reused
    assert len({recipe.tag, *(variant.tag for variant in variants)}) == 5
