"""lm-evaluation-harness model ``blt``: local tasks end to end through blt-lm-eval for every checkpoint kind,
per-request values against the package's own scoring and generation, long requests, bad input.

Tasks are YAML files over JSONL files written here; datasets' packaged ``json`` builder reads them offline.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import WORDS
from tiny_blt import tiny_blt

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from blt.baseline import BaselineLM, train_tokenizer  # noqa: E402
from blt.config import BaselineConfig, ConfigError  # noqa: E402
from blt.eval import cli as blt_eval  # noqa: E402
from blt.eval.bpb import score_documents, scorer_for  # noqa: E402
from blt.eval.harness import BLTHarnessLM, main, pick_device  # noqa: E402
from blt.eval.loading import load_model  # noqa: E402
from blt.tokenizer import EOS_ID, decode  # noqa: E402

KINDS = ("blt", "hf-blt", "blt-entropy", "blt-baseline")
CONTEXT = 64  # ids per window: long documents and prompts need several windows or a cut
MAX_GEN = 24
PROMPTS = ["Question: the water is", "def main():\n    ", "Sound of the first day"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny random checkpoint of each kind the package loads."""
    root = tmp_path_factory.mktemp("checkpoints")
    blt = tiny_blt(seed=0)
    out = {
        "blt": blt.save_pretrained(root / "blt"),
        "hf-blt": blt.save_pretrained(root / "hf", format="hf"),
        "blt-entropy": blt.patcher.save_pretrained(root / "entropy"),
    }
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(400)) for _ in range(4)]
    torch.manual_seed(0)
    config = BaselineConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=256, vocab_size=300)
    out["blt-baseline"] = BaselineLM(config, train_tokenizer(texts, vocab_size=300)).save_pretrained(
        root / "bpe"
    )
    assert {load_model(path).kind for path in out.values()} == set(KINDS)
    return out


def write_task(folder: Path, name: str, rows: list[dict], **config) -> Path:
    """A YAML task (JSON is YAML) over a JSONL file; the dataset cache stays in ``folder``."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = {"data_files": {"test": str(data)}, "cache_dir": str(folder / "datasets-cache")}
    task = {"task": name, "dataset_path": "json", "dataset_kwargs": dataset, "test_split": "test", **config}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(task, indent=1))
    return path


MC_ROWS = [
    {
        "question": f"What is {a} plus {b}?",
        "choices": [str(a + b), str(a + b + 10), f"{a}{b}{a}"],
        "label": a % 3,
    }
    for a in range(1, 4)
    for b in range(2)
]
DOCS = [  # some longer than the context, one with multi-byte characters (bytes != characters)
    "The water is cold and the day is long.\n" * 6,
    "caf\u00e9 \u2192 na\u00efve r\u00e9sum\u00e9, \u65e5\u672c\u8a9e",
    "x = 1\n",
    "Some people call the first number one; most call it two. " * 3,
]


def reference_generation(loaded, ids: list[int], max_bytes: int) -> bytes:
    """Greedy continuation of prompt ids by the package itself: BLT.generate, or else the full forward again
    for every new id."""
    if loaded.kind in ("blt", "hf-blt"):
        return decode(loaded.model.generate(torch.tensor(ids), max_new_bytes=max_bytes, temperature=0.0))
    model = loaded.model
    ids = list(ids)
    to_bytes = model.decode if loaded.kind == "blt-baseline" else decode
    out = b""
    with torch.no_grad():
        for _ in range(max_bytes):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            if token == EOS_ID:  # 2 in both vocabularies
                break
            ids.append(token)
            out += to_bytes([token])
            if len(out) >= max_bytes:
                break
    return out[:max_bytes]


def ascii_stop(generated: bytes) -> str:
    """Two printable ASCII bytes from the middle of ``generated``: a stop string that is sure to occur."""
    for i in range(2, len(generated) - 1):
        pair = generated[i : i + 2]
        if all(32 <= b < 127 for b in pair):
            return pair.decode()
    raise AssertionError(f"no ASCII pair in {generated!r}")


def cut(generated: bytes, until: list[str]) -> bytes:
    ends = [i for i in (generated.find(u.encode()) for u in until) if i >= 0]
    return generated[: min(ends)] if ends else generated


def own_loglikelihood(loaded, context: str, continuation: str) -> float:
    """The package's own scoring: bits ``blt-eval bpb`` gives BOS + context + continuation minus those of
    BOS + context (byte models); the baseline's log-probs of the continuation's tokens after the context's."""
    scorer = scorer_for(loaded)
    if loaded.kind != "blt-baseline":
        bits, _, _ = score_documents(scorer, [(context + continuation).encode(), context.encode()])
        return -(bits[0] - bits[1]) * math.log(2)
    ctx, cont = scorer.encode(context.encode()), scorer.encode(continuation.encode())[1:]
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(torch.tensor([ctx + cont]))[0].double(), -1)
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


