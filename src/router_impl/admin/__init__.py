"""Admin application services: config, organisation-limit and API-key administration, HTTP-free."""
