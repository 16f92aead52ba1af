"""
Tests of sample.py: text from a checkpoint made here, decoded with the run's tokenizer; bad input exits 2.

    python -m pytest -q test_sample.py
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import prepare_fineweb
import sample
import train as T
from conftest import hf_tokenizer_file
from model import LLaMA, ModelConfig
from prepare_fineweb import decode, get_tokenizer, meta_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 10-step byte-level run of a small model; returns its out_dir."""
    tmp = tmp_path_factory.mktemp("run")
    T.build_embedded_corpus(str(tmp / "pydoc"))
    T.train(T.TrainConfig(data=str(tmp / "pydoc"), out_dir=str(tmp / "out"), max_steps=10, batch_size=4, seq_len=32,
                          eval_interval=10, eval_steps=1, sample_tokens=0, device="cpu"))
    return str(tmp / "out")


def one_line_error(capsys, argv, *words):
    assert sample.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err


def test_cli_prints_samples(run):
    r = subprocess.run([sys.executable, os.path.join(HERE, "sample.py"), f"--out_dir={run}", "--start=def ", "--num_samples=2",
                        "--max_new_tokens=20", "--temperature=0.8", "--top_k=50", "--seed=0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("-" * 40 + "\n")
    assert len(samples) == 3 and samples[-1] == ""
    assert all(s.startswith("def ") and len(s) > len("def \n") for s in samples[:2])


def test_load_model_reads_the_checkpoint_onto_the_cpu_and_moves_only_the_model(run, monkeypatch):
    """A GPU user's sample.py: the checkpoint (weights, optimizer state, ...) is mapped onto the CPU, and only
    the model goes to the device (here the meta device, which any machine has)."""
    calls, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or load(*a, **kw))
    model, meta = sample.load_model(run, torch.device("meta"))
    assert calls == [{"map_location": "cpu", "mmap": True}]
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"} and not model.training
    assert meta["tokenizer"] == "bytes"


def test_greedy_sample_is_the_models_own_greedy_text(run, capsys):
    assert sample.main([f"--out_dir={run}", "--start=Th", "--num_samples=1", "--max_new_tokens=12", "--temperature=0",
                        "--device=cpu"]) == 0  # compared with the model on CPU below
    text = capsys.readouterr().out.split("\n" + "-" * 40)[0]
    model, meta = sample.load_model(run, torch.device("cpu"))
    enc = get_tokenizer(meta["tokenizer"])
    ids = model.generate(torch.tensor([[enc.eot_token] + enc.encode("Th")]), 12, temperature=0)[0, 1:].tolist()
    assert text == decode(enc, ids)
    outs = []
    for seed in (0, 0, 1):  # the seed fixes the samples
        sample.main([f"--out_dir={run}", "--max_new_tokens=12", f"--seed={seed}"])
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] != outs[2]


def test_missing_checkpoint_exits_2(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(HERE, "sample.py"), f"--out_dir={tmp_path}/none"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "ckpt.pt does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_input_exits_2(run, tmp_path, capsys):
    for argv, words in [(["--num_samples=0"], ["--num_samples"]), (["--max_new_tokens=abc"], ["--max_new_tokens"]),
                        (["--temperature=-1"], ["--temperature"]), (["--temperature=nan"], ["--temperature"]),
                        (["--top_k=-3"], ["--top_k"]), (["--start=<|endoftext|>"], ["--start", "cannot be encoded"]),
                        (["--start=caf\udce9"], ["--start", "cannot be encoded"]),  # Latin-1 bytes from a shell
                        ([f"--tokenizer={tmp_path}/none.tiktoken"], ["cannot load tokenizer"]),
                        (["--tokenizer=" + os.path.join(HERE, "..", "shared", "data", "gpt2.tiktoken")], ["50257", "257"]),
                        (["--nope"], ["--nope"])]:
        if "gpt2.tiktoken" in argv[0] and not os.path.exists(argv[0].split("=", 1)[1]):
            continue  # the GPT-2 ranks file is not beside the repo here
        one_line_error(capsys, [f"--out_dir={run}", *argv], *words)
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    one_line_error(capsys, [f"--out_dir={tmp_path}"], "cannot load")


@pytest.mark.parametrize("argv", [["--num_samples=0"], ["--max_new_tokens=0"], ["--temperature=-0.5"], ["--temperature=inf"],
                                  ["--top_k=-1"], ["--seed=-1"], [f"--seed={2**64}"], ["--device=tpu"]])
def test_every_bad_value_names_its_option(argv):
    """Every option with a range (the seed: torch.manual_seed's), refused in one line that names it."""
    with pytest.raises(sample.UsageError, match=argv[0].split("=")[0]) as e:
        sample.parse_args(argv)
    assert "\n" not in str(e.value)


def test_top_k_0_samples_from_every_token(run, capsys, monkeypatch):
    """--top_k=0 is no top-k at all: generate gets top_k=None, and samples."""
    calls, generate = [], LLaMA.generate
    monkeypatch.setattr(LLaMA, "generate", lambda self, *a, **kw: calls.append(kw["top_k"]) or generate(self, *a, **kw))
    assert sample.main([f"--out_dir={run}", "--top_k=0", "--num_samples=1", "--max_new_tokens=4", "--device=cpu"]) == 0
    assert calls == [None] and capsys.readouterr().out.count("-" * 40) == 1


def test_a_checkpoint_is_read_without_the_training_code(run, tmp_path, capsys):
    """sample.py reads a run with cli.py, model.py and prepare_fineweb.py: train.py is never imported,
    and a file that is no checkpoint of train.py is a one-line error."""
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import sample; "
            f"code = sample.main(['--out_dir={run}', '--max_new_tokens=5', '--num_samples=1']); "
            "print('train' in sys.modules, code)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "False 0", r.stderr
    ckpt = torch.load(os.path.join(run, "ckpt.pt"))
    del ckpt["model_config"]  # a checkpoint that does not say how to build its model
    torch.save(ckpt, tmp_path / "ckpt.pt")
    one_line_error(capsys, [f"--out_dir={tmp_path}"], "cannot load", "model_config")


def test_temperature_shapes_the_sampled_distribution():
    """generate draws from softmax(logits / temperature): at 0.5 and at 2, the frequencies of 20,000 draws
    of one token match that distribution, and not the untempered softmax(logits)."""
    torch.manual_seed(0)
    model = LLaMA(ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=8, max_seq_len=8)).eval()
    idx = torch.tensor([[3, 1, 4]])
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # logits nats apart (init gives near-uniform), so that temperature shows
        logits = model(idx)[0][0, -1]
        for t in (0.5, 2.0):
            out = model.generate(idx.repeat(20000, 1), 1, temperature=t, generator=torch.Generator().manual_seed(0))
            freq = torch.bincount(out[:, -1], minlength=8) / 20000
            tv = lambda p: 0.5 * (freq - p).abs().sum().item()  # total variation distance
            assert tv(F.softmax(logits / t, -1)) < 0.03 and tv(F.softmax(logits, -1)) > 0.1, t


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """A 4-step run on shards of a T5-like Hugging Face tokenizer trained here (300 tokens, </s> = 1)."""
    from pydoc_data.topics import topics
    tmp = tmp_path_factory.mktemp("hf")
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": topics[k]}) + "\n" for k in sorted(topics)[:30]))
    assert prepare_fineweb.main(["--input", str(docs), "--tokenizer", hf_tokenizer_file(tmp / "tokenizer.json"),
                                 "--shard_size", "10000", "--out_dir", str(tmp / "data"), "--workers", "1"]) == 0
    summary = T.train(T.TrainConfig(data=str(tmp / "data"), out_dir=str(tmp / "out"), device="cpu", max_steps=4,
                                    batch_size=2, seq_len=32, eval_interval=4, eval_steps=1, sample_tokens=8))
    return str(tmp / "out"), summary


