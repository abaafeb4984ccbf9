"""Rendering results for people: terminal tables and units."""

from .text import format_size, format_table

__all__ = ["format_size", "format_table"]
