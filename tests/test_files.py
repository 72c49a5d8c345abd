"""files: outputs written atomically, private to their owner, never through a symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from previsit.errors import ConfigError
from previsit.files import private_folder, read_text, write_bytes, write_text


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


@pytest.fixture(autouse=True)
def open_umask() -> object:
    previous = os.umask(0o002)  # group-writable, world-readable by default
    yield None
    os.umask(previous)


def test_a_file_and_the_folders_made_for_it_are_private(tmp_path: Path) -> None:
    path = write_text(tmp_path / "a" / "b" / "plan.json", "{}\n")
    assert path.read_text() == "{}\n"
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "b"), mode(path)) == \
        ("0o700", "0o700", "0o600")
    assert os.listdir(tmp_path / "a" / "b") == ["plan.json"]  # no temporary file left


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    assert private_folder(shared) == shared
    write_text(shared / "x.html", "x")
    assert (mode(shared), mode(shared / "x.html")) == ("0o755", "0o600")


def test_an_existing_file_is_replaced_whole_and_made_private(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_text(path, "new")
    assert (path.read_text(), mode(path)) == ("new", "0o600")


def test_a_failed_write_leaves_the_old_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plan.json"
    write_text(path, "the last good plan")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_bytes(path, b"half a plan")
    assert path.read_text() == "the last good plan"
    assert os.listdir(tmp_path) == ["plan.json"]


def test_a_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    link = tmp_path / "plan.json"
    link.symlink_to(victim)
    write_text(link, "{}")
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == "{}"


def test_a_lone_surrogate_is_written_as_the_replacement_character(tmp_path: Path) -> None:
    path = write_text(tmp_path / "plan.json", '{"name": "Gil \ud800"}')
    assert path.read_bytes().decode("utf-8") == '{"name": "Gil \ufffd"}'


def test_read_text_ignores_a_byte_order_mark_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "previsit.toml"
    path.write_bytes(b"\xef\xbb\xbf[source]\n")
    assert read_text(path, ConfigError, "the configuration") == "[source]\n"
    with pytest.raises(ConfigError, match=r"missing.toml: cannot read the configuration"):
        read_text(tmp_path / "missing.toml", ConfigError, "the configuration")
