"""Shoal: an open-source agent-sandbox cloud that speaks the E2B API."""

__version__ = "0.1.0"
