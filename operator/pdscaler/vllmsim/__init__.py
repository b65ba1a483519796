"""A vLLM-compatible server whose latencies follow a performance profile.

Speaks the OpenAI completions and chat-completions API (streaming included) and exports vLLM's
``/metrics`` families, so the operator, the profiler and load tests can run against many cheap
instances instead of GPUs. Timing rules are the planner simulator's (:mod:`planner.simulate`).
"""
