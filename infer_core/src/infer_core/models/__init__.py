"""The interface every architecture implements, and what models share at construction."""
