"""scripts/device_check.py, the GPU check: its smoke mode on the CPU, and a failing stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).parents[1]


def test_failing_stage_is_recorded_and_the_json_rewritten(tmp_path: Path) -> None:
    device_check = load_script("device_check")
    result: dict = {}
    device_check.stage(result, "fine", tmp_path, lambda: {"value": 1})
    device_check.stage(result, "broken", tmp_path, lambda: 1 / 0)
    written = json.loads((tmp_path / "device_check.json").read_text())
    assert written["fine"] == {"value": 1}
    assert "ZeroDivisionError" in written["broken"]["error"]
    assert "1 / 0" in written["broken"]["traceback"]
    assert written["failed"] == ["broken"]
    assert set(written["stage_seconds"]) == {"fine", "broken"}


def test_smoke_run_trains_evaluates_and_benchmarks(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "scripts/device_check.py", "--smoke", "--out", str(tmp_path)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert "failed" not in result
    assert result["auto_precision"] == "no"  # no GPU here
    for precision in ("bf16", "fp16"):
        run = result[f"train tiny {precision}"]
        assert run["requested_precision"] == precision
        assert run["steps"] > 0 and run["questions_per_second"] > 0
    assert result["evaluation"]["questions"] > 0
    profile = result["profile"]
    assert 0 < profile["data_loading_seconds"] < profile["wall_seconds"]
    assert profile["kernel_seconds"] == 0  # no GPU here
    assert any(row["name"].startswith("aten::") for row in profile["top_host_operators"])
    assert {row["mode"] for row in result["attention"]} == {"soft", "hard", "hybrid"}
    assert [row["batch"] for row in result["throughput"]] == [4, 16]
    assert all(row["questions_per_second"] > 0 for row in result["throughput"])
    assert result["encoder"][0]["name"] == "default 64px"
    assert set(result["stage_seconds"]) >= {
        "data",
        "evaluation",
        "profile",
        "throughput",
        "attention",
        "encoder",
    }
