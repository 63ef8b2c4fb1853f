"""Per-area wiring for the composition root (``app.py``): each module builds one area's parts."""
