"""Harnesses that run real workers for tests, benches and chaos trials (like ``bytewax.testing``):
a worker subprocess, crash-recovery trials, consumer-group trials."""
