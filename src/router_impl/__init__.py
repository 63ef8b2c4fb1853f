"""API Router Service: the single entry point of an AI-inference platform."""

__version__ = "0.1.0"
