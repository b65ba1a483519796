"""Profiler recovery: profile the vLLM simulator configured from a known profile, compare.

Two simulator processes (``pdscaler vllm-sim``) serve the known profile, one per role as in a
P/D deployment: the prefill endpoint (``--role prefill``) and the decode endpoint
(``--role decode``). ``pdscaler profile`` measures them; every measured point is compared with
the known profile's fitted value at the same point:

* prefill: maximum throughput ``P_max(L)`` and zero-load latency ``t0(L)`` per input length;
* decode: TPOT per (batch, context).

The simulators run on a stretched clock (``--prefill-scale``, ``--decode-scale``; default 2 and
6), and the measured times are divided by the scale before the comparison: the simulator's
own overhead per step (an event-loop wake-up rounded up to the millisecond, and the work of
emitting tokens) then weighs less beside the simulated durations. ``--prefill-scale 1
--decode-scale 1`` shows that overhead in full.

Prints the error table and writes ``results/profiler_recovery.json``; the measured profile,
its fit report and plots go to ``results/profiler_recovery/``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from pdscaler.profiler.run import run_profile  # noqa: E402
from pdscaler.profiler.settings import ProfileLabels, SweepSettings  # noqa: E402

from planner import (  # noqa: E402
    DecodeCurve,
    DecodePoint,
    InstanceProfile,
    PrefillCurve,
    PrefillPoint,
    ProfileSet,
    dump_profile_document,
)

CONFIG = "h100-tp1"


def t_sat(n: float) -> float:
    return 0.004 + 4e-5 * n + 2e-9 * n * n


def t_zero(n: float) -> float:
    return 0.012 + 4.2e-5 * n + 2e-9 * n * n


def tpot_ms(batch: float, context: float) -> float:
    return 6.0 + 0.08 * batch + 2e-5 * batch * context


def known_profile() -> ProfileSet:
    """An 8B-class model on one GPU: quadratic prefill times, TPOT linear in batch x context."""
    prefill = PrefillCurve(points=tuple(
        PrefillPoint(input_tokens=n, max_throughput_tokens_per_s=n / t_sat(n),
                     zero_load_latency_ms=1000 * t_zero(n))
        for n in (256, 512, 1024, 2048, 4096, 8192)))
    decode = DecodeCurve(
        points=tuple(DecodePoint(context_tokens=c, batch_size=b, tpot_ms=tpot_ms(b, c))
                     for c in (512, 1024, 4096, 8192) for b in (1, 2, 4, 8, 16, 32, 64, 128)),
        kv_cache_capacity_tokens=2_000_000, max_batch_size=256)
    return ProfileSet(instances=(
        InstanceProfile(name=CONFIG, role="prefill", gpu_type="h100", gpus_per_instance=1,
                        prefill=prefill),
        InstanceProfile(name=CONFIG, role="decode", gpu_type="h100", gpus_per_instance=1,
                        decode=decode)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sim(
    spec: Path, role: str, scale: float, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    handle = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdscaler", "vllm-sim", "--profile", str(spec), "--config", CONFIG,
         "--role", role, "--port", str(port), "--time-scale", str(scale)],
        stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator")])},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"vllm-sim ({role}) did not come up; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def compare(profile: ProfileSet, prefill_scale: float, decode_scale: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    known = known_profile()
    k_prefill = known.instances[0].prefill
    k_decode = known.instances[1].decode
    m_prefill = profile.for_role("prefill")[0].prefill
    m_decode = profile.for_role("decode")[0].decode
    assert k_prefill and k_decode and m_prefill and m_decode
    for point in m_prefill.points:
        n = float(point.input_tokens)
        truth = float(k_prefill.max_throughput_tokens_per_s(n))
        value = point.max_throughput_tokens_per_s * prefill_scale
        rows.append({"curve": "prefill P_max (tok/s)", "point": f"L={point.input_tokens}",
                     "known": truth, "measured": value, "error": value / truth - 1})
        if point.zero_load_latency_ms is not None:
            truth = 1000 * float(k_prefill.zero_load_latency_s(n))
            value = point.zero_load_latency_ms / prefill_scale
            rows.append({"curve": "prefill t0 (ms)", "point": f"L={point.input_tokens}",
                         "known": truth, "measured": value, "error": value / truth - 1})
    for dpoint in m_decode.points:
        truth = float(k_decode.tpot_ms_scalar(dpoint.batch_size, dpoint.context_tokens))
        value = dpoint.tpot_ms / decode_scale
        rows.append({"curve": f"decode TPOT (ms), context {dpoint.context_tokens}",
                     "point": f"B={dpoint.batch_size}", "known": truth, "measured": value,
                     "error": value / truth - 1})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefill-scale", type=float, default=2.0)
    parser.add_argument("--decode-scale", type=float, default=6.0)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "results" / "profiler_recovery.json")
    args = parser.parse_args()
    out_dir = args.output.with_suffix("")  # profile, report and plots of the run
    with tempfile.TemporaryDirectory(prefix="profiler-recovery-") as tmp:
        work = Path(tmp)
        spec = work / "known.yaml"
        spec.write_text(dump_profile_document(known_profile()))
        prefill_proc, prefill_url = start_sim(spec, "prefill", args.prefill_scale,
                                              work / "prefill.log")
        try:
            decode_proc, decode_url = start_sim(spec, "decode", args.decode_scale,
                                                work / "decode.log")
            try:
                settings = SweepSettings(
                    prefill_endpoint=prefill_url,
                    decode_endpoint=decode_url,
                    input_tokens=(512, 1024, 2048, 4096),
                    zero_load_requests=5,
                    rate_input_tokens=512,
                    rate_utilizations=(0.2, 0.4, 0.6, 0.8),
                    rate_requests=60,
                    contexts=(1024, 4096),
                    batch_sizes=(1, 2, 4, 8, 16, 32, 64),
                    decode_output_tokens=48,
                    trials=args.trials,
                )
                started = time.monotonic()
                run = run_profile(settings, ProfileLabels(name=CONFIG, gpu_type="h100",
                                                          hardware="vllm-sim"),
                                  out_dir, fresh=True)
                elapsed = time.monotonic() - started
            finally:
                stop(decode_proc)
        finally:
            stop(prefill_proc)
    if run.profile is None or run.report is None:
        print(f"profiling failed: {run.problem}", file=sys.stderr)
        return 1
    rows = compare(run.profile, args.prefill_scale, args.decode_scale)
    print(f"{'curve':<34} {'point':>8} {'known':>10} {'measured':>10} {'error':>8}")
    for row in rows:
        print(f"{row['curve']:<34} {row['point']:>8} {row['known']:>10.3f} "
              f"{row['measured']:>10.3f} {100 * row['error']:>+7.2f}%")
    worst: dict[str, float] = {}
    for row in rows:
        curve = row["curve"]
        worst[curve] = max(worst.get(curve, 0.0), abs(row["error"]))
    print("\nmax |error| per curve:")
    for curve, value in worst.items():
        print(f"  {curve:<34} {100 * value:6.2f} %")
    rate_rows = run.report["ttft_vs_rate"]
    if rate_rows:
        print("\nTTFT vs rate (measured, scaled clock) against the queueing models:")
        for r in rate_rows:
            print(f"  {r['rate_per_s']:6.2f} req/s  load {100 * r['utilization']:3.0f} %  "
                  f"mean {1000 * r['measured_mean_s']:7.1f} ms (mm1 {1000 * r['mm1_mean_s']:7.1f}, "
                  f"mg1 {1000 * r['mg1_mean_s']:7.1f})  p90 {1000 * r['measured_p90_s']:7.1f} ms "
                  f"(mm1 {1000 * r['mm1_p90_s']:7.1f}, mg1 {1000 * r['mg1_p90_s']:7.1f})")
    result = {
        "prefill_scale": args.prefill_scale,
        "decode_scale": args.decode_scale,
        "trials": args.trials,
        "elapsed_s": elapsed,
        "requests": run.report["errors"]["requests"],
        "failed_requests": run.report["errors"]["failed_requests"],
        "max_abs_error_per_curve": worst,
        "points": rows,
        "ttft_vs_rate": rate_rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['requests']} requests, {result['failed_requests']} failed, "
          f"{elapsed:.0f} s; wrote {args.output} and {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
