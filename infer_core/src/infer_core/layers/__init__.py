"""Layers shared by more than one architecture."""