def test_a_run_on_a_hugging_face_tokenizer(hf_run, capsys):
    """train.py sizes the vocabulary from the tokenizer and prints samples decoded with it; sample.py encodes
    the start text and decodes with it, and refuses a start text that spells its separator."""
    out, summary = hf_run
    assert summary["model"].cfg.vocab_size == 320  # 300 tokens, padded to a multiple of 64
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert [r for r in map(json.loads, f) if isinstance(r.get("sample"), str)]
    assert sample.main([f"--out_dir={out}", "--start=the ", "--num_samples=1", "--max_new_tokens=12",
                        "--temperature=0"]) == 0
    text = capsys.readouterr().out.split("\n" + "-" * 40)[0]
    model, meta = sample.load_model(out, torch.device("cpu"))
    enc = meta_tokenizer(meta)
    assert enc.eot_token == 1 and enc.encode("the ") == enc.tok.encode("the ", add_special_tokens=False).ids
    ids = model.generate(torch.tensor([[1] + enc.encode("the ")]), 12, temperature=0)[0, 1:].tolist()
    assert text.startswith("the ") and text == decode(enc, ids)
    one_line_error(capsys, [f"--out_dir={out}", "--start=a </s> b"], "--start", "cannot be encoded")


# ---- on a GPU: python -m pytest -q -k cuda (skipped, with the reason, without one) ----


def test_cuda_samples_of_a_gpu_run(cuda, tmp_path, data_dir):
    """sample.py --device=cuda on a run trained on the GPU: a greedy sample is the model's own greedy text on the
    GPU, and a seed gives the same samples again (the GPU's generator)."""
    out = tmp_path / "out"
    T.train(T.TrainConfig(data=data_dir, out_dir=str(out), max_steps=10, batch_size=4, seq_len=32, eval_interval=10,
                          eval_steps=1, sample_tokens=0, device=cuda))
    cli = lambda *args: subprocess.run([sys.executable, os.path.join(HERE, "sample.py"), f"--out_dir={out}",
                                        "--device=cuda", "--max_new_tokens=16", *args],
                                       capture_output=True, text=True, timeout=300)
    greedy = cli("--start=Th", "--num_samples=1", "--temperature=0")
    assert greedy.returncode == 0, greedy.stderr
    model, meta = sample.load_model(str(out), torch.device(cuda))
    enc = get_tokenizer(meta["tokenizer"])
    ids = model.generate(torch.tensor([[enc.eot_token] + enc.encode("Th")], device=cuda), 16, temperature=0)
    assert greedy.stdout.split("\n" + "-" * 40)[0] == decode(enc, ids[0, 1:].tolist())
    seeded = [cli("--num_samples=2", "--seed=3") for _ in range(2)]
    assert seeded[0].returncode == 0 and seeded[0].stdout.count("-" * 40) == 2, seeded[0].stderr
    assert seeded[0].stdout == seeded[1].stdout
