"""Single-line mutation testing for the planner (and the operator's pure controller core).

Each mutant changes one expression or statement on one source line (AST-based, the rest of the
file is left byte for byte), then only the unit tests mapped to that module run
(``pytest -x -q -p no:cacheprovider``, plus the module's doctests) with a per-mutant timeout.
A mutant is *killed* when the tests fail or time out, *survives* when they pass.

Operators
---------
``cmp``      flip a comparison: ``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``,
             ``is`` <-> ``is not``, ``in`` <-> ``not in``
``addsub``   ``+`` <-> ``-`` (also in augmented assignments)
``muldiv``   ``*`` <-> ``/`` (also in augmented assignments)
``const``    a number ``c`` -> ``c + 1`` and ``c * 2`` (``True`` <-> ``False``)
``drop``     drop a term: ``a + b`` -> ``a`` or ``b``, ``a - b`` / ``a * b`` / ``a / b`` -> ``a``
             (``a * b`` also -> ``b``)
``return``   return a constant: ``return e`` -> ``return 0.0`` (``return not e`` for a test)
``negate``   negate the condition of an ``if``, ``while``, conditional expression or
             comprehension filter
``minmax``   remove a ``max``/``min`` (also ``np.maximum``/``np.minimum``): keep one argument

Strings, f-strings, docstrings, annotations, ``raise`` statements, ``assert`` statements and
lines marked ``# pragma: no mutate`` are not mutated.

The report (``docs/mutation.md`` by default) gives the score per module and lists each survivor
with the reason it is equivalent (from :data:`EQUIVALENT`) or the test that is missing.

Usage::

    python scripts/mutation.py                     # default modules, all mutants
    python scripts/mutation.py --sample 150 --seed 1 --jobs 2 planner/optimize.py
    python scripts/mutation.py --list planner/models.py   # show the mutants, run nothing
"""

from __future__ import annotations

import argparse
import ast
import compileall
import copy
import json
import multiprocessing
import multiprocessing.context
import os
import py_compile
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXCLUDED = {"simulate.py", "importers.py"}
CORE = Path("operator/pdscaler/controller/core")

#: Module -> the fast unit tests that exercise it (its doctests always run as well).
TEST_MAP: dict[str, tuple[str, ...]] = {
    "planner/models.py": (
        "tests/unit/test_models_reference.py",
        "tests/unit/test_paper.py",
    ),
    "planner/queueing.py": (
        "tests/unit/test_models_reference.py",
        "tests/unit/test_queueing.py",
    ),
    "planner/control.py": (
        "tests/unit/test_control_rules.py",
        "tests/unit/test_control.py",
    ),
    "planner/optimize.py": (
        "tests/unit/test_optimize_rules.py",
        "tests/unit/test_cost_selection.py",
        "tests/unit/test_paper.py",
        "tests/unit/test_cli_plan.py",
    ),
    "planner/paper.py": ("tests/unit/test_paper.py",),
    "planner/profile.py": ("tests/unit/test_profiles.py", "tests/unit/test_models_reference.py"),
    "planner/fitting.py": ("tests/unit/test_profiles.py",),
    "planner/workload.py": (
        "tests/unit/test_models_reference.py",
        "tests/unit/test_profiles.py",
        "tests/unit/test_cli_plan.py",
    ),
    "planner/calibration.py": ("tests/unit/test_calibration.py",),
    "planner/__init__.py": ("tests/unit/test_paper.py",),
    f"{CORE}/tick.py": (
        "tests/unit/test_tick.py",
        "tests/unit/test_tick_core.py",
        "tests/unit/test_faults_tick.py",
        "tests/unit/test_online_calibration.py",
        "tests/unit/test_reconcile.py",
        "tests/unit/test_profile_documents.py",
    ),
    f"{CORE}/planning.py": (
        "tests/unit/test_tick.py", "tests/unit/test_tick_core.py", "tests/unit/test_reconcile.py",
    ),
    f"{CORE}/profiles.py": (
        "tests/unit/test_profile_documents.py",
        "tests/unit/test_tick_core.py",
        "tests/unit/test_tick.py",
        "tests/unit/test_reconcile.py",
    ),
    f"{CORE}/status.py": (
        "tests/unit/test_tick.py", "tests/unit/test_tick_core.py",
        "tests/unit/test_faults_tick.py", "tests/unit/test_reconcile.py",
    ),
    f"{CORE}/memo.py": ("tests/unit/test_tick.py",),
    f"{CORE}/observing.py": ("tests/unit/test_replay_policies.py",),
}
FALLBACK_TESTS = ("tests/unit",)

