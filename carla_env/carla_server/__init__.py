"""The real CARLA backend: a server manager that owns its server processes, and the core on top."""
