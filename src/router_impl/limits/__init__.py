"""Limits: token buckets, budgets and idempotency, each a small port with embedded and shared adapters."""
