"""One-shot GPU check: CUDA tests, kernel speed, training throughput and decode speed, in under 8 minutes.

    python bench/gpu.py --out DIR                  # a CUDA machine: DIR/gpu.json and DIR/gpu.md
    python bench/gpu.py --out DIR --dry-run        # the same plumbing on the CPU at toy sizes (alias --cpu)
        [--parts tests,kernels,train,decode,decode_compiled] [--deadline 450] [--budget PART=SECONDS ...]

Parts, in this order, each in a process of its own that is killed past the part's time budget (what it
measured until then is kept; a CUDA error cannot poison the next part):

- ``tests``: ``pytest -m cuda tests/test_cuda.py`` (Triton kernels compiled and run against the references,
  forward and backward; flex_attention and xformers against SDPA; bf16 and fp32; CUDA vs CPU model and
  generation): passed / failed / skipped counts, the failures' names and messages, the skip reasons.
- ``kernels``: bench/kernel_speed.py's rows at BLT-1B shapes (Triton vs the references, ms and peak MB).
- ``train``: training steps of a BLT with BLT-1B widths at reduced depth (``REDUCED``), bf16 autocast over
  float32 weights as Lightning's ``bf16-mixed``, static patches of 4 bytes, one row per attention back-end:
  bytes/s, peak memory and MFU against the GPU's bf16 peak (``blt.training.callbacks.peak_flops``) in both
  conventions (``mfu``: the paper's FLOPs, ``mfu_6n``: the 6N rule; docs/BENCHMARKS.md "MFU conventions").
- ``decode``: greedy decoding bytes/s of the same shapes (entropy patching included) through
  ``BLT.generate`` and through ``IncrementalDecoder.push`` alone (fp32 and bf16 weights), then an attempt to
  capture one decoding step in a CUDA graph, whose outcome (or failure) is a result.
- ``decode_compiled``: compiled decoding (``IncrementalDecoder(compile=True)``: the steps under
  ``torch.compile(mode="reduce-overhead")``, CUDA graphs): compile time, steady bytes/s against eager,
  whether the bytes agree, graph breaks and graphs.

A part whose dependency is not installed is skipped and says which; an exception ends its part as an
error with the traceback's tail, and the next part runs; past the total deadline the remaining parts are
recorded as skipped. Without CUDA (and without --dry-run) nothing runs: a message says so, exit status 0.
Otherwise the exit status is 0 when every part that ran is ok, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("tests", "kernels", "train", "decode", "decode_compiled")
BUDGETS = {"tests": 180.0, "kernels": 70.0, "train": 75.0, "decode": 45.0, "decode_compiled": 75.0}
NEEDS = {  # modules a part cannot run without (torch is needed by all of them)
    "tests": ("pytest",),
    "kernels": ("triton",),
    "train": ("lightning", "yaml"),
    "decode": ("yaml",),
    "decode_compiled": ("yaml", "triton"),
}
DRY_NEEDS = {"kernels": (), "decode_compiled": ("yaml",)}  # on the CPU no part needs Triton
DEADLINE_S = 450.0
MIN_PART_S = 5.0  # no part starts with less time than this before the deadline
NO_CUDA = (
    "bench/gpu.py: no CUDA device here (torch.cuda.is_available() is False), so nothing was measured. "
    "Run it on a CUDA machine, or with --dry-run to try the plumbing on the CPU at toy sizes."
)
# layers of the reduced-depth stacks (BLT-1B: entropy model 14, encoder 1, global 25, decoder 9); the hash
# tables shrink from 500002 rows to 65521 each: a lookup costs no FLOPs whatever the table's size, and the
# 3.1B parameters of the full tables would make a training step mostly an optimizer benchmark
REDUCED = {"entropy": 4, "encoder": 1, "global_transformer": 6, "decoder": 3, "hash_vocab": 65521}
SIZES = {  # per mode: training batch x length and steps; decoding prompt, new bytes, batch prompts
    "cuda": {
        "B": 2,
        "T": 8192,
        "warmup": 2,
        "steps": 5,
        "prompt": 256,
        "new": 128,
        "batch": (64, 128, 192, 256),
        "compiled": 128,
    },
    "cpu": {
        "B": 2,
        "T": 128,
        "warmup": 1,
        "steps": 1,
        "prompt": 32,
        "new": 8,
        "batch": (8, 16),
        "compiled": 2,
    },
}
clock = time.monotonic  # of the deadline; tests replace it


# ----------------------------------------------------------------------------------------------------------
# the orchestrator


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/gpu.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="folder for gpu.json, gpu.md and the parts' logs (created)")
    parser.add_argument(
        "--dry-run", "--cpu", action="store_true", help="the plumbing on the CPU at toy sizes"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="total seconds for all parts")
    parser.add_argument(
        "--budget", action="append", default=[], metavar="PART=SECONDS", help="one part's time budget"
    )
    parser.add_argument(
        "--pretend-missing",
        action="append",
        default=[],
        metavar="MODULE",
        help="treat MODULE as not installed (to test the skip reporting)",
    )
    # the orchestrator starts itself with these to run one part
    parser.add_argument("--worker", choices=PARTS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and not args.out:
        parser.error("--out DIR is required")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    budgets = dict(BUDGETS)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if name not in PARTS or value <= 0:
            parser.error(
                f"--budget {item!r}: expected PART=SECONDS with PART in {', '.join(PARTS)}, SECONDS > 0"
            )
        budgets[name] = value
    args.budgets = budgets
    if args.deadline < 0:
        parser.error(f"--deadline must be >= 0, got {args.deadline}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args)
    out = Path(args.out).resolve()  # the parts run from the repository root
    out.mkdir(parents=True, exist_ok=True)
    start = clock()
    report = {
        "schema": 1,
        "script": "bench/gpu.py",
        "command": " ".join(["python", "bench/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "dry-run" if args.dry_run else "cuda",
        "started": now(),
        "deadline_s": args.deadline,
        "status": "complete",
        "packages": packages(),
    }
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        report.update(
            status="no-cuda", message=NO_CUDA, ok=False, device={"name": None, "torch": torch.__version__}
        )
        report["parts"] = {name: skipped(args.budgets[name], "no CUDA device") for name in PARTS}
        write_report(out, report)
        return 0
    report["device"] = device_info(args.dry_run)
    report["parts"] = parts = {}
    for name in PARTS:
        parts[name] = plan_and_run(name, args, out, start)
        print(f"bench/gpu.py: {name}: {summary_line(name, parts[name])}", flush=True)
    report["finished"] = now()
    report["elapsed_s"] = round(clock() - start, 1)
    report["ok"] = all(p["status"] in ("ok", "skipped") for p in parts.values())
    write_report(out, report)
    print(f"bench/gpu.py: wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    return 0 if report["ok"] else 1


def plan_and_run(name: str, args, out: Path, start: float) -> dict:
    """A part's record: skipped (not selected, a missing dependency, the deadline) or the outcome of its run."""
    budget = args.budgets[name]
    if name not in args.parts:
        return skipped(budget, "not selected (--parts)")
    needs = DRY_NEEDS.get(name, NEEDS[name]) if args.dry_run else NEEDS[name]
    missing = [m for m in needs if m in args.pretend_missing or importlib.util.find_spec(m) is None]
    if missing:
        return skipped(budget, f"missing dependency: {', '.join(missing)} (not installed)")
    left = args.deadline - (clock() - start)
    if left < MIN_PART_S:
        return skipped(budget, f"total deadline of {args.deadline:.0f} s reached ({max(left, 0):.0f} s left)")
    limit = min(budget, left)
    record = {"budget_s": budget, "limit_s": round(limit, 1)}
    try:
        record.update(run_part(name, limit, out, args))
    except Exception as e:  # the orchestrator's own failure for this part (e.g. a log it cannot write)
        record.update(status="error", error=f"{type(e).__name__}: {e}")
    return record


