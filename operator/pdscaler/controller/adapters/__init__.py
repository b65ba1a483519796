"""Adapters: the only modules that do I/O (the Kubernetes API server, Prometheus)."""
