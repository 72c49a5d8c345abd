"""Fixtures for the web tests: a fixed clock, a keyring, a store in tmp_path, a fake EHR."""

from __future__ import annotations

from pathlib import Path

import pytest
from web_fakes import Clock, FakeEhr

from previsit.web.keyring import Keyring
from previsit.web.store import Store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def store(tmp_path: Path, keyring: Keyring, clock: Clock) -> Store:
    return Store(tmp_path / "state.sqlite3", keyring, clock=clock)


@pytest.fixture
def ehr(clock: Clock) -> FakeEhr:
    return FakeEhr(clock)
