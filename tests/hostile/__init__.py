"""Hostile and broken data sources (issue 8): the fuzz-and-fault suite; see conftest.py."""