def skipped(budget: float, reason: str) -> dict:
    return {"status": "skipped", "reason": reason, "budget_s": budget}


def run_part(name: str, limit: float, out: Path, args) -> dict:
    """Run one part in a child process within ``limit`` seconds: status, seconds, log, result."""
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("BLT_KERNELS", "TRITON_INTERPRET")}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run stays on the CPU even on a GPU machine
        env["OMP_NUM_THREADS"] = "1"
    if name == "tests":
        xml = logs / "tests.xml"
        xml.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider"]
        cmd += [f"--junitxml={xml}", "tests/test_cuda.py"]
        rc, seconds, timed_out = run_command(cmd, limit, log, env)
        try:
            result = junit_summary(xml)
        except (OSError, ET.ParseError):  # killed before (or while) pytest wrote it
            result = verbose_summary(log.read_text(errors="replace"))
        result["returncode"] = rc
        record = {"seconds": seconds, "log": f"logs/{log.name}", "result": result}
        if timed_out:
            return record | {"status": "timeout", "error": f"killed after {limit:g} s (its time limit)"}
        if rc == 0:
            return record | {"status": "ok"}
        if rc == 1:
            return record | {"status": "failed"}
        return record | {"status": "error", "error": tail(log)}
    rows = logs / f"{name}.jsonl"
    rows.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--rows", str(rows)]
    cmd += ["--limit", f"{limit:.1f}", *(["--dry-run"] if args.dry_run else [])]
    for module in args.pretend_missing:
        cmd += ["--pretend-missing", module]
    rc, seconds, timed_out = run_command(cmd, limit, log, env)
    records = read_records(rows)
    info: dict = {}
    for r in records:
        info.update(r.get("info", {}))
    result = {"rows": [r["row"] for r in records if "row" in r], "info": info}
    record = {"seconds": seconds, "log": f"logs/{log.name}", "result": result}
    missing = next((r["missing"] for r in records if "missing" in r), None)
    if missing is not None:
        return record | {"status": "skipped", "reason": f"missing dependency: {missing} (failed to import)"}
    if timed_out:
        return record | {"status": "timeout", "error": f"killed after {limit:g} s (its time limit)"}
    if rc != 0 or not any(r.get("done") for r in records):
        return record | {"status": "error", "error": tail(log)}
    return record | {"status": "ok"}