TASKS = ("tiny_mc", "tiny_rolling", "tiny_gen")


def evaluate(kind: str, model_args: str, tasks: list[Path], folder: Path) -> tuple[dict, dict]:
    """(results, samples per task) of the three tasks. Our own BLT goes through the command line
    (blt-lm-eval's main, in-process, writing files); the other kinds through lm_eval.simple_evaluate with a
    task index of the local tasks only (indexing lm-eval's thousands of tasks costs seconds per run)."""
    if kind == "blt":
        argv = ["--model", "blt", "--model_args", model_args, "--tasks", ",".join(map(str, tasks))]
        assert main([*argv, "--output_path", str(folder / "out"), "--log_samples"]) == 0
        (results,) = (folder / "out").rglob("results_*.json")
        lines = {
            t: next((folder / "out").rglob(f"samples_{t}_*.jsonl")).read_text().splitlines() for t in TASKS
        }
        return json.loads(results.read_text())["results"], {
            t: list(map(json.loads, v)) for t, v in lines.items()
        }
    out = lm_eval.simple_evaluate(
        model="blt",
        model_args=model_args,
        tasks=list(TASKS),
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        log_samples=True,
    )
    return out["results"], out["samples"]


@pytest.fixture(scope="module", params=KINDS)
def run(request, checkpoints, tmp_path_factory):
    """Three local tasks evaluated with --model blt: multiple choice, rolling loglikelihood, generation."""
    kind, checkpoint = request.param, checkpoints[request.param]
    folder = tmp_path_factory.mktemp(f"run-{kind}")
    loaded = load_model(checkpoint)
    references = [
        reference_generation(loaded, scorer_for(loaded).encode(p.encode()), MAX_GEN) for p in PROMPTS
    ]
    until = [ascii_stop(references[0]), "\n\n\n\n"]
    tasks = [
        write_task(
            folder,
            "tiny_mc",
            MC_ROWS,
            output_type="multiple_choice",
            doc_to_text="Question: {{question}}\nAnswer:",
            doc_to_target="label",
            doc_to_choice="choices",
            metric_list=[{"metric": "acc"}],
        ),
        write_task(
            folder,
            "tiny_rolling",
            [{"text": d} for d in DOCS],
            output_type="loglikelihood_rolling",
            doc_to_text="",
            doc_to_target="text",
        ),
        write_task(
            folder,
            "tiny_gen",
            [{"prompt": p, "answer": "x"} for p in PROMPTS],
            output_type="generate_until",
            doc_to_text="prompt",
            doc_to_target="answer",
            generation_kwargs={"until": until, "max_gen_toks": MAX_GEN, "do_sample": False},
            metric_list=[{"metric": "exact_match"}],
        ),
    ]
    model_args = f"pretrained={checkpoint},batch_size=4,device=cpu,context={CONTEXT}"
    results, samples = evaluate(kind, model_args, tasks, folder)
    for rows in samples.values():
        rows.sort(key=lambda s: s["doc_id"])
    return {
        "kind": kind,
        "checkpoint": checkpoint,
        "loaded": loaded,
        "folder": folder,
        "results": results,
        "samples": samples,
        "references": references,
        "until": until,
    }


def test_multiple_choice_accuracy_and_loglikelihoods(run):
    correct = []
    for sample in run["samples"]["tiny_mc"]:
        doc = sample["doc"]
        context = f"Question: {doc['question']}\nAnswer:"
        own = [own_loglikelihood(run["loaded"], context, f" {choice}") for choice in doc["choices"]]
        got = [float(ll) for ll, _ in sample["filtered_resps"]]
        assert got == pytest.approx(own, abs=1e-4)
        correct.append(max(range(len(own)), key=own.__getitem__) == doc["label"])
    accuracy = run["results"]["tiny_mc"]["acc,none"]
    assert accuracy == pytest.approx(sum(correct) / len(correct))


def test_rolling_loglikelihood_equals_blt_eval_bpb(run, capsys):
    corpus = run["folder"] / "tiny_rolling.jsonl"
    argv = ["bpb", "--checkpoint", str(run["checkpoint"]), "--data.source", str(corpus), "--split", "all"]
    assert blt_eval.main([*argv, "--context", str(CONTEXT), "--json"]) == 0
    bpb = json.loads(capsys.readouterr().out)
    assert bpb["n_documents"] == len(DOCS) and bpb["n_bytes"] == sum(len(d.encode()) for d in DOCS)
    rolling = sum(float(s["filtered_resps"][0]) for s in run["samples"]["tiny_rolling"])
    assert rolling == pytest.approx(-bpb["bits"] * math.log(2), rel=1e-5)
    result = run["results"]["tiny_rolling"]
    assert result["bits_per_byte,none"] == pytest.approx(bpb["bits_per_byte"], rel=1e-5)
    assert result["byte_perplexity,none"] == pytest.approx(2 ** bpb["bits_per_byte"], rel=1e-5)


