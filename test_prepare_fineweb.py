"""
Tests for prepare_fineweb.py: CPU only, no network, a few seconds each.

    python -m pytest -q test_prepare_fineweb.py
"""

import filecmp
import gzip
import json
import multiprocessing
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prepare_fineweb as pf
from conftest import hf_tokenizer_file, run, started
from prepare_fineweb import get_tokenizer, read_meta, read_shard

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "prepare_fineweb.py")


def find_ranks():  # the GPT-2 ranks file tiktoken would download, shipped beside the repo
    for path in (os.path.join(HERE, "..", "shared", "data", "gpt2.tiktoken"), "/work/shared/data/gpt2.tiktoken"):
        if os.path.isfile(path):
            return os.path.abspath(path)


GPT2 = find_ranks()
NO_GPT2 = pytest.mark.skipif(GPT2 is None, reason="GPT-2 ranks file ../shared/data/gpt2.tiktoken not found")
TOKENIZERS = [pytest.param(GPT2, id="gpt2", marks=NO_GPT2), pytest.param("bytes", id="bytes")]
TOK = GPT2 or "bytes"  # for the tests that don't care which


# ---- synthetic FineWeb ----

def make_docs(n, seed=0):
    """Short web-like documents, with the awkward cases: unicode, an empty document, and the end-of-text
    marker as plain text (encode_ordinary must not turn it into the special token)."""
    rng = random.Random(seed)
    words = "the of and to in a is that for it was with on as by at from this be are or have not you but".split()
    docs = [" ".join(rng.choices(words, k=rng.randint(3, 60))) for _ in range(n)]
    docs[1], docs[2] = "", "naïve café, 東京 and emoji 🙂\n\nsecond paragraph"
    docs[3] = "a <|endoftext|> in the text"
    return docs


def fineweb_columns(docs, start=0):  # FineWeb's schema: text plus metadata we must ignore
    n = len(docs)
    return {"text": docs, "id": [f"<urn:uuid:{start + i}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.com/{start + i}" for i in range(n)], "date": ["2024-02-21T08:00:00Z"] * n,
            "file_path": ["s3://commoncrawl/x.warc.gz"] * n, "language": ["en"] * n,
            "language_score": [0.95] * n, "token_count": [len(d.split()) for d in docs]}


def write_parquet(path, docs, start=0):
    pq.write_table(pa.table(fineweb_columns(docs, start)), path, row_group_size=40)
    return str(path)


def write_jsonl(path, docs, start=0):
    cols = fineweb_columns(docs, start)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wt", encoding="utf-8") as f:
        for i in range(len(docs)):
            f.write(json.dumps({k: v[i] for k, v in cols.items()}) + ("\n\n" if i == 10 else "\n"))  # a blank line too
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    """300 documents spread over every input format, in a known order."""
    docs = make_docs(300)
    paths = [write_parquet(tmp_path / "a.parquet", docs[:120]), write_jsonl(tmp_path / "b.jsonl", docs[120:200], 120),
             write_jsonl(tmp_path / "c.jsonl.gz", docs[200:297], 200)]
    for i, doc in enumerate(docs[297:]):  # a txt file is one document
        (tmp_path / f"d{i}.txt").write_text(doc, encoding="utf-8")
        paths.append(str(tmp_path / f"d{i}.txt"))
    return docs, paths


def prepare(out_dir, inputs, *extra, tokenizer=TOK, shard_size=1000):
    return pf.main(["--input", *inputs, "--tokenizer", tokenizer, "--shard_size", str(shard_size),
                    "--out_dir", str(out_dir), "--workers", "2", *extra])


def run_cli(*args, env=None, timeout=120):
    return run([sys.executable, SCRIPT, *args], timeout, cwd=HERE, env={**os.environ, **(env or {})})


def shard_names(out_dir):  # in shard order: val_000000, train_000001, ...
    return sorted((f for f in os.listdir(out_dir) if f.endswith(".bin")), key=lambda f: f.rsplit("_", 1)[1])


def snapshot(out_dir):  # every file's bytes, progress.json and meta.json included
    return {f.name: f.read_bytes() for f in sorted(pathlib.Path(out_dir).iterdir())}


def all_tokens(out_dir):
    return np.concatenate([np.asarray(read_shard(os.path.join(out_dir, f))) for f in shard_names(out_dir)])


