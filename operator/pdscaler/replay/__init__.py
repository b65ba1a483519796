"""Closed-loop replay: the simulator serves a trace while a scaling policy resizes its pools
from observations made the way Prometheus and vLLM make them (``docs/closed-loop.md``)."""
