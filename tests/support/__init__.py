"""Test support: the real proxy in-process or via the CLI, real origins and a raw client."""