#: Survivors known to be equivalent (or accepted), keyed by module, original line and mutated
#: line (both stripped), so the key survives edits elsewhere in the file.
EQUIVALENT: dict[tuple[str, ...], str] = {}


def _equivalent(module: str, original: str, mutated: str, why: str, occurrence: int = 0) -> None:
    key = (module, original, mutated) if not occurrence else (
        module, original, mutated, f"#{occurrence}")
    EQUIVALENT[key] = why


_SLACK = ("a numerical slack or tolerance: the two sides differ only on an exact tie that the "
          "model's inputs do not produce; equivalent")
_BRACKET = ("only the initial bracket of a root search, which the loop below widens until it "
            "holds the root; the quantile is the same; equivalent")
for _original, _mutated, _why in (
    ("if gap <= 0:", "if gap < 0:",
     "unreachable: gap = 1/E[S] - lambda/n <= 0 exactly when utilization >= 1, which returned "
     "above; equivalent"),
    ("if busy <= target:", "if busy < target:",
     "at busy = 1 - p the piecewise solve below gives y = 0, the same factor 1.0; equivalent"),
    ("order = np.argsort(1.0 / gaps)", "order = np.argsort(2.0 / gaps)",
     "scaling by 2 keeps the order; equivalent"),
    ("real = sorted(r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0)",
     "real = sorted(r.real for r in roots if abs(r.imag) <= 1e-09 and r.real > 0)", _SLACK),
    ("return 1.0 + float(roots[np.argmax(inside)]) if inside.any() else 1.0 + float(ends[-1])",
     "return 1.0 + float(roots[np.argmax(inside)]) if inside.any() else 1.0",
     "unreachable fallback: when busy > 1 - p the decreasing, continuous tail crosses 1 - p "
     "inside some piece; equivalent"),
):
    _equivalent("planner/models.py", _original, _mutated, _why)
for _original, _mutated, _why in (
    ("for v, w in zip(values, weights, strict=True):",
     "for v, w in zip(values, weights, strict=False):",
     "both lists come from the same distribution and always have its length; equivalent"),
    ("else json.dumps(self.content, sort_keys=True, default=str))",
     "else json.dumps(self.content, sort_keys=False, default=str))",
     "only the memo key of a parsed profile changes with key order (a cache miss, the same "
     "profile); equivalent"),
):
    _equivalent(f"{CORE}/planning.py" if "zip" in _original else f"{CORE}/profiles.py",
                _original, _mutated, _why)
_INSIDE = "inside = (roots >= starts - 1e-12) & (roots <= ends + 1e-12)"
for _mutated in (
    "inside = (roots > starts - 1e-12) & (roots <= ends + 1e-12)",
    "inside = (roots >= starts + 1e-12) & (roots <= ends + 1e-12)",
    "inside = (roots >= starts - 1e-12) & (roots < ends + 1e-12)",
    "inside = (roots >= starts - 2e-12) & (roots <= ends + 1e-12)",
):
    _equivalent("planner/models.py", _INSIDE, _mutated,
                "decides only a root on a breakpoint, where both neighbouring pieces give the "
                "same y (the tail is continuous); equivalent")
_UPPER = "upper = float(x.max()) + max(wait_mean_s / wait_probability, 1e-9)"
for _mutated in (
    "upper = float(x.max()) + (wait_mean_s / wait_probability)",
    "upper = float(x.max()) + 1e-09",
    "upper = float(x.max()) + max((wait_mean_s), 1e-9)",
    "upper = float(x.max()) + max(wait_mean_s / wait_probability, 2e-09)",
):
    _equivalent("planner/queueing.py", _UPPER, _mutated, _BRACKET)
