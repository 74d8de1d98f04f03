"""Control plane: config schema and loading, Runtime snapshots, worker supervision."""