# ---- shard format, tokenizers and content ----

def test_shard_round_trip_and_bad_headers(tmp_path):
    path = str(tmp_path / "x_train_000001.bin")
    tokens = np.random.default_rng(0).integers(0, 50257, 1000)
    pf.write_shard(path, tokens)
    assert os.path.getsize(path) == 256 * 4 + 2 * 1000
    np.testing.assert_array_equal(read_shard(path), tokens)
    raw = bytearray(open(path, "rb").read())
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="too small"):
        read_shard(str(bad))
    bad.write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(ValueError, match="magic"):
        read_shard(str(bad))
    bad.write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_shard(str(bad))
    bad.write_bytes(raw + b"\x00\x00")  # one token more than the header says: not silently read as 1000
    with pytest.raises(ValueError, match="header says 1000 tokens"):
        read_shard(str(bad))
    version2 = np.frombuffer(raw[:1024], dtype=np.int32).copy()
    version2[1] = 2  # a format we do not know, even though magic and size fit
    bad.write_bytes(version2.tobytes() + raw[1024:])
    with pytest.raises(ValueError, match="version 2"):
        read_shard(str(bad))


def test_tokenizers_offline():
    enc = get_tokenizer("bytes")
    assert enc.n_vocab == 257 and enc.eot_token == 256
    assert enc.decode(enc.encode_ordinary("héllo wörld")) == "héllo wörld"
    if GPT2 is None:
        pytest.skip("GPT-2 ranks file not found beside the repo")
    gpt2 = get_tokenizer(GPT2)
    assert (gpt2.name, gpt2.n_vocab, gpt2.eot_token) == ("gpt2", 50257, 50256)
    assert gpt2.encode_ordinary("hello world") == [31373, 995]


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_shards_hold_the_documents_in_order(tmp_path, corpus, tokenizer):
    docs, inputs = corpus
    out = tmp_path / "out"
    assert prepare(out, inputs, tokenizer=tokenizer) == 0
    enc = get_tokenizer(tokenizer)
    names = shard_names(out)
    assert names[0] == "fineweb_val_000000.bin"  # shard 0 is validation, the rest train, numbered on
    assert names[1:] == [f"fineweb_train_{k:06d}.bin" for k in range(1, len(names))]
    counts = []
    for name in names:  # llm.c header: magic, version, token count; then uint16 tokens
        header = np.fromfile(out / name, dtype=np.int32, count=256)
        assert (header[0], header[1]) == (20240520, 1) and not header[3:].any()
        assert os.path.getsize(out / name) == 256 * 4 + 2 * header[2]
        counts.append(int(header[2]))
    assert counts[:-1] == [1000] * (len(counts) - 1) and 0 < counts[-1] <= 1000  # full shards but the last
    tokens = all_tokens(out)
    expected = np.concatenate([[enc.eot_token] + enc.encode_ordinary(d) for d in docs]).astype(np.uint16)
    assert np.array_equal(tokens, expected)
    starts = np.flatnonzero(tokens == enc.eot_token)  # end-of-text opens every document, and only there
    assert len(starts) == len(docs) and starts[0] == 0
    decoded = [enc.decode(piece.tolist()) for piece in np.split(tokens, starts[1:])]
    assert decoded == ["<|endoftext|>" + d for d in docs]
    beside = {"tokenizer": os.path.basename(tokenizer), "path": str(out / os.path.basename(tokenizer))}
    assert read_meta(out) == {**({"tokenizer": "bytes"} if tokenizer == "bytes" else beside),
                              "vocab_size": enc.n_vocab, "eot": enc.eot_token}
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_worker_tokens_are_encode_ordinary(tokenizer, monkeypatch):
    """The workers' fast path (encode_to_numpy) gives encode_ordinary's tokens, awkward text included."""
    enc = get_tokenizer(tokenizer)
    monkeypatch.setattr(pf, "worker_enc", enc, raising=False)
    texts = make_docs(50) + ["a lone surrogate \ud83d from a JSON escape", "<|endoftext|><|endoftext|>"]
    state, tokens, lens = pf.tokenize(("state", texts))
    expected = [[enc.eot_token] + enc.encode_ordinary(t) for t in texts]
    assert state == "state" and tokens.dtype == np.uint16
    assert tokens.tolist() == sum(expected, []) and lens.tolist() == [len(e) for e in expected]