def read_records(path: Path) -> list[dict]:
    """The JSON lines a part wrote; a line cut short by a kill is left out."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def run_command(cmd: list[str], limit: float, log: Path, env: dict) -> tuple[int | None, float, bool]:
    """(return code or None, seconds, timed out): ``cmd`` in its own session, output into ``log``; past
    ``limit`` seconds its whole process group is killed (compile workers included)."""
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc, timed_out = proc.wait(timeout=max(limit, 0.01)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the child started above
            proc.wait()
            rc, timed_out = None, True
    return rc, round(time.monotonic() - start, 1), timed_out


def tail(log: Path, lines: int = 25) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return "\n".join(text[-lines:]) or "(no output)"


def junit_summary(path: Path) -> dict:
    """Counts, failures (name, message) and skip reasons of a pytest --junitxml report."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, reasons = [], {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "?")
        outcome = next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        message = (case.find(outcome).get("message") or "").strip()
        if outcome == "skipped":
            counts["skipped"] += 1
            reason = re.sub(r"^Skipped: ", "", message)
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            counts["failed" if outcome == "failure" else "errors"] += 1
            failures.append({"name": name, "message": message.splitlines()[0][:300] if message else ""})
    return {**counts, "total": sum(counts.values()), "failures": failures, "skip_reasons": reasons}


def verbose_summary(text: str) -> dict:
    """The same counts from ``pytest -v`` lines, for a run killed before it wrote its report."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    keys = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped"}
    failures = []
    for name, outcome in re.findall(r"^\S+::(\S+) (PASSED|FAILED|ERROR|SKIPPED)\b", text, re.MULTILINE):
        counts[keys[outcome]] += 1
        if outcome in ("FAILED", "ERROR"):
            failures.append({"name": name, "message": ""})
    return {
        **counts,
        "total": sum(counts.values()),
        "failures": failures,
        "skip_reasons": {},
        "partial": True,
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def packages() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "torch",
        "triton",
        "xformers",
        "lightning",
        "transformers",
        "pytest",
        "safetensors",
        "pyyaml",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def device_info(dry_run: bool) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    if dry_run or not torch.cuda.is_available():
        return info | {"name": "cpu (dry run)"}
    p = torch.cuda.get_device_properties(0)
    return info | {
        "name": p.name,
        "capability": f"{p.major}.{p.minor}",
        "memory_gb": round(p.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
    }


# ----------------------------------------------------------------------------------------------------------
# the parts (each runs in a child process: ``--worker PART``)


@dataclasses.dataclass
class Context:
    """What a part is given: the mode, its time limit, and where its rows go (one JSON line each, flushed,
    so a part killed at its limit keeps what it measured)."""

    dry_run: bool
    limit: float
    emit: Callable[..., None]
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def device(self):
        import torch

        return torch.device("cpu" if self.dry_run else "cuda")

    @property
    def sizes(self) -> dict:
        return SIZES["cpu" if self.dry_run else "cuda"]

    def left(self) -> float:
        return self.limit - (time.monotonic() - self.started)

    def row(self, **row) -> None:
        self.emit(row=row)

    def info(self, **info) -> None:
        self.emit(info=info)


class _Missing:
    """An import finder that makes modules look uninstalled (--pretend-missing)."""

    def __init__(self, names: list[str]):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (--pretend-missing)", name=name)
        return None


def run_worker(args) -> int:
    with open(args.rows, "a") as rows:

        def emit(**record) -> None:
            rows.write(json.dumps(record, default=str) + "\n")
            rows.flush()

        if args.pretend_missing:
            sys.meta_path.insert(0, _Missing(args.pretend_missing))
        ctx = Context(args.dry_run, args.limit, emit)
        try:
            if args.dry_run:
                import torch

                torch.set_num_threads(1)  # toy sizes: more threads only fight over a shared CPU
            WORKERS[args.worker](ctx)
        except ModuleNotFoundError as e:
            traceback.print_exc()
            emit(missing=e.name or str(e))
            return 0
        emit(done=True)
    return 0


def load_bench(name: str):
    """bench/<name>.py as a module (registered first: its dataclasses look their module up)."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:400] if lines else ''}"


