"""Demo mode: a built-in upstream and default keys, so `make run` answers completions at once."""