for _original, _mutated, _why in (
    ("if abs(theta - mu) < 1e-9 * mu:", "if abs(theta - mu) <= 1e-09 * mu:", _SLACK),
    ("return float(brentq(survival, lower, upper, xtol=1e-9, rtol=1e-9))",
     "return float(brentq(survival, lower, upper, xtol=1e-9, rtol=2e-09))",
     "root-finder tolerance 1e-9 -> 2e-9 relative: below what a TTFT in seconds can show; "
     "equivalent"),
    ("upper *= 2.0", "upper *= 3.0", _BRACKET),
    ("while mmc_sojourn_survival(upper, arrival_rate_per_s, service_rate_per_s, servers) "
     "> target:",
     "while mmc_sojourn_survival(upper, arrival_rate_per_s, service_rate_per_s, servers) "
     ">= target:", _BRACKET),
):
    _equivalent("planner/queueing.py", _original, _mutated, _why)
for _original, _mutated, _why in (
    ("policy.scale_up_stabilization_s if bounded > current",
     "policy.scale_up_stabilization_s if bounded >= current",
     "names the window in a message that is only written when bounded != current, where > "
     "and >= agree; equivalent"),
    ("return abs(desired - current) <= tolerance * current + 1e-9",
     "return abs(desired - current) < tolerance * current + 1e-09", _SLACK),
    ("return abs(desired - current) <= tolerance * current + 1e-9",
     "return abs(desired - current) <= tolerance * current + 2e-09", _SLACK),
):
    _equivalent("planner/control.py", _original, _mutated, _why)
for _original, _mutated, _why in (
    ("high = min(low * 2, cap) if low > 0 else 1", "high = min(low * 4, cap) if low > 0 else 1",
     "a faster-growing bracket; the bisection that follows finds the same smallest count "
     "(latency is monotone in replicas); equivalent"),
    ("index = min(int(np.searchsorted(cumulative, percentile - 1e-12)), own.size - 1)",
     "index = min(int(np.searchsorted(cumulative, percentile - 2e-12)), own.size - 1)", _SLACK),
    ("key = (p_inst.name, round(step_s, 9))", "key = (p_inst.name, round(step_s, 10))",
     "a cache key's rounding: equal steps still share an entry; equivalent"),
    ("one_fewer = predict(replicas - 1) if replicas > 1 else None",
     "one_fewer = predict(replicas - 1) if replicas >= 1 else None",
     "only adds predict(0), which never reports a limit, so the binding rule cannot change; "
     "equivalent"),
):
    _equivalent("planner/optimize.py", _original, _mutated, _why)
for _occurrence in (0, 1):  # the same line in plan_prefill and plan_decode
    _equivalent("planner/optimize.py",
                "replicas = cap if bounds.max_replicas is not None else max(math.ceil(fluid), 1)",
                "replicas = cap if bounds.max_replicas is not None else (math.ceil(fluid))",
                "the fluid bound is positive (rate and lengths are), so its ceiling is >= 1; "
                "equivalent", _occurrence)


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int
    operator: str
    original: str
    mutated: str
    source: str = field(repr=False, compare=False)
    occurrence: int = 0  # how many identical (original, mutated) pairs come before it

    @property
    def key(self) -> tuple[str, ...]:
        base = (self.module, self.original.strip(), self.mutated.strip())
        return base if not self.occurrence else (*base, f"#{self.occurrence}")


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, timeout, error
    seconds: float
    detail: str = ""


# --------------------------------------------------------------------------- mutant generation


_CMP_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_BIN_SWAP: dict[type[ast.operator], tuple[str, type[ast.operator]]] = {
    ast.Add: ("addsub", ast.Sub), ast.Sub: ("addsub", ast.Add),
    ast.Mult: ("muldiv", ast.Div), ast.Div: ("muldiv", ast.Mult),
}
_MINMAX = {"max", "min", "maximum", "minimum"}
_TYPE_NAMES = {"Literal", "tuple", "dict", "list", "Annotated", "ClassVar", "Callable"}


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes whose subtrees are never mutated."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            for child in ast.walk(node):
                skipped.add(id(child))

    for node in ast.walk(tree):
        if isinstance(node, (ast.JoinedStr, ast.Raise, ast.Assert)):
            skip(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip(node.returns)
            for arg in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs,
                        node.args.vararg, node.args.kwarg):
                if arg is not None:
                    skip(arg.annotation)
            for decorator in node.decorator_list:
                skip(decorator)
        elif isinstance(node, ast.ClassDef):
            for decorator in node.decorator_list:
                skip(decorator)
        elif isinstance(node, ast.AnnAssign):
            skip(node.annotation)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            skip(node)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip(body[0])
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in _TYPE_NAMES
        ):
            skip(node)
    return skipped