def kernels_part(ctx: Context) -> None:
    """bench/kernel_speed.py's rows: at BLT-1B shapes on CUDA, its CPU shapes at one short length in a dry run."""
    bench = load_bench("kernel_speed")
    device = ctx.device.type
    shape = bench.SHAPES[device]
    lengths = [128] if ctx.dry_run else bench.DEFAULT_LENGTHS["cuda"]
    ctx.info(shape={k: str(v) for k, v in shape.items()}, k_rep=bench.K_REP, lengths=lengths, reps=3)
    if device == "cpu":
        bench.prepare_memory_accounting()
    for row in bench.measure_rows(device, lengths, 1 if ctx.dry_run else 3, max(lengths)):
        ctx.row(**row)


def model_config(dry_run: bool):
    """configs/blt-1b.yaml's BLT (its entropy model bundled) at the depths of ``REDUCED``; toy widths and
    one layer per stack in a dry run. Read without the command-line parser, which a bare GPU machine may
    lack."""
    import yaml

    from blt import config as cfg

    data = yaml.safe_load((ROOT / "configs" / "blt-1b.yaml").read_text())
    blt, toy = data["blt"], {}
    if dry_run:
        toy = {"dim": 64, "n_heads": 4, "ffn_dim": 128, "window": 32, "max_seq_len": 1024}

    def section(cls, values: dict, layers: int, **extra):
        return cls(**{**values, "n_layers": 1 if dry_run else layers, **toy, **extra})

    encoder = section(
        cfg.LocalEncoderConfig,
        blt["encoder"],
        REDUCED["encoder"],
        hash_vocab=257 if dry_run else REDUCED["hash_vocab"],
    )
    glob = {"dim": 128, "ffn_dim": 256, "window": None} if dry_run else {}
    return cfg.BLTConfig(
        vocab_size=blt["vocab_size"],
        cross_attn_k=blt["cross_attn_k"],
        encoder=encoder,
        global_transformer=section(
            cfg.TransformerConfig, blt["global_transformer"], REDUCED["global_transformer"], **glob
        ),
        decoder=section(cfg.LocalDecoderConfig, blt["decoder"], REDUCED["decoder"]),
        patching=cfg.PatchingConfig(**blt["patching"]),
        entropy_model=section(cfg.EntropyModelConfig, data["entropy"], REDUCED["entropy"]),
    )


def shape_info(config) -> dict:
    parts = {"encoder": config.encoder, "global": config.global_transformer, "decoder": config.decoder}
    if config.entropy_model is not None:
        parts["entropy"] = config.entropy_model
    out = {name: f"{c.n_layers} x {c.dim}" for name, c in parts.items()}
    return out | {"hash_tables": f"{len(config.encoder.hash_ngram_sizes)} x {config.encoder.hash_vocab}"}


