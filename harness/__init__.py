"""In-process federation for tests and benchmarks: ServerApp against ClientApp, no transport."""
