"""Runtime configuration: the validated model and its sources."""