# ---- Hugging Face tokenizers ----

@pytest.fixture(scope="module")
def t5_like(tmp_path_factory):
    """One T5-like tokenizer (</s>, id 1, its end-of-text) as a tokenizer.json and as a directory holding it,
    as save_pretrained leaves it."""
    d = tmp_path_factory.mktemp("tok")
    (d / "dir").mkdir()
    path = hf_tokenizer_file(d / "tokenizer.json")
    shutil.copy(path, d / "dir" / "tokenizer.json")
    return {"file": path, "dir": str(d / "dir")}


@pytest.mark.parametrize("form", ["file", "dir"])
def test_hugging_face_tokenizer_shards(tmp_path, t5_like, form):
    """Shards of a T5-like tokenizer: </s> before every document and only there, even where a document spells
    it; every document decodes back to its text; meta.json names the tokenizer, which reloads from it."""
    from tokenizers import Tokenizer
    docs = make_docs(200)
    docs[4] = "a </s> and a <pad> in the text"
    out = tmp_path / "out"
    assert prepare(out, [write_jsonl(tmp_path / "docs.jsonl", docs)], tokenizer=t5_like[form]) == 0
    tok = Tokenizer.from_file(t5_like["file"])  # the library's own, not ours, decodes
    tokens = all_tokens(out)
    starts = np.flatnonzero(tokens == tok.token_to_id("</s>"))
    assert len(starts) == len(docs) and starts[0] == 0
    decoded = [tok.decode(piece.tolist(), skip_special_tokens=False) for piece in np.split(tokens, starts[1:])]
    assert decoded == ["</s>" + d for d in docs]
    meta = read_meta(out)  # the tokenizer is kept beside the shards
    assert meta == {"tokenizer": "tokenizer.json", "path": str(out / "tokenizer.json"), "vocab_size": 300, "eot": 1}
    assert filecmp.cmp(t5_like["file"], out / "tokenizer.json", shallow=False)
    enc = pf.meta_tokenizer(meta)
    assert pf.decode(enc, tokens[:starts[3]].tolist() + [300, 301]) == "</s>" + "</s>".join(docs[:3]) + "\ufffd" * 2
    assert enc.decode(enc.encode_ordinary("x \ud83d y")) == "x \ufffd y"  # a lone surrogate, as tiktoken repairs it


def test_hugging_face_separator_rule():
    """The separator is the first of <|endoftext|>, </s>, <|end_of_text|>, <eos> that the tokenizer has as
    a special token, wherever it sits in the vocabulary."""
    with tempfile.TemporaryDirectory() as tmp:
        both = get_tokenizer(hf_tokenizer_file(os.path.join(tmp, "a.json"), ("<unk>", "</s>", "<|endoftext|>")))
        llama3 = get_tokenizer(hf_tokenizer_file(os.path.join(tmp, "b.json"), ("<|begin_of_text|>", "<|end_of_text|>")))
    assert (both.eot_token, llama3.eot_token) == (2, 1)


def write_big_hf_vocab(path):  # a tokenizer.json of 70,001 tokens: too many for uint16 shards
    from tokenizers import Tokenizer, models
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(70000)}, unk_token="w0"))
    tok.add_special_tokens(["</s>"])
    tok.save(str(path))
    return str(path)


def test_hugging_face_tokenizer_errors(tmp_path, corpus, capsys, monkeypatch):
    _, inputs = corpus
    (tmp_path / "empty").mkdir()
    cases = [  # (tokenizer, words in the one-line message)
        (hf_tokenizer_file(tmp_path / "no_eot.json", ("<pad>", "<unk>")), ["no end-of-text token", "</s>"]),
        (write_big_hf_vocab(tmp_path / "big.json"), ["70,001", "65,536"]),
        (str(tmp_path / "missing.json"), ["not found"]),
        (str(tmp_path / "empty"), ["no tokenizer.json"]),
    ]
    for tokenizer, words in cases:
        capsys.readouterr()
        assert prepare(tmp_path / "out", inputs, tokenizer=tokenizer) == 2, tokenizer
        assert_one_line_error(capsys.readouterr().err, *words)
        assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import then raises ImportError, as when not installed
    assert prepare(tmp_path / "out", inputs, tokenizer=cases[0][0]) == 2
    assert_one_line_error(capsys.readouterr().err, "pip install tokenizers")
    monkeypatch.undo()
    r = run_cli("--input", *inputs, "--tokenizer", "no-such-org/no-such-tokenizer", "--out_dir", str(tmp_path / "out"),
                env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "no-such-org/no-such-tokenizer", "--tokenizer")


