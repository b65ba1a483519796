"""``pdscaler vllm-sim``: serve simulated vLLM instances of one role."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from pdscaler.cli.inputs import load_profiles
from pdscaler.vllmsim.engine import DEFAULT_MAX_NUM_SEQS, DEFAULT_TOKEN_BUDGET, EngineConfig
from pdscaler.vllmsim.server import serve


def add_vllm_sim_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "vllm-sim",
        help="serve simulated vLLM instances whose latencies follow a profile",
        description="An OpenAI-compatible server with vLLM's /metrics, timed by a performance "
        "profile with real queueing and continuous batching. N instances on consecutive ports.",
    )
    parser.add_argument("--profile", default="paper", help="profile (as for 'pdscaler plan')")
    parser.add_argument("--gpu-type", help="GPU type for an aiconfigurator folder")
    parser.add_argument("--config", help="instance config name in the profile (default: first)")
    parser.add_argument("--role", choices=("prefill", "decode", "both"), default="both")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="first port")
    parser.add_argument("--instances", type=int, default=1, help="instances on consecutive ports")
    parser.add_argument("--model-name", default="sim-model")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every simulated duration (e.g. 0.1 runs 10x faster)",
    )
    parser.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    parser.add_argument("--max-num-batched-tokens", type=int, default=DEFAULT_TOKEN_BUDGET)
    parser.add_argument("--max-model-len", type=int, default=131072)
    parser.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=1 << 20,
        help="KV-cache capacity when the profile gives none",
    )
    parser.add_argument("--kv-transfer-s", type=float, default=0.0)
    parser.add_argument("--kv-transfer-s-per-token", type=float, default=0.0)
    parser.set_defaults(handler=run_vllm_sim)


def engine_configs(args: argparse.Namespace) -> list[EngineConfig]:
    """Validated engine configs from the arguments (bad values raise ValueError)."""
    profiles = load_profiles([args.profile], args.gpu_type)
    names = (args.config,) if args.config else None
    prefill = profiles.select("prefill", names)[0] if args.role != "decode" else None
    decode = profiles.select("decode", names)[0] if args.role != "prefill" else None
    for name in (
        "instances",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_model_len",
        "kv_cache_tokens",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if not 0 < args.port < 65536 or args.port + args.instances > 65536:
        raise ValueError(f"--port={args.port} with --instances={args.instances} is out of range")
    config = EngineConfig(
        role=args.role,
        prefill=prefill,
        decode=decode,
        model_name=args.model_name,
        time_scale=args.time_scale,
        token_budget=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        kv_cache_tokens=args.kv_cache_tokens,
        kv_transfer_fixed_s=args.kv_transfer_s,
        kv_transfer_s_per_token=args.kv_transfer_s_per_token,
    )
    if not (config.time_scale > 0):
        raise ValueError(f"--time-scale={args.time_scale} must be > 0")
    return [config] * args.instances


def run_vllm_sim(args: argparse.Namespace) -> int:
    configs = engine_configs(args)

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(configs, args.host, args.port, ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()  # raise the start-up error (e.g. port in use)
        ports = ", ".join(str(args.port + i) for i in range(len(configs)))
        print(
            f"vllm-sim: {len(configs)} {args.role} instance(s) of {args.model_name} on "
            f"{args.host} port(s) {ports}",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except OSError as exc:
        print(
            f"pdscaler vllm-sim: error: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0
