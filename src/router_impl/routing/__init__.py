"""Routing: backend selection, health, and the outbound client that calls OpenAI-compatible backends."""
