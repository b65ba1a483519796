"""``pdscaler profile``: measure an OpenAI-compatible endpoint (vLLM) into a planner profile.

* :mod:`~pdscaler.profiler.client` — streamed completions with per-token timing (aiohttp);
* :mod:`~pdscaler.profiler.prompts` — prompts of exact token length that miss the prefix cache;
* :mod:`~pdscaler.profiler.measure` — pure estimators (saturation throughput, steady-state TPOT);
* :mod:`~pdscaler.profiler.sweeps` — the prefill, rate and decode sweeps, resumable point by point;
* :mod:`~pdscaler.profiler.fit` — the profile, the fit report and the queueing-model check;
* :mod:`~pdscaler.profiler.plots` — the PNG figures;
* :mod:`~pdscaler.profiler.live` — live observations from Prometheus for calibration.
"""
