"""The engines' own files, read and written with engine layer ids kept (DESIGN.md §4)."""