def test_command_line_run(tmp_path, corpus):
    docs, inputs = corpus
    r = run_cli("--input", *inputs, "--tokenizer", "bytes", "--shard_size", "5e3", "--out_dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "shards" in r.stdout and "Traceback" not in r.stderr
    enc = get_tokenizer("bytes")
    assert len(all_tokens(tmp_path / "out")) == sum(len(enc.encode_ordinary(d)) + 1 for d in docs)


def test_max_tokens_and_shards_stop_early(tmp_path, corpus):
    _, inputs = corpus
    prepare(tmp_path / "a", inputs, "--max_tokens", "2500")
    assert [len(read_shard(tmp_path / "a" / f)) for f in shard_names(tmp_path / "a")] == [1000, 1000, 500]
    prepare(tmp_path / "b", inputs, "--shards", "2")
    assert [len(read_shard(tmp_path / "b" / f)) for f in shard_names(tmp_path / "b")] == [1000, 1000]


def test_early_stop_lets_the_workers_finish(tmp_path, corpus, monkeypatch):
    """--shards ends the stream with tasks still in flight. The pool must be closed, not terminated: a worker
    killed halfway through sending its result holds the result queue's lock, and the pool then waits for
    that lock forever (a CI run hung here, with two defunct workers)."""
    killed, real_terminate = [], multiprocessing.process.BaseProcess.terminate
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "terminate",
                        lambda self: (killed.append(self.pid), real_terminate(self)))
    for extra in (["--shards", "2"], ["--max_tokens", "2500"]):
        assert prepare(tmp_path / extra[0], corpus[1], *extra) == 0
    assert killed == []
    assert multiprocessing.active_children() == []  # every worker has exited and been joined


def test_stands_alone_without_torch(tmp_path, corpus):
    """--help and a run on local files import numpy and tiktoken, never torch or the training code."""
    code = textwrap.dedent(f"""
        import runpy, sys
        for argv in (["--help"], ["--input", *{corpus[1]!r}, "--tokenizer=bytes", "--out_dir={tmp_path / 'out'}"]):
            sys.argv = [{SCRIPT!r}, *argv]
            try:
                runpy.run_path({SCRIPT!r}, run_name="__main__")
            except SystemExit as e:
                assert e.code == 0, e.code
        print(sorted(m for m in ("torch", "train", "model", "llr", "lanton") if m in sys.modules))
    """)
    r = run([sys.executable, "-c", code], 120, cwd=HERE)
    assert r.returncode == 0 and "--shard_size" in r.stdout, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert len(all_tokens(tmp_path / "out")) > 0


def test_default_out_dirs():
    assert pf.parse_args([]).out_dir == os.path.join("data", "fineweb10B")
    assert pf.parse_args(["--edu"]).out_dir == os.path.join("data", "edu_fineweb10B")
    assert pf.parse_args(["--name", "CC-MAIN-2024-10"]).out_dir == os.path.join("data", "fineweb_CC-MAIN-2024-10")


# ---- resume ----

@pytest.fixture
def full(tmp_path, corpus):
    """An uninterrupted run, for the resumed ones to match byte for byte."""
    prepare(tmp_path / "full", corpus[1])
    return snapshot(tmp_path / "full")


def test_resume_after_stopping_at_a_shard_count(tmp_path, corpus, full):
    out = tmp_path / "out"
    prepare(out, corpus[1], "--shards", "3")
    assert len(shard_names(out)) == 3
    prepare(out, corpus[1])
    assert snapshot(out) == full


def test_resume_after_stopping_mid_shard(tmp_path, corpus, full):
    out = tmp_path / "out"
    prepare(out, corpus[1], "--max_tokens", "4321")  # the last shard is short, so the rerun redoes it
    prepare(out, corpus[1])
    assert snapshot(out) == full


