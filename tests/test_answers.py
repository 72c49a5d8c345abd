"""A worker's answer handed over in a file (previsit.answers): what the run's process takes
is what the worker put, the file is gone after, and nobody else can read it."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from previsit import answers


def test_an_answer_is_taken_as_it_was_put_and_then_gone() -> None:
    into = answers.folder()
    try:
        assert stat.S_IMODE(os.stat(into).st_mode) == 0o700
        path = answers.put({"plans": ["x" * 200_000], "n": 3}, into)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert answers.take(path) == {"plans": ["x" * 200_000], "n": 3}
        assert not os.path.exists(path)
        assert os.listdir(into) == []
    finally:
        answers.remove(into)
    assert not os.path.exists(into)


def test_a_worker_answers_with_a_path_of_a_few_bytes() -> None:
    into = answers.folder()
    try:
        with ProcessPoolExecutor(1) as pool:
            path = pool.submit(answers.put, list(range(100_000)), into).result()
        assert len(path.encode()) < 512  # written to the pool's pipe whole, never in part
        assert answers.take(path) == list(range(100_000))
    finally:
        answers.remove(into)


def test_an_answer_that_cannot_be_pickled_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="pickle"):
        answers.put(lambda: None, str(tmp_path))
    assert list(tmp_path.iterdir()) == []
