"""bench/gpu.py on the CPU: its dry run's report, skipped parts, the deadline, and the no-CUDA message."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.py"


def load_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # registered first: its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu = load_gpu()


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BLT_KERNELS", "TRITON_INTERPRET")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # no CUDA, whatever the machine has
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def read(out: Path) -> tuple[dict, str]:
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of every part, shared by the tests that read its report."""
    out = tmp_path_factory.mktemp("gpu-dry")
    result = run_script("--out", str(out), "--dry-run")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return read(out)


def test_dry_run_report_has_every_part(dry_run):
    report, _ = dry_run
    assert report["schema"] == 1 and report["mode"] == "dry-run" and report["status"] == "complete"
    assert report["ok"] is True and report["elapsed_s"] < report["deadline_s"]
    assert {"started", "finished", "command", "device", "packages"} <= report.keys()
    assert report["packages"]["torch"]
    parts = report["parts"]
    assert list(parts) == list(gpu.PARTS)
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part)
        assert part["seconds"] > 0 and part["limit_s"] <= part["budget_s"]
        assert part["log"] == f"logs/{name}.log"


def test_dry_run_results(dry_run):
    report, _ = dry_run
    parts = report["parts"]
    tests = parts["tests"]["result"]  # no CUDA here: every CUDA test is collected and skipped
    assert tests["total"] == tests["skipped"] >= 30 and tests["passed"] == tests["failed"] == 0
    assert tests["failures"] == [] and list(tests["skip_reasons"]) == [
        "needs CUDA (torch.cuda.is_available() is False)"
    ]
    kernel_rows = parts["kernels"]["result"]["rows"]
    assert [r["operation"] for r in kernel_rows][:2] == ["hash_embedding", "patch_pool mean"]
    assert all(r["ours_ms"] > 0 and r["baseline_ms"] > 0 for r in kernel_rows)
    (train,) = parts["train"]["result"]["rows"]
    assert train["backend"] == "sdpa" and train["bytes_per_second"] > 0
    assert 0 < train["mfu"] < 1 and train["mfu_6n"] > 0 and train["params"] > 0
    info = parts["train"]["result"]["info"]
    assert info["precision"] == "32-true" and info["peak_flops"] > 0 and 3.5 < info["mean_patch"] <= 4
    decode = parts["decode"]["result"]["rows"]
    assert [r["row"] for r in decode][:2] == ["BLT.generate, batch 1", "BLT.generate, batch 2"]
    assert all(r["bytes_per_second"] > 0 for r in decode if "bytes_per_second" in r)
    assert decode[-1]["captured"] is None  # no CUDA graphs on the CPU
    compiled = {r["row"]: r for r in parts["decode_compiled"]["result"]["rows"]}
    assert compiled["compiled"]["same_bytes"] is True and compiled["compiled"]["graph_breaks"] >= 0


def test_dry_run_markdown(dry_run):
    report, md = dry_run
    assert md.startswith("# GPU check (bench/gpu.py)\n")
    for title in ["Summary", *gpu.SECTIONS.values()]:
        assert f"\n## {title}\n" in md
    assert "| tests | ok |" in md and "| operation | T | ours ms |" in md
    assert "| attention | params |" in md and "| sdpa |" in md
    assert "CUDA graph of one decoding step: not tried." in md


def test_missing_dependency_skips_its_part(tmp_path):
    assert (
        gpu.main(["--out", str(tmp_path), "--dry-run", "--parts", "tests", "--pretend-missing", "pytest"])
        == 0
    )
    report, md = read(tmp_path)
    assert report["parts"]["tests"] == {
        "status": "skipped",
        "reason": "missing dependency: pytest (not installed)",
        "budget_s": gpu.BUDGETS["tests"],
    }
    assert report["parts"]["kernels"]["reason"] == "not selected (--parts)"
    assert "Skipped: missing dependency: pytest (not installed)." in md


def test_a_part_failing_to_import_is_skipped_and_named(tmp_path):
    # a module no part declares fails inside the part's process (torch: the first one it imports)
    result = run_script(
        "--out", str(tmp_path), "--dry-run", "--parts", "kernels", "--pretend-missing", "torch"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    part = read(tmp_path)[0]["parts"]["kernels"]
    assert part["status"] == "skipped" and part["reason"] == "missing dependency: torch (failed to import)"
    assert (
        "ModuleNotFoundError: No module named 'torch' (--pretend-missing)"
        in (tmp_path / part["log"]).read_text()
    )


def test_a_part_past_its_budget_is_killed_and_the_rest_run(tmp_path):
    args = ["--out", str(tmp_path), "--dry-run", "--parts", "train,tests", "--budget", "train=0.5"]
    args += ["--pretend-missing", "pytest"]
    result = run_script(*args)
    assert result.returncode == 1  # a part timed out
    parts = read(tmp_path)[0]["parts"]
    assert parts["train"]["status"] == "timeout" and parts["train"]["seconds"] < 10
    assert parts["train"]["error"] == "killed after 0.5 s (its time limit)"
    assert parts["tests"]["status"] == "skipped"


def test_deadline_skips_the_remaining_parts(tmp_path, monkeypatch):
    now = [0.0]
    calls = []

    def fake_run_part(name, limit, out, args):
        calls.append((name, limit))
        now[0] += limit  # every part uses all the time it is given
        return {"status": "timeout", "seconds": limit, "error": "killed"}

    monkeypatch.setattr(gpu, "clock", lambda: now[0])
    monkeypatch.setattr(gpu, "run_part", fake_run_part)
    argv = ["--out", str(tmp_path), "--dry-run", "--deadline", "100", "--budget", "tests=60"]
    assert gpu.main(argv + ["--budget", "kernels=60"]) == 1
    assert calls == [("tests", 60.0), ("kernels", 40.0)]
    parts = read(tmp_path)[0]["parts"]
    assert parts["kernels"]["limit_s"] == 40.0
    for name in ("train", "decode", "decode_compiled"):
        assert parts[name]["status"] == "skipped"
        assert parts[name]["reason"] == "total deadline of 100 s reached (0 s left)"


def test_zero_deadline_runs_nothing(tmp_path):
    assert gpu.main(["--out", str(tmp_path), "--dry-run", "--deadline", "0"]) == 0
    report, md = read(tmp_path)
    assert {p["status"] for p in report["parts"].values()} == {"skipped"}
    assert "Skipped: total deadline of 0 s reached (0 s left)." in md


def test_without_cuda_it_says_so_and_exits_cleanly(tmp_path):
    result = run_script("--out", str(tmp_path))
    assert result.returncode == 0
    assert "no CUDA device here" in result.stderr and "--dry-run" in result.stderr
    assert "Traceback" not in result.stderr
    report, md = read(tmp_path)
    assert report["status"] == "no-cuda" and report["ok"] is False
    assert {p["reason"] for p in report["parts"].values()} == {"no CUDA device"}
    assert gpu.NO_CUDA in md


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dry-run"], "--out DIR is required"),
        (["--out", "x", "--parts", "tests,nope"], "unknown part(s) nope"),
        (["--out", "x", "--budget", "train=0"], "expected PART=SECONDS"),
        (["--out", "x", "--deadline", "-1"], "--deadline must be >= 0"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