def test_resume_repairs_missing_corrupt_and_unrecorded_shards(tmp_path, corpus, full):
    out = tmp_path / "out"
    prepare(out, corpus[1], "--shards", "2")
    early_progress = (out / "progress.json").read_bytes()
    prepare(out, corpus[1])
    (out / "progress.json").write_bytes(early_progress)  # a crash between a shard's rename and the progress write
    os.remove(out / "fineweb_train_000005.bin")
    with open(out / "fineweb_train_000003.bin", "r+b") as f:  # truncated: read_shard rejects it
        f.truncate(1500)
    (out / "fineweb_train_000004.bin.tmp").write_bytes(b"half a shard")
    prepare(out, corpus[1])
    assert snapshot(out) == full


def test_interrupt_while_writing_leaves_no_half_shard(tmp_path, corpus, full, monkeypatch, capsys):
    out, writes = tmp_path / "out", []
    real_write = pf.write_shard

    def write_then_interrupt(path, tokens):  # ctrl-c arrives halfway through the fourth shard
        writes.append(path)
        if len(writes) == 4:
            with open(path + ".tmp", "wb") as f:
                f.write(b"\0" * 100)
            raise KeyboardInterrupt
        real_write(path, tokens)

    monkeypatch.setattr(pf, "write_shard", write_then_interrupt)
    assert prepare(out, corpus[1]) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert shard_names(out) == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    monkeypatch.setattr(pf, "write_shard", real_write)
    assert prepare(out, corpus[1]) == 0
    assert snapshot(out) == full


def test_ctrl_c_then_resume(tmp_path):
    """A real SIGINT to the command line run, then the same command again."""
    docs = make_docs(20000, seed=1)
    inputs = [write_parquet(tmp_path / "a.parquet", docs[:10000]),
              write_parquet(tmp_path / "b.parquet", docs[10000:], 10000)]
    args = ["--input", *inputs, "--tokenizer", "bytes", "--shard_size", "20000", "--workers", "2"]
    pf.main([*args, "--out_dir", str(tmp_path / "full")])
    out = tmp_path / "out"
    with started([sys.executable, SCRIPT, *args, "--out_dir", str(out)], cwd=HERE,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.time() + 60
        while not (out / "fineweb_train_000002.bin").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before ctrl-c arrived")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    for name in shard_names(out):  # whatever is under a final name is a whole shard
        assert len(read_shard(out / name)) == 20000
    r = run_cli(*args, "--out_dir", str(out))
    assert r.returncode == 0, r.stderr
    assert snapshot(out) == snapshot(tmp_path / "full")


def test_hub_stream_and_resume(tmp_path, monkeypatch):
    """The Hub path with datasets' streaming swapped for local parquet files: resume uses its state_dict."""
    import datasets
    docs = make_docs(400, seed=2)
    files = [write_parquet(tmp_path / f"{i}.parquet", docs[i * 100:(i + 1) * 100], i * 100) for i in range(4)]
    real_load, calls = datasets.load_dataset, []

    def fake_load(repo, name=None, split=None, streaming=False):
        calls.append((repo, name, split, streaming))
        return real_load("parquet", data_files=files, split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    hub = ["--tokenizer", TOK, "--shard_size", "1000", "--workers", "2", "--edu", "--name", "sample-100BT"]
    assert pf.main([*hub, "--out_dir", str(tmp_path / "full")]) == 0
    assert calls[0] == ("HuggingFaceFW/fineweb-edu", "sample-100BT", "train", True)
    enc = get_tokenizer(TOK)
    expected = np.concatenate([[enc.eot_token] + enc.encode_ordinary(d) for d in docs]).astype(np.uint16)
    assert np.array_equal(all_tokens(tmp_path / "full"), expected)
    out = tmp_path / "out"
    pf.main([*hub, "--out_dir", str(out), "--max_tokens", "5500"])
    starts = json.loads((out / "progress.json").read_text())["starts"]
    assert isinstance(starts[-1]["state"], dict)  # datasets' own resume state, not a document count
    pf.main([*hub, "--out_dir", str(out)])
    resumed, uninterrupted = snapshot(out), snapshot(tmp_path / "full")
    # datasets' states name the same documents in different words after a resume, so progress.json may differ
    del resumed["progress.json"], uninterrupted["progress.json"]
    assert resumed == uninterrupted


# ---- errors: one line, exit status 2, no traceback ----

def assert_one_line_error(err, *words):
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("prepare_fineweb.py: error:"), err
    assert all(w in lines[-1] for w in words), lines[-1]


def test_error_no_network_suggests_input(tmp_path):
    r = run_cli("--tokenizer", "bytes", "--out_dir", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "HuggingFaceFW/fineweb", "--input")
    assert not (tmp_path / "out").exists()  # nothing written before the stream opened


def test_error_tokenizer_download_suggests_a_file(tmp_path, corpus):
    proxy = "http://127.0.0.1:9"  # a closed local port: the download fails at once, with or without internet
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"), "HTTPS_PROXY": proxy, "https_proxy": proxy,
           "HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    r = run_cli("--input", *corpus[1], "--tokenizer", "gpt2", "--out_dir", str(tmp_path / "out"), env=env)
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "gpt2", "--tokenizer")


def test_error_bad_number_on_the_command_line():
    r = run_cli("--shard_size", "lots")
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "--shard_size", "lots")


