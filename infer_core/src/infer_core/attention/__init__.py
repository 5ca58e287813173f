"""Attention over the flat batch: metadata, the backend interface, and the torch reference."""