def train_part(ctx: Context) -> None:
    """Training steps per attention back-end; MFU against the bf16 peak (the fp32 one in a dry run)."""
    import torch

    from blt.eval.flops import blt_flops_per_byte
    from blt.patcher import patch_lengths
    from blt.training.callbacks import known_peak, measured_peak, peak_flops

    throughput = load_bench("train_throughput")
    device, sizes = ctx.device, ctx.sizes
    config = dataclasses.replace(model_config(ctx.dry_run), entropy_model=None)  # static patches
    static = dataclasses.replace(config.patching, scheme="static", patch_size=4)
    B, T = sizes["B"], sizes["T"]
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(4, 260, (B, T + 1), generator=g)
        lengths = patch_lengths(ids[:, :-1], static)
        batches.append(tuple(x.to(device) for x in (ids[:, :-1], ids[:, 1:], lengths)))
    mean_patch = B * T / int((batches[0][2] > 0).sum())
    flops = blt_flops_per_byte(config, mean_patch, T).training_flops_per_byte
    if ctx.dry_run:
        precision, peak, source = (
            "32-true",
            measured_peak("cpu", torch.float32, size=256, trials=2),
            "measured",
        )
    else:
        precision, peak = "bf16-mixed", peak_flops(device, "bf16-mixed")
        known = known_peak(torch.cuda.get_device_name(device), torch.bfloat16)
        source = "data sheet" if known is not None else "measured (bf16 matmul)"
    autocast = precision == "bf16-mixed"
    ctx.info(
        shapes=shape_info(config), batch=B, seq_len=T, mean_patch=mean_patch, precision=precision,
        peak_flops=peak, peak_source=source, training_flops_per_byte=flops,
    )  # fmt: skip

    def loss_fn(model, batch):
        ids, targets, lengths = batch
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(ids, patch_lengths=lengths).logits
        return throughput.lm_loss(logits, targets)

    for backend in ("sdpa",) if ctx.dry_run else ("sdpa", "flex", "xformers"):
        if backend == "xformers" and importlib.util.find_spec("xformers") is None:
            ctx.row(backend=backend, skipped="xformers is not installed")
            continue
        if ctx.left() < 15:
            ctx.row(backend=backend, skipped=f"the part's time limit is near ({ctx.left():.0f} s left)")
            continue
        try:
            ctx.row(**train_row(ctx, config, backend, batches, loss_fn, flops, mean_patch, peak, throughput))
        except Exception as e:  # one back-end failing (out of memory, no kernel) leaves the others measured
            ctx.row(backend=backend, error=error_text(e))
        if device.type == "cuda":
            torch.cuda.empty_cache()


def train_row(ctx, config, backend, batches, loss_fn, flops, mean_patch, peak, throughput) -> dict:
    import torch

    from blt.eval.flops import blt_params, blt_six_n_flops_per_byte
    from blt.model import BLT

    device, sizes = ctx.device, ctx.sizes
    torch.manual_seed(0)
    with device:  # initialised where it runs: a CPU init of BLT-1B widths takes seconds
        model = BLT(config, backend).train()  # float32 weights, as Lightning's bf16-mixed keeps them
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    bytes_per_step = float(batches[0][1].numel())  # random ids 4..259: every target is a byte
    job = throughput.Job(f"blt {backend}", model, loss_fn, batches, bytes_per_step, flops, mean_patch)
    throughput.time_steps(job, opt, sizes["warmup"])  # allocations, optimizer state, kernel selection
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    job.seconds_per_step = throughput.time_steps(job, opt, sizes["steps"])
    six_n = blt_six_n_flops_per_byte(config, *blt_params(model), mean_patch, sizes["T"])
    row = {
        "backend": backend,
        "params": throughput.n_params(model),
        "bytes_per_step": bytes_per_step,
        "seconds_per_step": job.seconds_per_step,
        "bytes_per_second": job.bytes_per_second,
        "training_flops_per_byte": flops,
        "mfu": job.mfu(peak),
        "six_n_flops_per_byte": six_n,
        "mfu_6n": six_n * job.bytes_per_second / peak,
    }
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def decode_model(ctx: Context):
    """A random BLT of ``model_config`` with its entropy threshold where about one byte in 4.5 starts a
    patch (the paper's mean patch), in eval mode on the part's device."""
    import torch

    from blt.model import BLT
    from blt.tokenizer import encode

    torch.manual_seed(0)
    with ctx.device:
        model = BLT(model_config(ctx.dry_run)).eval()
    ids = torch.tensor([encode(prompt_text(512))], device=ctx.device)
    entropies = model.patcher.entropies(ids).float().flatten()
    model.config.patching.threshold = float(entropies.quantile(1 - 1 / 4.5))
    return model