@pytest.mark.parametrize("argv, words", [
    (["--shard_size", "abc"], ["--shard_size"]),
    (["--max_tokens", "-5"], ["--max_tokens"]),
    (["--shards", "0"], ["--shards"]),
    (["--workers", "1.5"], ["--workers"]),
    (["--shard_size", "3e9"], ["2^31"]),
    (["--shard_size", "0"], ["--shard_size"]),
    (["--max_tokens", "0.5"], ["--max_tokens"]),
    (["--workers", "0"], ["--workers"]),
])
def test_error_bad_numeric_args(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        pf.main(argv)
    assert e.value.code == 2
    assert_one_line_error(capsys.readouterr().err, *words)


def write_ranks(path, n):
    """A ranks file of n tokens, the 256 bytes first (so any text encodes); the tokenizer adds end-of-text."""
    import base64
    pieces = [bytes([i]) for i in range(256)] + [i.to_bytes(2, "big") for i in range(256, n)]
    with open(path, "w") as f:
        f.writelines(f"{base64.b64encode(p).decode()} {rank}\n" for rank, p in enumerate(pieces))
    return str(path)


def test_a_tokenizer_of_exactly_65536_tokens_fits_the_shards(tmp_path):
    """Ids 0 to 65,535 fit uint16: a tokenizer of 65,536 tokens is taken, its end-of-text (id 65,535) is stored
    and read back; one token more is refused."""
    enc = pf.load_tokenizer(write_ranks(tmp_path / "full.tiktoken", 2**16 - 1))
    assert enc.n_vocab == 2**16 and enc.eot_token == 2**16 - 1
    tokens = [enc.eot_token, *enc.encode_ordinary("a\xff")]  # end-of-text, then a two-byte token
    pf.write_shard(str(tmp_path / "x_val_000000.bin"), tokens)
    assert read_shard(str(tmp_path / "x_val_000000.bin")).tolist() == tokens == [65535, 0x61C3, 0xBF]
    with pytest.raises(pf.UsageError, match="65,537 tokens"):
        pf.load_tokenizer(write_ranks(tmp_path / "over.tiktoken", 2**16))


def write_big_vocab(path):  # a ranks file of 70,000 tokens: too many for uint16 shards
    import base64
    with open(path, "w") as f:
        for i in range(70000):
            f.write(f"{base64.b64encode(i.to_bytes(3, 'big')).decode()} {i}\n")
    return str(path)


def test_errors_on_bad_inputs(tmp_path, corpus, capsys):
    _, inputs = corpus
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "id": ["1", "2"]}), no_text)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    (tmp_path / "x.csv").write_text("text\nhello\n")
    cases = [  # (argv, words in the one-line message)
        (["--input", str(tmp_path / "missing.parquet")], ["not found", "missing.parquet"]),
        (["--input", str(tmp_path / "x.csv")], ["unknown file type", "x.csv"]),
        (["--input", str(no_text)], ["no 'text' column", "content"]),
        (["--input", str(bad_jsonl), "--tokenizer", "bytes"], ["bad.jsonl:2", "'text'"]),
        (["--input", *inputs, "--tokenizer", str(tmp_path / "missing.tiktoken")], ["not found"]),
        (["--input", *inputs, "--tokenizer", write_big_vocab(tmp_path / "big.tiktoken")], ["70,001", "uint16"]),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert pf.main([*argv, "--out_dir", str(tmp_path / "out")]) == 2, argv
        assert_one_line_error(capsys.readouterr().err, *words)


def test_error_out_dir_of_another_tokenizer_or_shard_size(tmp_path, corpus, capsys):
    out, inputs = tmp_path / "out", corpus[1]
    assert prepare(out, inputs, tokenizer="bytes") == 0
    if GPT2:
        capsys.readouterr()
        assert prepare(out, inputs, tokenizer=GPT2) == 2
        assert_one_line_error(capsys.readouterr().err, "'bytes'", "--out_dir")
    capsys.readouterr()
    assert prepare(out, inputs, tokenizer="bytes", shard_size=2000) == 2
    assert_one_line_error(capsys.readouterr().err, "--shard_size", "--out_dir")
    # a tokenizer file is told from another of the same name and vocabulary by its bytes
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    tok = hf_tokenizer_file(tmp_path / "a" / "tokenizer.json")
    other = json.loads(pathlib.Path(tok).read_text()) | {"normalizer": {"type": "Lowercase"}}
    (tmp_path / "b" / "tokenizer.json").write_text(json.dumps(other))
    assert prepare(tmp_path / "hf", inputs, tokenizer=tok) == 0
    assert prepare(tmp_path / "hf", inputs, tokenizer=tok) == 0  # the same file resumes, as does its copy
    assert prepare(tmp_path / "hf", inputs, tokenizer=str(tmp_path / "hf" / "tokenizer.json")) == 0
    capsys.readouterr()
    assert prepare(tmp_path / "hf", inputs, tokenizer=str(tmp_path / "b" / "tokenizer.json")) == 2
    assert_one_line_error(capsys.readouterr().err, "'tokenizer.json'", "--out_dir")


# ---- speed ----

def test_bench_prints_both_figures(tmp_path, corpus, capsys):
    assert prepare(tmp_path / "unused", corpus[1], "--bench") == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("bench")][0]
    assert "encode_ordinary_batch" in line and line.count("M tok/s") == 2
    assert not (tmp_path / "unused").exists()  # the timed run writes to a temporary directory


