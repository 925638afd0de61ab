"""Streaming assistant replies: see README.md for how the modules fit."""

__version__ = "0.1.0"
