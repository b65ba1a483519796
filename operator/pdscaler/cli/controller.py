"""``pdscaler operator run`` (the Kubernetes operator) and ``pdscaler crd`` (print the CRD).

Registered in the main CLI by :func:`add_operator_parser`; also runnable on its own as
``python -m pdscaler.cli.controller operator run ...``.

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 2 invalid settings or no cluster access.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import random
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

EXIT_BAD_SETTINGS = 2


def add_operator_parser(subparsers: Any) -> None:
    """Add ``operator`` (with ``run``) and ``crd`` to the main CLI's subparsers."""
    operator = subparsers.add_parser(
        "operator", help="run the Kubernetes operator",
        description="The PDDeployment operator: plans and scales prefill/decode pools.",
    )
    commands = operator.add_subparsers(dest="operator_command", metavar="SUBCOMMAND")
    run = commands.add_parser(
        "run", help="run the operator against the current kubeconfig or in-cluster account",
        description="Settings come from PDSCALER_* environment variables (docs/operator.md); "
        "flags override them. Invalid settings stop the operator before it starts.",
    )
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", default=None,
                       help="watch every namespace")
    peering = run.add_mutually_exclusive_group()
    peering.add_argument("--peering", dest="peering_name", metavar="NAME",
                         help="kopf peering object: only the highest-priority replica acts "
                         "(default pdscaler; deploy/peering.yaml creates it)")
    peering.add_argument("--standalone", action="store_true", default=None,
                         help="no peering: act alone")
    run.add_argument("--priority", type=int, help="peering priority (default: by start time, "
                     "the oldest replica leads)")
    run.add_argument("--prometheus-url", help="default Prometheus base URL")
    auth = run.add_argument_group("Prometheus authentication (files mounted from Secrets)")
    auth.add_argument("--prometheus-bearer-token-file", metavar="FILE",
                      help="file holding a bearer token (read again when it changes)")
    auth.add_argument("--prometheus-basic-auth-file", metavar="FILE",
                      help="file holding user:pass for basic auth")
    auth.add_argument("--prometheus-username-file", metavar="FILE",
                      help="file holding the basic-auth user (with --prometheus-password-file)")
    auth.add_argument("--prometheus-password-file", metavar="FILE",
                      help="file holding the basic-auth password")
    auth.add_argument("--prometheus-ca-file", metavar="FILE",
                      help="CA bundle (PEM) that signs Prometheus's TLS certificate")
    auth.add_argument("--prometheus-header", dest="prometheus_headers", action="append",
                      metavar="'NAME: VALUE'",
                      help="extra header for every query, e.g. 'X-Scope-OrgID: t1' (repeat)")
    run.add_argument("--interval", dest="default_interval_s", type=float, metavar="SECONDS",
                     help="default seconds between reconciles of one object (30)")
    run.add_argument("--workers", type=int, help="reconcile threads (8)")
    run.add_argument("--metrics-port", type=int, help="port of the operator's /metrics (9808; "
                     "0: off)")
    run.add_argument("--health-port", type=int, help="port of /healthz (8080; 0: off)")
    run.add_argument("--bind-address", help="address the two ports listen on (0.0.0.0)")
    run.add_argument("--log-format", choices=("json", "text"), help="log format (json)")
    run.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                     help="log level (INFO)")
    run.set_defaults(handler=run_operator)
    operator.set_defaults(handler=run_operator)

    crd = subparsers.add_parser(
        "crd", help="print the PDDeployment CRD (generated from the API models)",
        description="Print deploy/crd.yaml as generated from operator/pdscaler/controller/api.py.",
    )
    crd.add_argument("--peering", action="store_true",
                     help="print kopf's peering CRDs and peering object instead")
    crd.set_defaults(handler=run_operator, operator_command="crd")


_SETTING_FLAGS = (
    "namespaces", "all_namespaces", "peering_name", "standalone", "priority", "prometheus_url",
    "default_interval_s", "workers", "metrics_port", "health_port", "bind_address",
    "log_format", "log_level", "prometheus_bearer_token_file", "prometheus_basic_auth_file",
    "prometheus_username_file", "prometheus_password_file", "prometheus_ca_file",
    "prometheus_headers",
)


