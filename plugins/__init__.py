"""zoo's built-in plugins; zoo finds them through the entry points in setup.cfg, like any other."""