def _replacements(node: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(operator, replacement node) pairs for one node."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        swap = _CMP_SWAP.get(type(node.ops[0]))
        if swap is not None:
            new = copy.deepcopy(node)
            new.ops = [swap()]
            yield "cmp", new
    elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
        name, swap_op = _BIN_SWAP[type(node.op)]
        new_bin = copy.deepcopy(node)
        new_bin.op = swap_op()
        yield name, new_bin
        yield "drop", copy.deepcopy(node.left)
        if isinstance(node.op, (ast.Add, ast.Mult)):
            yield "drop", copy.deepcopy(node.right)
    elif isinstance(node, ast.AugAssign) and type(node.op) in _BIN_SWAP:
        name, swap_op = _BIN_SWAP[type(node.op)]
        new_aug = copy.deepcopy(node)
        new_aug.op = swap_op()
        yield name, new_aug
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            yield "const", ast.Constant(not value)
        elif isinstance(value, (int, float)):
            seen = {value}
            for new_value in (value + 1, value * 2):
                if new_value not in seen:
                    seen.add(new_value)
                    yield "const", ast.Constant(new_value)
    elif isinstance(node, ast.Return) and node.value is not None:
        if isinstance(node.value, (ast.Compare, ast.BoolOp)) or (
            isinstance(node.value, ast.UnaryOp) and isinstance(node.value.op, ast.Not)
        ):
            yield "return", ast.Return(ast.UnaryOp(ast.Not(), copy.deepcopy(node.value)))
        elif not (isinstance(node.value, ast.Constant) and node.value.value in (0, 0.0)):
            yield "return", ast.Return(ast.Constant(0.0))
    elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
        new_cond = copy.deepcopy(node)
        new_cond.test = ast.UnaryOp(ast.Not(), copy.deepcopy(node.test))
        yield "negate", new_cond
    elif isinstance(node, ast.Call) and len(node.args) >= 2 and not node.keywords:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else "")
        if name in _MINMAX:
            for arg in node.args:
                if not isinstance(arg, ast.Starred):
                    yield "minmax", copy.deepcopy(arg)


def _segment_span(node: ast.AST) -> tuple[int, int, int, int] | None:
    """(line, col, end_line, end_col) of what a mutation replaces, single-line only."""
    if isinstance(node, (ast.If, ast.While)):
        target: ast.AST = node.test
    else:
        target = node
    if isinstance(node, ast.IfExp):
        target = node
    start, end = getattr(target, "lineno", None), getattr(target, "end_lineno", None)
    if start is None or end is None or start != end:
        return None
    return start, target.col_offset, end, target.end_col_offset or 0  # type: ignore[attr-defined]


def _render(node: ast.AST, replacement: ast.AST) -> str:
    if isinstance(node, (ast.If, ast.While)):
        assert isinstance(replacement, (ast.If, ast.While))
        return ast.unparse(replacement.test)
    return ast.unparse(replacement)


def generate(module: str) -> list[Mutant]:
    """Every mutant of one module (path relative to the repository)."""
    text = (REPO / module).read_text()
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    skipped = _skipped_nodes(tree)
    mutants: list[Mutant] = []
    seen: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.comprehension):
            # A comprehension's filters are conditions too.
            for condition in node.ifs:
                negated = ast.UnaryOp(ast.Not(), copy.deepcopy(condition))
                mutants.extend(_apply(module, lines, condition, ("negate", negated), seen))
            continue
        candidates = list(_replacements(node))
        for candidate in candidates:
            mutants.extend(_apply(module, lines, node, candidate, seen))
    mutants.sort(key=lambda m: (m.line, m.operator, m.mutated))
    counts: dict[tuple[str, ...], int] = {}
    for index, mutant in enumerate(mutants):
        seen_before = counts.get(mutant.key, 0)
        counts[mutant.key] = seen_before + 1
        if seen_before:
            mutants[index] = replace(mutant, occurrence=seen_before)
    return mutants