def test_generate_until_equals_the_package_generation(run):
    responses = [s["filtered_resps"][0] for s in run["samples"]["tiny_gen"]]
    expected = [cut(r, run["until"]).decode("utf-8", errors="replace") for r in run["references"]]
    assert responses == expected
    # the first prompt's output holds the stop string by construction: it stopped there
    assert len(cut(run["references"][0], run["until"])) < len(run["references"][0])


# ----------------------------------------------------------------------------------------------------------
# the adapter itself: Python API, sampling, long requests, bad input


def harness_lm(checkpoint, **model_args) -> BLTHarnessLM:
    args = ",".join(f"{k}={v}" for k, v in {"pretrained": checkpoint, "device": "cpu", **model_args}.items())
    return get_model("blt").create_from_arg_string(args, {"batch_size": 1, "device": "cuda:0"})


def requests(kind: str, *args) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_registered_next_to_lm_evals_own_models():
    assert get_model("blt") is BLTHarnessLM
    assert "hf" in lm_eval.api.registry.model_registry  # lm-eval only adds its own to an empty registry


def test_model_args_win_over_the_cli_defaults(checkpoints):
    lm = harness_lm(checkpoints["blt"], batch_size=8)  # the CLI sends batch_size=1, device=cuda:0 as well
    assert lm.batch_size == 8 and lm.device == torch.device("cpu")
    if not torch.cuda.is_available():  # the CLI's default device cuda:0 falls back to the CPU
        assert pick_device("cuda:0") == torch.device("cpu")


def test_sampled_generation_is_seeded_per_request_whatever_the_batch(checkpoints):
    model = load_model(checkpoints["blt"]).model
    kwargs = {"until": ["\n\n\n"], "max_gen_toks": 16, "do_sample": True, "temperature": 0.8, "top_k": 50}
    reqs = requests("generate_until", *[(p, kwargs) for p in PROMPTS])
    batched = harness_lm(checkpoints["blt"], batch_size=3, seed=7).generate_until(reqs)
    one_by_one = harness_lm(checkpoints["blt"], batch_size=1, seed=7).generate_until(reqs)
    expected = [
        cut(model.generate(p, max_new_bytes=16, temperature=0.8, top_k=50, seed=7 + j), kwargs["until"])
        for j, p in enumerate(PROMPTS)
    ]
    assert batched == one_by_one == [e.decode("utf-8", errors="replace") for e in expected]


def test_single_byte_stop_strings_stop_generation(checkpoints):
    model = load_model(checkpoints["blt"]).model
    greedy = model.generate(PROMPTS[1], max_new_bytes=MAX_GEN, temperature=0.0)
    stop = ascii_stop(greedy)[0]
    lm = harness_lm(checkpoints["blt"])
    (out,) = lm.generate_until(
        requests("generate_until", (PROMPTS[1], {"until": [stop], "max_gen_toks": MAX_GEN}))
    )
    assert out == greedy[: greedy.index(stop.encode())].decode("utf-8", errors="replace")
    assert stop not in out


def test_longer_stop_strings_end_generation_once_complete(checkpoints):
    model = load_model(checkpoints["blt"]).model
    greedy = model.generate(PROMPTS[1], max_new_bytes=MAX_GEN, temperature=0.0)
    stop = greedy[8:11].decode("ascii")  # three bytes the greedy continuation holds
    end = greedy.index(stop.encode())
    lm = harness_lm(checkpoints["blt"])
    generated = []
    decode_only = lm.model.generate

    def spy(*args, **kwargs):
        generated.append(decode_only(*args, **kwargs))
        return generated[-1]

    lm.model.generate = spy
    (out,) = lm.generate_until(
        requests("generate_until", (PROMPTS[1], {"until": [stop, "\x00\x00"], "max_gen_toks": MAX_GEN}))
    )
    assert out == greedy[:end].decode("utf-8", errors="replace")
    (ids,) = generated[0]  # decoding stopped right after the stop string, not at max_gen_toks
    assert len(ids) == end + 3 < MAX_GEN


