"""An example third-party infer plugin (see plugin.py)."""