def _apply(module: str, lines: list[str], node: ast.AST, candidate: tuple[str, ast.AST],
           seen: set[tuple[int, str]]) -> Iterator[Mutant]:
    operator, replacement = candidate
    if isinstance(node, ast.Return) and isinstance(replacement, ast.Return):
        span = _segment_span(node.value) if node.value is not None else None
        text = ast.unparse(replacement.value) if replacement.value is not None else ""
        if isinstance(replacement.value, ast.UnaryOp):
            text = f"not ({ast.unparse(replacement.value.operand)})"
    elif isinstance(node, ast.AugAssign):
        span = _segment_span(node)
        text = ast.unparse(replacement)
    else:
        span = _segment_span(node)
        text = _render(node, replacement)
        if isinstance(replacement, ast.UnaryOp) and isinstance(replacement.op, ast.Not):
            text = f"not ({ast.unparse(replacement.operand)})"
        elif isinstance(node, (ast.If, ast.While)):
            text = f"not ({ast.unparse(node.test)})"
    if span is None:
        return
    line, col, _, end_col = span
    original = lines[line - 1]
    if "pragma: no mutate" in original:
        return
    if not isinstance(node, ast.Constant) and not isinstance(replacement, ast.Constant):
        text = f"({text})" if operator in {"drop", "minmax"} else text
    mutated = original[:col] + text + original[end_col:]
    if mutated == original or (line, mutated) in seen:
        return
    source = "".join(lines[: line - 1]) + mutated + "".join(lines[line:])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, module, "exec")
    except SyntaxError:
        return
    seen.add((line, mutated))
    yield Mutant(module, line, operator, original.rstrip("\n"), mutated.rstrip("\n"), source)


# --------------------------------------------------------------------------- running


def default_modules() -> list[str]:
    modules = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "planner").glob("*.py") if p.name not in EXCLUDED
    )
    core = REPO / CORE
    if core.is_dir():
        modules += sorted(str(p.relative_to(REPO)) for p in core.rglob("*.py"))
    return modules


def tests_for(module: str) -> list[str]:
    mapped = TEST_MAP.get(module, FALLBACK_TESTS)
    return [t for t in mapped if (REPO / t).exists()] or list(FALLBACK_TESTS)