def run_operator(args: argparse.Namespace) -> int:
    """Dispatch ``crd`` and ``operator run``; returns the process exit code."""
    if getattr(args, "operator_command", None) == "crd":
        from pdscaler.controller.crd import render_crd, render_peering

        sys.stdout.write(render_peering() if args.peering else render_crd())
        return 0
    if getattr(args, "operator_command", None) != "run":
        print("pdscaler operator: give a subcommand (run)", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    return _run(args)


def release_free_memory_periodically(every_s: float = 60.0) -> None:
    """Return freed heap pages to the OS every ``every_s`` (glibc ``malloc_trim``).

    CPython on glibc keeps the high-water mark of its heap: one burst (a thousand objects
    listed and reconciled at start-up) would otherwise stay in the resident set for good.
    A no-op where ``malloc_trim`` does not exist.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return

    def loop() -> None:
        while True:
            time.sleep(every_s)
            trim(0)

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()


def default_priority() -> int:
    """Peering priority from the start time: the oldest replica has the highest priority, so
    a restarted or added replica never takes over from a running leader. Ties are broken by a
    random part."""
    return -int(time.time() * 1000) * 1000 + random.randrange(1000)


def _run(args: argparse.Namespace) -> int:
    from pdscaler.controller.settings import SettingsError, load_settings

    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in _SETTING_FLAGS}
    for many in ("namespaces", "prometheus_headers"):
        if overrides[many]:
            overrides[many] = tuple(overrides[many])
    try:
        settings = load_settings(overrides=overrides)
        if not settings.namespaces and not settings.all_namespaces:
            raise SettingsError(
                "namespaces: give --namespace NS (repeatable) or --all-namespaces "
                "(PDSCALER_NAMESPACES / PDSCALER_ALL_NAMESPACES)"
            )
    except SettingsError as exc:
        print(f"pdscaler operator: invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS

    import kopf

    from pdscaler.controller import handlers
    from pdscaler.controller.adapters.kube import KubeClient, KubeError, load_api_client
    from pdscaler.controller.adapters.prometheus import (
        PrometheusAuth,
        PrometheusPool,
        parse_header,
    )
    from pdscaler.controller.observability import configure_logging, serve_metrics
    from pdscaler.controller.shell import Runtime
    from pdscaler.vllm_metrics import MetricNameCache

    configure_logging(settings.log_format, settings.log_level)
    try:
        api = load_api_client(settings.kube_timeout_s, pool_size=settings.workers * 2)
    except Exception as exc:
        print(f"pdscaler operator: no Kubernetes credentials: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    kube = KubeClient(
        api, timeout_s=settings.kube_timeout_s, capacity_ttl_s=settings.capacity_cache_ttl_s,
        configmap_ttl_s=settings.profile_cache_ttl_s,
    )
    try:
        kube.request("GET", "/version")
    except KubeError as exc:
        print(f"pdscaler operator: cannot reach the API server: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    auth = PrometheusAuth(
        bearer_token_file=settings.prometheus_bearer_token_file,
        basic_auth_file=settings.prometheus_basic_auth_file,
        username_file=settings.prometheus_username_file,
        password_file=settings.prometheus_password_file,
        ca_file=settings.prometheus_ca_file,
        headers=tuple(parse_header(h) for h in settings.prometheus_headers),
    )
    pool = PrometheusPool(settings.prometheus_timeout_s, pool_size=settings.workers, auth=auth)

    def prometheus_query(url: str) -> Any:
        return pool.get(url).query

    def prometheus_query_with(url: str, headers: Any) -> Any:
        return pool.get(url, headers).query

    runtime = Runtime(
        settings=settings, kube=kube, prometheus=prometheus_query,
        prometheus_with_headers=prometheus_query_with,
        names=MetricNameCache(settings.metric_names_ttl_s),
    )
    executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="reconcile")
    memo = kopf.Memo()
    memo[handlers.MEMO_KEY] = handlers.OperatorState(runtime=runtime, executor=executor)
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.bind_address)
    release_free_memory_periodically()
    liveness = (
        f"http://{settings.bind_address}:{settings.health_port}/healthz"
        if settings.health_port else None
    )
    priority = settings.priority if settings.priority is not None else default_priority()
    kopf.configure(verbose=settings.log_level == "DEBUG")
    configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(kopf.operator(
            registry=handlers.registry,
            memo=memo,
            clusterwide=settings.all_namespaces,
            namespaces=list(settings.namespaces),
            standalone=settings.standalone,
            peering_name=None if settings.standalone else settings.peering_name,
            priority=priority,
            liveness_endpoint=liveness,
        ))
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        pool.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pdscaler")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_operator_parser(subparsers)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
