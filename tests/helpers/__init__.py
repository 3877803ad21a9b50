"""Shared test helpers (imported as ``helpers.<module>``: tests/ is on sys.path through tests/conftest.py)."""
