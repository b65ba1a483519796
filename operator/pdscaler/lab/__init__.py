"""``pdscaler lab``: the operator scaling a P/D deployment of vLLM stand-ins on a local
control plane with fake GPU nodes, under a replayed trace (docs/lab.md)."""