def prompt_text(n: int) -> bytes:
    text = load_bench("generate").FALLBACK_TEXT.encode()
    return (text * (n // len(text) + 1))[:n]


def prompt_ids(ctx: Context, n: int):
    import torch

    from blt.tokenizer import encode

    return torch.tensor(encode(prompt_text(n - 1)), device=ctx.device)  # BOS + n - 1 bytes


def greedy_steps(model, prompt, n: int, compile=False) -> tuple[list[int], float]:
    """Greedy bytes of ``n`` IncrementalDecoder.push steps after ``prompt`` (one row) and their seconds
    (prefill excluded); ``compile``: IncrementalDecoder's (compiled steps)."""
    import torch

    from blt.generate import IncrementalDecoder

    with torch.inference_mode():
        state = IncrementalDecoder(model, [prompt], max_new=n, compile=compile)
        tokens = state.logits.argmax(-1)
        out = []
        sync(prompt.device)
        start = time.perf_counter()
        for _ in range(n):
            out.append(tokens)
            state.push(tokens)
            tokens = state.logits.argmax(-1)
        sync(prompt.device)
        seconds = time.perf_counter() - start
    return torch.cat(out).tolist(), seconds


def decode_part(ctx: Context) -> None:
    """Greedy decoding bytes/s through BLT.generate and the bare step, then a CUDA-graph capture attempt."""
    import torch

    sizes = ctx.sizes
    model = decode_model(ctx)
    ctx.info(shapes=shape_info(model.config), threshold=model.config.patching.threshold)
    prompt, new = prompt_ids(ctx, sizes["prompt"]), sizes["new"]
    model.generate(prompt, 4, temperature=0.0)  # warm-up: kernels, allocator
    for batch in (1, len(sizes["batch"])):
        prompts = [prompt] if batch == 1 else [prompt_ids(ctx, n) for n in sizes["batch"]]
        sync(ctx.device)
        start = time.perf_counter()
        outputs = model.generate(prompts, new, temperature=0.0)
        sync(ctx.device)
        seconds = time.perf_counter() - start
        generated = sum(len(o) for o in outputs)
        ctx.row(
            row=f"BLT.generate, batch {batch}", dtype="float32", batch=batch, new_bytes=generated,
            seconds=seconds, bytes_per_second=generated / seconds, note="prefill included",
        )  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        if ctx.left() < 10:
            ctx.row(row=f"step {dtype}", skipped=f"the part's time limit is near ({ctx.left():.0f} s left)")
            continue
        try:
            # the same weights and patching threshold, cast (buffers too: the rotary frequencies)
            m = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
            greedy_steps(m, prompt, 4)  # warm-up
            out, seconds = greedy_steps(m, prompt, new)
            ctx.row(
                row="IncrementalDecoder.push", dtype=str(dtype).removeprefix("torch."), batch=1, new_bytes=new,
                seconds=seconds, bytes_per_second=new / seconds, note="prefill excluded",
            )  # fmt: skip
        except Exception as e:
            ctx.row(row="IncrementalDecoder.push", dtype=str(dtype), error=error_text(e))
    ctx.row(row="CUDA graph of one step", **graph_capture(ctx, model, prompt, new))


def graph_capture(ctx: Context, model, prompt, n: int) -> dict:
    """Capture one IncrementalDecoder.push in a CUDA graph: the error if it cannot be captured, else the
    replay speed (a replay repeats the captured step; the Python-side cache state does not advance)."""
    import torch

    from blt.generate import IncrementalDecoder

    if ctx.device.type != "cuda":
        return {"captured": None, "note": "no CUDA graphs on the CPU (dry run)"}
    with torch.inference_mode():
        state = IncrementalDecoder(model, [prompt])
        tokens = state.logits.argmax(-1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capturing stream, as CUDA graphs need
            for _ in range(3):
                state.push(tokens)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                state.push(tokens)
        except Exception as e:
            return {
                "captured": False,
                "error": error_text(e),
                "note": "the step reads patch boundaries on the host (.tolist()), which stream capture forbids",
            }
        graph.replay()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            graph.replay()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {
        "captured": True,
        "bytes_per_second": n / seconds,
        "note": "replays of one fixed step: timing only",
    }


def decode_compiled_part(ctx: Context) -> None:
    """Compiled decoding (IncrementalDecoder(compile=True): its steps under torch.compile with
    blt.generate.compile_options, on CUDA mode="reduce-overhead") against eager; a dry run compiles with
    the eager backend (dynamo's tracing without Inductor's code generation)."""
    from torch._dynamo.utils import counters

    from blt.generate import compile_options

    model, new = decode_model(ctx), ctx.sizes["new"]
    prompt = prompt_ids(ctx, ctx.sizes["prompt"])
    greedy_steps(model, prompt, 4)
    eager, eager_s = greedy_steps(model, prompt, new)
    ctx.row(row="eager", new_bytes=new, seconds=eager_s, bytes_per_second=new / eager_s)
    options = {"backend": "eager"} if ctx.dry_run else compile_options(ctx.device)
    ctx.info(compile=options)
    start = time.perf_counter()
    greedy_steps(model, prompt, 4, options)  # compiles; later decoders of these shapes reuse the code
    ctx.row(row="compile + 4 steps", seconds=time.perf_counter() - start)
    n = ctx.sizes["compiled"]
    compiled, compiled_s = greedy_steps(model, prompt, n, options)
    breaks = dict(sorted(counters["graph_break"].items(), key=lambda kv: -kv[1])[:5])
    ctx.row(
        row="compiled", new_bytes=n, seconds=compiled_s, bytes_per_second=n / compiled_s,
        speedup=eager_s / new / (compiled_s / n), same_bytes=compiled == eager[:n], graph_breaks=sum(counters["graph_break"].values()),
        top_graph_breaks={" ".join(k.split())[:200]: v for k, v in breaks.items()}, stats=dict(counters["stats"]),
    )  # fmt: skip


WORKERS = {
    "kernels": kernels_part,
    "train": train_part,
    "decode": decode_part,
    "decode_compiled": decode_compiled_part,
}


# ----------------------------------------------------------------------------------------------------------
# the report


def write_report(out: Path, report: dict) -> None:
    (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu.md").write_text(markdown(report))


def summary_line(name: str, part: dict) -> str:
    status = part["status"]
    if status == "skipped":
        return f"skipped: {part['reason']}"
    result = part.get("result", {})
    if name == "tests" and "passed" in result:
        counts = ", ".join(f"{result[k]} {k}" for k in ("passed", "failed", "errors", "skipped"))
        return f"{status} ({counts}) in {part.get('seconds', 0):.0f} s"
    note = f", {len(result.get('rows', []))} rows" if "rows" in result else ""
    return f"{status}{note} in {part.get('seconds', 0):.0f} s"


def fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    """Markdown rows of ``rows``: columns are (key, header, format); a row with an error or a skip says so."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [fmt(r.get(k), spec) for k, _, spec in columns]
        extra = r.get("error") or r.get("skipped")
        if extra:
            cells[-1] = ("error: " if r.get("error") else "skipped: ") + str(extra).replace("|", "/")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


SECTIONS = {
    "tests": "CUDA tests (pytest -m cuda tests/test_cuda.py)",
    "kernels": "Kernels at BLT-1B shapes (bench/kernel_speed.py, Triton vs references)",
    "train": "Training throughput (BLT-1B widths, reduced depth, bf16)",
    "decode": "Decode",
    "decode_compiled": "Compiled decoding (IncrementalDecoder(compile=True))",
}


def markdown(report: dict) -> str:
    device = report.get("device", {})
    lines = [
        "# GPU check (bench/gpu.py)",
        "",
        f"`{report['command']}`, {report['started']}, mode {report['mode']}, device {device.get('name')}"
        + (f" (compute {device['capability']}, {device['memory_gb']} GB)" if "capability" in device else ""),
        "",
        "Packages: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in report["packages"].items()),
        "",
    ]
    if report["status"] == "no-cuda":
        lines += [f"**{report['message']}**", ""]
    lines += ["## Summary", "", "| part | status | seconds | budget s | note |", "|---|---|---|---|---|"]
    for name, part in report["parts"].items():
        note = part.get("reason") or (part.get("error", "").splitlines() or [""])[-1]
        if not note and name == "tests" and "passed" in part.get("result", {}):
            note = summary_line(name, part)
        cells = [
            name,
            part["status"],
            fmt(part.get("seconds")),
            fmt(part["budget_s"], ".0f"),
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, part in report["parts"].items():
        lines += ["", f"## {SECTIONS[name]}", ""]
        if part["status"] == "skipped":
            lines.append(f"Skipped: {part['reason']}.")
            continue
        if part.get("error"):
            lines += [f"Status {part['status']}:", "", "```", part["error"], "```", ""]
        lines += RENDER[name](part.get("result", {}))
    return "\n".join(lines) + "\n"


def render_tests(result: dict) -> list[str]:
    if "passed" not in result:
        return []
    counts = ", ".join(f"{result[k]} {k}" for k in ("passed", "failed", "errors", "skipped"))
    lines = [
        f"{counts} (of {result['total']})"
        + (" (partial: the run was killed)" if result.get("partial") else "")
    ]
    if result["failures"]:
        lines += ["", "Failures:", ""] + [f"- `{f['name']}`: {f['message']}" for f in result["failures"]]
    if result["skip_reasons"]:
        lines += ["", "Skip reasons:", ""] + [f"- {n} x {r}" for r, n in result["skip_reasons"].items()]
    return lines


def render_info(info: dict) -> list[str]:
    return ([", ".join(f"{k} {v}" for k, v in info.items()), ""]) if info else []


def render_kernels(result: dict) -> list[str]:
    columns = [
        ("operation", "operation", ""), ("T", "T", ""), ("ours_ms", "ours ms", ".2f"),
        ("baseline_ms", "baseline ms", ".2f"), ("speedup", "baseline / ours", ".1f"),
        ("ours_peak_mb", "ours peak MB", ".0f"), ("baseline_peak_mb", "baseline peak MB", ".0f"),
    ]  # fmt: skip
    return render_info(result.get("info", {})) + table(result.get("rows", []), columns)


def render_train(result: dict) -> list[str]:
    columns = [
        ("backend", "attention", ""), ("params", "params", ",d"), ("bytes_per_step", "bytes/step", ".0f"),
        ("seconds_per_step", "s/step", ".3f"), ("bytes_per_second", "bytes/s", ",.0f"),
        ("training_flops_per_byte", "train FLOPs/byte", ".3g"), ("mfu", "MFU", ".1%"),
        ("mfu_6n", "MFU (6N)", ".1%"), ("peak_memory_gb", "peak GB", ".1f"),
    ]  # fmt: skip
    return render_info(result.get("info", {})) + table(result.get("rows", []), columns)


def render_decode(result: dict) -> list[str]:
    columns = [
        ("row", "what", ""), ("dtype", "dtype", ""), ("batch", "batch", ""), ("new_bytes", "new bytes", ""),
        ("seconds", "seconds", ".3f"), ("bytes_per_second", "bytes/s", ",.0f"), ("note", "note", ""),
    ]  # fmt: skip
    rows = result.get("rows", [])
    lines = render_info(result.get("info", {})) + table([r for r in rows if "captured" not in r], columns)
    for r in rows:
        if "captured" in r:
            what = {True: "captured", False: "not captured", None: "not tried"}[r["captured"]]
            lines += [
                "",
                f"CUDA graph of one decoding step: {what}. {r.get('error', '')} {r.get('note', '')}".strip(),
            ]
            if r.get("bytes_per_second"):
                lines[-1] += f" Replay: {r['bytes_per_second']:,.0f} bytes/s."
    return lines


def render_decode_compiled(result: dict) -> list[str]:
    columns = [
        ("row", "what", ""), ("new_bytes", "new bytes", ""), ("seconds", "seconds", ".3f"),
        ("bytes_per_second", "bytes/s", ",.0f"), ("speedup", "speed-up per byte", ".2f"),
        ("same_bytes", "same bytes", ""), ("graph_breaks", "graph breaks", ""),
    ]  # fmt: skip
    rows = result.get("rows", [])
    lines = render_info(result.get("info", {})) + table(rows, columns)
    for r in rows:
        for reason, n in (r.get("top_graph_breaks") or {}).items():
            lines.append(f"- graph break x{n}: {reason}")
    return lines


RENDER = {
    "tests": render_tests,
    "kernels": render_kernels,
    "train": render_train,
    "decode": render_decode,
    "decode_compiled": render_decode_compiled,
}


if __name__ == "__main__":
    sys.exit(main())
