"""Segments: the filter language, its compiler to SQL, and segment membership."""
