"""Shared pytest setup: tests/ is on sys.path (see pyproject) so `from builders import …` works."""
