"""``pdscaler replay``: a run on a small trace, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pdscaler.cli.replay import main


def _trace(path: Path, rate_per_s: float = 12.5, seconds: float = 300.0) -> Path:
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.exponential(1 / rate_per_s, int(rate_per_s * seconds)))
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t in times:
        minute, second = divmod(float(t), 60.0)
        rows.append(f"2023-11-16 18:{int(minute):02d}:{second:010.7f},6144,512")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_replay_command_writes_json_and_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path / "t.csv")
    code = main(["--trace", str(trace), "--profile", "paper", "--policy", "static",
                 "--prefill", "4", "--decode", "4", "--ttft-s", "2", "--tpot-ms", "20",
                 "--output", str(tmp_path / "r.json")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["policy"] == "static" and summary["requests"] > 3000
    # 4P4D of 8-GPU instances over the trace's span: 64 GPUs throughout.
    assert summary["mean_gpus"] == pytest.approx(64.0)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["summary"]["gpu_hours"] == pytest.approx(summary["gpu_hours"])


def test_replay_command_names_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    assert main(["--trace", str(tmp_path / "missing.csv"), "--profile", "paper",
                 "--ttft-s", "2", "--tpot-ms", "20"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    trace = _trace(tmp_path / "t.csv", seconds=30.0)
    assert main(["--trace", str(trace), "--profile", "paper", "--config", "nope",
                 "--ttft-s", "2", "--tpot-ms", "20"]) == 2
    assert "--config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--trace", str(trace), "--profile", "paper", "--ttft-s", "-1", "--tpot-ms", "20"])