@pytest.mark.parametrize("kind", ["blt", "blt-baseline"])
def test_long_requests_are_cut_from_the_left_and_said_once(kind, checkpoints, caplog):
    loaded = load_model(checkpoints[kind])
    scorer = scorer_for(loaded)
    lm = harness_lm(checkpoints[kind], context=32, batch_size=2)
    long_context = " ".join(["the water is cold and long"] * 12)
    with caplog.at_level(logging.WARNING, logger="blt.eval.harness"):
        got = lm.loglikelihood(
            requests("loglikelihood", (long_context, " today"), (long_context[5:], " now"))
        )
        (generated,) = lm.generate_until(requests("generate_until", (long_context, {"max_gen_toks": 8})))
    assert len([r for r in caplog.records if "cut from the left" in r.getMessage()]) == 1
    prompt = scorer.encode(long_context.encode())[-(32 - 8) :]  # room for the 8 new bytes
    assert generated == reference_generation(loaded, prompt, 8).decode("utf-8", errors="replace")
    for (context, continuation), (logp, _) in zip(
        [(long_context, " today"), (long_context[5:], " now")], got
    ):
        ids = (scorer.encode(context.encode()) + scorer.encode(continuation.encode())[1:])[-32:]
        n = len(scorer.encode(continuation.encode())) - 1
        with torch.no_grad():
            logits, _ = scorer.forward(torch.tensor([ids]))
        own = torch.log_softmax(logits[0].double(), -1)[
            torch.arange(31 - n, 31), torch.tensor(ids[-n:])
        ].sum()
        assert logp == pytest.approx(float(own), abs=1e-4)


def test_loglikelihood_edge_cases(checkpoints):
    lm = harness_lm(checkpoints["blt"], batch_size=2)
    model = load_model(checkpoints["blt"]).model
    empty, whole = lm.loglikelihood(requests("loglikelihood", ("abc", ""), ("", "hello")))
    assert empty == (0.0, True)
    # is_greedy: the model's own greedy bytes after a context are greedy; one byte changed is not
    contexts = [f"Question {i}:" for i in range(50)]
    outputs = model.generate(contexts, max_new_bytes=3, temperature=0.0)
    context, greedy = next(
        (c, g) for c, g in zip(contexts, outputs) if len(g) == 3 and all(32 <= b < 127 for b in g)
    )
    changed = greedy[:2] + bytes([greedy[2] ^ 1])
    (_, is_greedy), (_, not_greedy) = lm.loglikelihood(
        requests("loglikelihood", (context, greedy.decode()), (context, changed.decode()))
    )
    assert is_greedy is True and not_greedy is False
    with torch.no_grad():
        ids = torch.tensor([[1, *(b + 4 for b in b"hello")]])
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    assert whole[0] == pytest.approx(float(logp[torch.arange(5), ids[0, 1:]].sum()), abs=1e-4)
    assert whole[1] == bool((logp[:5].argmax(-1) == ids[0, 1:]).all())


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path, capsys):
    task = write_task(
        tmp_path,
        "tiny_bad",
        MC_ROWS,
        output_type="multiple_choice",
        doc_to_text="{{question}}",
        doc_to_target="label",
        doc_to_choice="choices",
    )
    argv = ["--model", "blt", "--model_args", f"pretrained={tmp_path / 'missing'}", "--tasks", str(task)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"blt-lm-eval: error: checkpoint path does not exist: {tmp_path / 'missing'}"


def test_bad_input_is_a_clear_error(checkpoints, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time

    def error(model_args: str) -> str:
        with pytest.raises(ValueError) as info:  # ConfigError and CheckpointError are ValueErrors
            get_model("blt").create_from_arg_string(model_args, {"batch_size": 1, "device": "cpu"})
        return str(info.value)

    assert "hub repo nobody/no-such-model is not cached" in error("pretrained=nobody/no-such-model")
    assert "unknown model_args key(s) bogus for --model blt (known: pretrained," in error(
        f"pretrained={checkpoints['blt']},bogus=1"
    )
    assert "needs model_args pretrained=" in error("batch_size=2")
    assert "no automatic batch size" in error(f"pretrained={checkpoints['blt']},batch_size=auto")
    assert "batch_size must be a positive integer, got 0" in error(
        f"pretrained={checkpoints['blt']},batch_size=0"
    )
    assert "context 8192 is longer" in error(f"pretrained={checkpoints['blt-baseline']},context=8192")
    assert "context 4096 is longer than the BLT's maximum of 512 ids" in error(
        f"pretrained={checkpoints['hf-blt']},context=4096"
    )
    assert "model_args: stride must be in [1, context - 1] = [1, 31], got 32" in error(
        f"pretrained={checkpoints['blt']},context=32,stride=32"
    )

    lm = harness_lm(checkpoints["blt"], context=32)
    with pytest.raises(ValueError, match="continuation of 40 ids does not fit the model's context of 32"):
        lm.loglikelihood(requests("loglikelihood", ("a", "b" * 40)))
    with pytest.raises(ValueError, match="max_gen_toks 40 leaves no room for a prompt"):
        lm.generate_until(requests("generate_until", ("a", {"max_gen_toks": 40})))
    with pytest.raises(ConfigError, match="unsupported generation argument.*repetition_penalty"):
        lm.generate_until(requests("generate_until", ("a", {"repetition_penalty": 1.2})))