def _make_sandbox() -> Path:
    """A copy of the sources and tests, bytecode-free, that mutants are written into."""
    root = Path(tempfile.mkdtemp(prefix="pdscaler-mutation-"))
    for name in ("planner", "operator", "tests"):
        shutil.copytree(REPO / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    # Bytecode checked against the source's hash, never its mtime: a mutant written in the same
    # second as the original, with the same size, can never run stale bytecode.
    compileall.compile_dir(
        root, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH
    )
    return root


def _environment(sandbox: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(sandbox), str(sandbox / "operator")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("PDSCALER_SHARED", str(REPO.parent / "shared"))
    env["HYPOTHESIS_PROFILE"] = env.get("HYPOTHESIS_PROFILE", "default")
    return env


def _pytest_args(module: str) -> list[str]:
    return ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "--noconftest",
            *tests_for(module), "--doctest-modules", module]


#: Imported once by the fork server, so that each mutant's pytest starts without paying for
#: numpy, scipy, pydantic and pytest again (the planner itself is imported fresh every time).
PRELOAD = ["numpy", "scipy.special", "scipy.stats", "scipy.optimize", "scipy.integrate",
           "scipy.interpolate", "pydantic", "yaml", "pytest", "_pytest.doctest", "hypothesis"]
_FORK: dict[str, multiprocessing.context.ForkServerContext] = {}


def _child(sandbox: str, args: list[str], log: str, env: dict[str, str]) -> None:
    """Run pytest in a process forked from the fork server, output to ``log``."""
    os.chdir(sandbox)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    sys.path[:0] = env["PYTHONPATH"].split(os.pathsep)
    sys.dont_write_bytecode = True
    import pytest

    code = int(pytest.main(args))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _pytest(sandbox: Path, module: str, timeout_s: float) -> tuple[int | None, float, str]:
    started = time.monotonic()
    context = _FORK.get("context")
    if context is None:
        command = [sys.executable, "-m", "pytest", *_pytest_args(module)]
        try:
            done = subprocess.run(command, cwd=sandbox, env=_environment(sandbox),
                                  capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started, "timeout"
        tail = (done.stdout + done.stderr).strip().splitlines()
        return done.returncode, time.monotonic() - started, tail[-1] if tail else ""
    log = sandbox / "pytest.log"
    env = {k: v for k, v in _environment(sandbox).items()
           if k in ("PYTHONPATH", "PDSCALER_SHARED")}
    process = context.Process(target=_child, args=(str(sandbox), _pytest_args(module),
                                                    str(log), env))
    process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join()
        return None, time.monotonic() - started, "timeout"
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return process.exitcode, time.monotonic() - started, lines[-1] if lines else ""


def baseline(sandbox: Path, module: str) -> float:
    code, seconds, tail = _pytest(sandbox, module, 1800)
    if code != 0:
        raise SystemExit(f"{module}: the unmutated tests do not pass ({tail}); fix that first")
    return seconds


def run_mutant(sandbox: Path, mutant: Mutant, timeout_s: float) -> Outcome:
    target = sandbox / mutant.module
    original = (REPO / mutant.module).read_text()
    target.write_text(mutant.source)
    try:
        code, seconds, tail = _pytest(sandbox, mutant.module, timeout_s)
    finally:
        target.write_text(original)
    if code is None:
        return Outcome(mutant, "timeout", seconds, tail)
    if code == 0:
        return Outcome(mutant, "survived", seconds, tail)
    if code in (1, 2):  # tests failed / collection (import) error
        return Outcome(mutant, "killed", seconds, tail)
    return Outcome(mutant, "error", seconds, f"pytest exit {code}: {tail}")


# --------------------------------------------------------------------------- report


def _key_text(mutant: Mutant) -> str:
    return " ::: ".join(mutant.key)


def _table_row(module: str, outcomes: list[Outcome], total: int) -> str:
    killed = sum(o.status in ("killed", "timeout") for o in outcomes)
    survived = sum(o.status == "survived" for o in outcomes)
    equivalent = sum(o.status == "survived" and o.mutant.key in EQUIVALENT for o in outcomes)
    errors = sum(o.status == "error" for o in outcomes)
    run = len(outcomes) - errors
    score = 100.0 * killed / run if run else float("nan")
    effective = run - equivalent
    adjusted = 100.0 * killed / effective if effective else float("nan")
    return (f"| `{module}` | {total} | {len(outcomes)} | {killed} | {survived} | {equivalent} "
            f"| {errors} | {score:.1f} % | {adjusted:.1f} % |")


def write_report(path: Path, outcomes: list[Outcome], totals: dict[str, int],
                 args: argparse.Namespace, elapsed_s: float, baselines: dict[str, float]) -> None:
    by_module: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_module.setdefault(outcome.mutant.module, []).append(outcome)
    lines = [
        "# Mutation testing",
        "",
        "Generated by `scripts/mutation.py` (`make mutation`); not part of CI. Each mutant changes",
        "one expression on one line (operators: flipped comparison, `+`/`-` swap, `*`/`/` swap,",
        "constant +1 / x2, a dropped term, a constant return, a negated condition, a removed",
        "`max`/`min`); only the module's mapped unit tests and its doctests run against it",
        "(`pytest -x -q -p no:cacheprovider`), with a per-mutant timeout of "
        f"{args.timeout_factor:g} x the unmutated run (at least {args.min_timeout:g} s).",
        "A timeout counts as killed. Survivors are listed at the end, each with the reason it",
        "is equivalent (kept in `EQUIVALENT` in the script) or marked as a missing test.",
        "",
        "Running it: `make mutation` (default `MUTATION_ARGS=\"--sample 100 --jobs 2\"`, every",
        "planner module but `simulate.py` and `importers.py`, and the operator's controller core",
        "when it exists); `--list` shows the mutants without running them; outcomes are kept in",
        "`docs/mutation-results.json` after every mutant, and `--resume` reuses the killed ones",
        "(valid while the mutated module is unchanged) and reruns the rest; `--report-only`",
        "rewrites this file from the kept outcomes. The test files run for each module are in",
        "`TEST_MAP` in the script.",
        "",
        "Command: `python scripts/mutation.py "
        + " ".join(a for a in args.argv if a != "--report-only") + "`  ",
        f"Sampling: {args.sample_text}  ",
        (f"Wall time: {elapsed_s / 60:.1f} min with {args.jobs} parallel job(s) on 2 shared "
         "cores." if elapsed_s > 0 else
         "Test time summed over the mutants' last runs: "
         f"{sum(o.seconds for o in outcomes) / 60:.0f} min (the report was rewritten from the "
         "kept outcomes)."),
        "",
    ]
    focus = [m for m in by_module if m in FOCUS]
    if focus:
        focus_outcomes = [o for m in focus for o in by_module[m]]
        killed = sum(o.status in ("killed", "timeout") for o in focus_outcomes)
        run = sum(o.status != "error" for o in focus_outcomes)
        equivalent = sum(o.status == "survived" and o.mutant.key in EQUIVALENT
                         for o in focus_outcomes)
        lines += [
            f"**Score over {', '.join(f'`{m}`' for m in focus)}: {killed} of {run} killed, "
            f"{100.0 * killed / max(run, 1):.1f} %** "
            f"({100.0 * killed / max(run - equivalent, 1):.1f} % of the {run - equivalent} "
            "non-equivalent mutants).",
            "",
        ]
    lines += [
        "| module | mutants | run | killed | survived | of which equivalent | errors | score "
        "| score without equivalent |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for module in sorted(by_module):
        lines.append(_table_row(module, by_module[module], totals[module]))
    lines.append("")
    if baselines:
        lines += ["Unmutated test time per module (s): " + ", ".join(
            f"`{m}` {s:.1f}" for m, s in sorted(baselines.items())), ""]
    lines += ["## Survivors", ""]
    for module in sorted(by_module):
        survivors = [o for o in by_module[module] if o.status == "survived"]
        if not survivors:
            continue
        lines += [f"### `{module}`", "",
                  "| line | operator | original → mutant | why it survives |",
                  "|---|---|---|---|"]
        for outcome in survivors:
            m = outcome.mutant
            why = EQUIVALENT.get(m.key) or (
                "**missing test**: " + ("not yet analysed; " if module not in FOCUS else "")
                + "nothing in " + ", ".join(f"`{Path(t).name}`" for t in tests_for(module))
                + " notices it")
            original = m.original.strip().replace("|", "\\|")
            mutated = m.mutated.strip().replace("|", "\\|")
            lines.append(f"| {m.line} | {m.operator} | `{original}` → `{mutated}` | {why} |")
        lines.append("")
    errors = [o for o in outcomes if o.status == "error"]
    if errors:
        lines += ["## Errors (not counted)", ""]
        lines += [f"* `{o.mutant.module}:{o.mutant.line}` {o.detail}" for o in errors]
        lines.append("")
    path.write_text("\n".join(lines))


FOCUS = ("planner/models.py", "planner/queueing.py", "planner/control.py", "planner/optimize.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules (default: planner/*.py except "
                        "simulate.py and importers.py, and the controller core when present)")
    parser.add_argument("--sample", type=int, default=0,
                        help="at most this many mutants per module, drawn at random (0: all)")
    parser.add_argument("--seed", type=int, default=20261130, help="sampling seed")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    parser.add_argument("--timeout-factor", type=float, default=4.0)
    parser.add_argument("--min-timeout", type=float, default=30.0)
    parser.add_argument("--report", default="docs/mutation.md")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--results", default="docs/mutation-results.json",
                        help="where each mutant's outcome is kept (JSON)")
    parser.add_argument("--no-fork", action="store_true",
                        help="start a fresh interpreter per mutant instead of forking from a "
                        "server with numpy, scipy and pytest preloaded")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from --results without running anything")
    parser.add_argument("--resume", action="store_true",
                        help="reuse killed outcomes from --results; rerun only the others "
                        "(valid while the module under test is unchanged)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    modules = args.modules or default_modules()
    plan: list[Mutant] = []
    totals: dict[str, int] = {}
    rng = random.Random(args.seed)
    for module in modules:
        mutants = generate(module)
        totals[module] = len(mutants)
        if args.sample and len(mutants) > args.sample:
            mutants = sorted(rng.sample(mutants, args.sample), key=lambda m: m.line)
        plan.extend(mutants)
    args.sample_text = (
        f"up to {args.sample} mutants per module drawn with `random.Random({args.seed}).sample`"
        if args.sample else "none (every mutant)"
    )
    if args.list:
        for m in plan:
            print(f"{m.module}:{m.line}: [{m.operator}] {m.original.strip()}  ->  "
                  f"{m.mutated.strip()}")
        print(f"{len(plan)} mutants", file=sys.stderr)
        return 0
    if args.report_only:
        kept = json.loads((REPO / args.results).read_text())
        stored = [Outcome(m, str(kept[_key_text(m)]["status"]),
                          float(kept[_key_text(m)]["seconds"]), str(kept[_key_text(m)]["detail"]))
                  for m in plan if _key_text(m) in kept]
        missing = len(plan) - len(stored)
        if missing:
            print(f"{missing} mutants of the plan have no outcome in {args.results}",
                  file=sys.stderr)
        stored.sort(key=lambda o: (o.mutant.module, o.mutant.line, o.mutant.mutated))
        write_report(REPO / args.report, stored, totals, args, 0.0, {})
        return 0
    started = time.monotonic()
    if not args.no_fork:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _FORK["context"] = context
    sandboxes = [_make_sandbox() for _ in range(max(args.jobs, 1))]
    try:
        baselines = {m: baseline(sandboxes[0], m) for m in modules}
        print(f"{len(plan)} mutants; baselines "
              + ", ".join(f"{m} {s:.1f}s" for m, s in baselines.items()), flush=True)
        free = list(sandboxes)
        outcomes: list[Outcome] = []
        previous: dict[str, dict[str, object]] = {}
        results_path = REPO / args.results
        if args.resume and results_path.exists():
            previous = json.loads(results_path.read_text())
        elif results_path.exists():
            results_path.unlink()
        reused = [m for m in plan if previous.get(_key_text(m), {}).get("status")
                  in ("killed", "timeout")]
        for m in reused:
            entry = previous[_key_text(m)]
            outcomes.append(Outcome(m, str(entry["status"]), float(entry["seconds"]),  # type: ignore[arg-type]
                                    str(entry["detail"])))
        if reused:
            print(f"{len(reused)} killed mutants reused from {args.results}", flush=True)
        reused_keys = {_key_text(m) for m in reused}
        plan = [m for m in plan if _key_text(m) not in reused_keys]

        def work(mutant: Mutant) -> Outcome:
            sandbox = free.pop()
            try:
                timeout = max(args.min_timeout, args.timeout_factor * baselines[mutant.module])
                return run_mutant(sandbox, mutant, timeout)
            finally:
                free.append(sandbox)

        def save() -> None:
            merged = dict(previous)
            merged.update({_key_text(o.mutant): {"status": o.status, "seconds": round(o.seconds, 2),
                                                 "detail": o.detail} for o in outcomes})
            results_path.write_text(json.dumps(merged, indent=1, sort_keys=True))

        with ThreadPoolExecutor(max_workers=len(sandboxes)) as pool:
            for index, outcome in enumerate(pool.map(work, plan), start=1):
                outcomes.append(outcome)
                save()  # after every mutant: an interrupted run can be resumed
                m = outcome.mutant
                print(f"[{index}/{len(plan)}] {outcome.status:8s} {outcome.seconds:5.1f}s "
                      f"{m.module}:{m.line} [{m.operator}] {m.mutated.strip()}", flush=True)
        outcomes.sort(key=lambda o: (o.mutant.module, o.mutant.line, o.mutant.mutated))
        write_report(REPO / args.report, outcomes, totals, args,
                     time.monotonic() - started, baselines)
        save()
    finally:
        for sandbox in sandboxes:
            shutil.rmtree(sandbox, ignore_errors=True)
    killed = sum(o.status in ("killed", "timeout") for o in outcomes)
    print(f"{killed} of {len(outcomes)} killed; report in {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
