"""Test suite of the API Router Service (a package so `tests.harness` imports work)."""
