"""Control plane: config loading, Runtime snapshots, listeners, workers and their supervision,
the admin API."""

VERSION = "0.1.0"
