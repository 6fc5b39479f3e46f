"""Bounds on hostile input: limits, zip and JSON guards, regular files only, short printable names."""
