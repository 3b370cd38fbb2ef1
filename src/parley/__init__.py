"""Parley: a self-hosted server for the OpenAI Realtime API on open models."""

__version__ = "0.1.0"