@NO_GPT2
def test_train_reads_the_shards_and_refuses_another_tokenizer(tmp_path, corpus):
    import train
    docs, inputs = corpus
    prepare(tmp_path / "gpt2", inputs, tokenizer=GPT2, shard_size=3000)
    base = dict(max_steps=3, batch_size=2, seq_len=32, eval_interval=0, eval_steps=1, out_dir=str(tmp_path / "run"))
    s = train.train(train.TrainConfig(data=str(tmp_path / "gpt2"), stop_after=2, **base))
    assert s["model"].cfg.vocab_size == 50304  # GPT-2's 50257 padded to a multiple of 64
    prepare(tmp_path / "bytes", inputs, tokenizer="bytes", shard_size=3000)
    with pytest.raises(train.UsageError, match="tokenizer"):  # resuming on shards of another tokenizer
        train.train(train.TrainConfig(data=str(tmp_path / "bytes"), resume=True, **base))


def test_a_data_directory_can_move(tmp_path, corpus):
    """Shards of a tokenizer file keep a copy of it: moved elsewhere, with the original gone, they still train
    and print samples."""
    import train
    (tmp_path / "tok").mkdir()
    tok = hf_tokenizer_file(tmp_path / "tok" / "tokenizer.json")
    assert prepare(tmp_path / "data", corpus[1], tokenizer=tok, shard_size=5000) == 0
    shutil.rmtree(tmp_path / "tok")
    shutil.move(tmp_path / "data", tmp_path / "moved")
    train.train(train.TrainConfig(data=str(tmp_path / "moved"), max_steps=4, batch_size=2, seq_len=32, eval_interval=2,
                                  eval_steps=1, sample_tokens=8, device="cpu", out_dir=str(tmp_path / "run")))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        samples = [r["step"] for r in map(json.loads, f) if isinstance(r.get("sample"), str)]
    assert samples == [0, 2, 4]
