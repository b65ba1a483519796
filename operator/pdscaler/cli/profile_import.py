"""``pdscaler profile import``: a Dynamo ``.npz`` folder, an aiconfigurator CSV folder, the
paper's tables or ProfileSet files → one ProfileSet document, or a ConfigMap holding it.

Sources are read by :func:`pdscaler.cli.inputs.load_profiles` (several are merged, e.g. one
per GPU type or one per role); ``paper`` is the paper's embedded tables and a YAML file with
``format: paper-table`` holds a table of one's own (the arguments of
:func:`planner.import_paper_table`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pdscaler.cli.args import POSITIVE_INT

PAPER_TABLE_KEYS = (
    "input_tokens", "prefill_max_throughput_tokens_per_s", "decode_batch", "decode_tpot_ms",
    "gpus_per_instance", "gpu_type", "name", "prefill_zero_load_latency_ms",
)


def add_import_parser(commands: Any) -> None:
    """Register ``import`` under ``pdscaler profile``."""
    parser = commands.add_parser(
        "import",
        help="convert Dynamo / aiconfigurator / paper tables into a ProfileSet or ConfigMap",
        description="Read one or more profile sources and write one ProfileSet document "
        "(docs/profile-format.md), or, with --configmap NAME, a ConfigMap manifest holding it "
        "(for a PDDeployment's spec.profile.configMapRef). Sources: a Dynamo folder "
        "(prefill.npz, decode.npz), an aiconfigurator folder (prefill.csv, decode.csv; "
        "--gpu-type or the folder name gives the GPU), 'paper' (the paper's tables), a "
        "paper-table YAML (format: paper-table) or a ProfileSet file. Exit codes: 0 written, "
        "2 bad input.",
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="profile source(s)")
    parser.add_argument("--gpu-type", help="GPU type of an aiconfigurator folder")
    parser.add_argument("--configs", help="comma-separated instance names to keep")
    parser.add_argument("--kv-cache-tokens", type=POSITIVE_INT,
                        help="set every decode instance's KV-cache capacity, tokens")
    parser.add_argument("--max-batch-size", type=POSITIVE_INT,
                        help="set every decode instance's max batch size (max_num_seqs)")
    parser.add_argument("--configmap", metavar="NAME",
                        help="write a ConfigMap manifest named NAME instead of the bare document")
    parser.add_argument("--key", default="profile.yaml",
                        help="ConfigMap key of the document (default profile.yaml)")
    parser.add_argument("--namespace", help="the ConfigMap's metadata.namespace")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml",
                        help="document format (default yaml; a ConfigMap is always YAML)")
    parser.add_argument("-o", "--output-file", type=Path, metavar="FILE",
                        help="write here instead of standard output")
    parser.set_defaults(handler=run_import)


def _paper_table(path: Path) -> Any:
    """The ProfileSet of a paper-table YAML file, or None when ``path`` is not one."""
    import yaml

    from planner import import_paper_table

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or data.get("format") != "paper-table":
        return None
    unknown = sorted(set(data) - {"format", *PAPER_TABLE_KEYS})
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {unknown}; a paper table has {list(PAPER_TABLE_KEYS)}"
        )
    arguments = {k: v for k, v in data.items() if k != "format"}
    missing = [k for k in PAPER_TABLE_KEYS[:4] if k not in arguments]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    return import_paper_table(**arguments)


def load_import_sources(args: argparse.Namespace) -> Any:
    """The merged ProfileSet of ``args.sources`` with the overrides applied."""
    from pdscaler.cli.inputs import load_profiles
    from pdscaler.cli.plan import with_kv_cache
    from planner import ProfileSet, merge_profile_sets

    specs: list[str] = []
    tables: list[ProfileSet] = []
    for source in args.sources:
        path = Path(source)
        table = _paper_table(path) if path.is_file() and path.suffix in (".yaml", ".yml") else None
        if table is not None:
            tables.append(table)
        else:
            specs.append(source)
    sets = ([load_profiles(specs, args.gpu_type)] if specs else []) + tables
    profiles = sets[0] if len(sets) == 1 else merge_profile_sets(*sets)
    if args.configs:
        keep = {c.strip() for c in args.configs.split(",") if c.strip()}
        names = {i.name for i in profiles.instances}
        unknown = sorted(keep - names)
        if unknown:
            raise ValueError(f"--configs {unknown} not in the sources (have {sorted(names)})")
        profiles = profiles.model_copy(
            update={"instances": tuple(i for i in profiles.instances if i.name in keep)}
        )
        profiles = ProfileSet.model_validate(profiles.model_dump())
    profiles = with_kv_cache(profiles, args.kv_cache_tokens)
    if args.max_batch_size is not None:
        profiles = profiles.model_copy(
            update={
                "instances": tuple(
                    i.model_copy(
                        update={
                            "decode": i.decode.model_copy(
                                update={"max_batch_size": args.max_batch_size}
                            )
                        }
                    )
                    if i.decode is not None
                    else i
                    for i in profiles.instances
                )
            }
        )
    return profiles


def run_import(args: argparse.Namespace) -> int:
    from pdscaler.cli.manifest import configmap_manifest, dump_yaml
    from planner import dump_profile_document, parse_profile_document

    profiles = load_import_sources(args)
    if args.configmap:
        text = dump_yaml(configmap_manifest(profiles, args.configmap, args.key, args.namespace))
    else:
        text = dump_profile_document(profiles, args.format)
        parse_profile_document(text)  # what the planner and the operator read back
    if args.output_file is not None:
        args.output_file.write_text(text)
        summary = ", ".join(i.key for i in profiles.instances)
        print(f"wrote {args.output_file}: {summary}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
