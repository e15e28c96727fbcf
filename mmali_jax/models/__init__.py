"""Flax modules of every network family, and their registry (`registry.py`)."""
