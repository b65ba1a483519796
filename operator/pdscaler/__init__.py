"""pdscaler: SLO-aware autoscaler for prefill/decode disaggregated LLM serving on Kubernetes.

The pure sizing library is the separate package :mod:`planner`; this package holds everything
that does I/O: the command line, the Kubernetes operator and its adapters, the profiler and the
vLLM simulator.
"""

__version__ = "0.1.0"
