"""State that outlives a reload: in-process (memory) and shared (Redis) stores."""
