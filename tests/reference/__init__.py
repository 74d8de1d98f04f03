"""Pure-Python reference implementations of the ext/ modules (test oracles, never imported by
the engine). Each has the public API of its ext/*.pyi, written for obviousness over speed."""
