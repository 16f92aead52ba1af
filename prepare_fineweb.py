"""
Tokenize FineWeb into llm.c token shards for train.py, streamed from the Hugging Face Hub. Stands alone:
numpy and tiktoken (tokenizers for Hugging Face's), no torch. train.py takes the shard format and the
tokenizers from here.

    python prepare_fineweb.py                        # sample-10BT -> data/fineweb10B/, 10^8 tokens a shard
    python prepare_fineweb.py --max_tokens=1.8e9     # just enough for the 60M preset (1.68B train tokens)
    python prepare_fineweb.py --edu                  # FineWeb-Edu -> data/edu_fineweb10B/
    python prepare_fineweb.py --input a.parquet b.jsonl.gz c.txt --tokenizer=gpt2.tiktoken
    python prepare_fineweb.py --tokenizer=google-t5/t5-base   # the paper's: T5's tokenizer, </s> between documents
    python prepare_fineweb.py --input a.parquet --bench   # tokens/s against a one-process loop

Shard 0 is validation, the rest train. Interrupted? Run the same command again: it resumes.
"""

import argparse
import filecmp
import glob
import gzip
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from contextlib import closing
from itertools import islice

import numpy as np
import tiktoken
from tqdm import tqdm

from cli import Parser, UsageError

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
# a Hugging Face tokenizer's end-of-text token, the first of these it has: GPT-2 and its kin, T5 and
# LLaMA-2, LLaMA-3, Gemma
SEPARATORS = (EOT, "</s>", "<|end_of_text|>", "<eos>")
DOCS_PER_TASK = 64  # documents per worker task: tens of thousands of tokens, enough to amortize the pickling

# ---- the shard format (llm.c's) and the tokenizers ----

def get_tokenizer(name):
    """'bytes', a local PATH.tiktoken ranks file, an encoding tiktoken knows by name ('gpt2'; it downloads
    the ranks), or else a Hugging Face tokenizer: a tokenizer.json file, a directory holding one (as
    save_pretrained writes it) or a hub name (google-t5/t5-base)."""
    if name == "bytes":  # 256 single-byte tokens
        stem, ranks = "bytes", {bytes([i]): i for i in range(256)}
    elif name.endswith(".tiktoken"):  # offline: the file tiktoken would download
        from tiktoken.load import load_tiktoken_bpe
        stem, ranks = os.path.basename(name)[: -len(".tiktoken")], load_tiktoken_bpe(name)
    elif not is_hugging_face(name):
        return tiktoken.get_encoding(name)
    else:
        return hf_tokenizer(name)
    # end-of-text comes right after the ranks: 256 for bytes, 50256 for GPT-2's file
    return tiktoken.Encoding(stem, pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


def is_hugging_face(name):  # anything but bytes, a ranks file or an encoding tiktoken knows by name
    return not (name == "bytes" or name.endswith(".tiktoken") or name in tiktoken.list_encoding_names())


def hf_tokenizer(name):
    """A Hugging Face tokenizer, named by the absolute path of a local one or by its hub name."""
    try:
        from tokenizers import Tokenizer  # here, not at the top: only Hugging Face tokenizers need it
    except ImportError:
        raise UsageError(f"tokenizer {name!r} needs the tokenizers library: pip install tokenizers") from None
    path = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    if os.path.isdir(name) and not os.path.isfile(path):
        raise ValueError(f"{name} holds no tokenizer.json (save_pretrained of a fast tokenizer writes one)")
    if os.path.isfile(path):
        return HFTokenizer(os.path.abspath(name), Tokenizer.from_file(path))
    return HFTokenizer(name, Tokenizer.from_pretrained(name))  # from the hub, or its local cache


class HFTokenizer:
    """A tokenizers.Tokenizer with the part of tiktoken.Encoding the project uses. Documents are separated
    by its end-of-text token: the first of SEPARATORS that it has as a special token. Like tiktoken's
    encode_ordinary, text that spells a special token is encoded as text."""

    def __init__(self, name, tok):
        self.name, self.tok = name, tok
        tok.encode_special_tokens = True  # "</s>" inside a document is text, never the separator
        self.special = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        sep = next((s for s in SEPARATORS if s in self.special), None)
        if sep is None:
            raise ValueError(f"no end-of-text token: none of its special tokens ({', '.join(self.special) or 'none'})"
                             f" is one of {' '.join(SEPARATORS)}; add one as a special token")
        self.eot_token = self.special[sep]
        self.n_vocab = 1 + max(tok.get_vocab(with_added_tokens=True).values())

    def __reduce__(self):  # pickling drops encode_special_tokens; rebuilding through __init__ sets it again
        return HFTokenizer, (self.name, self.tok)

    def encode_ordinary(self, text):
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        except TypeError:  # lone surrogates (from a JSON escape): U+FFFD instead, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self.tok.encode(text, add_special_tokens=False).ids

    def encode_to_numpy(self, text, disallowed_special=()):
        return np.array(self.encode_ordinary(text), dtype=np.uint32)

    def encode_ordinary_batch(self, texts):
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode(self, text):  # as tiktoken's: text that spells a special token raises
        if spelled := [s for s in self.special if s in text]:
            raise ValueError(f"the text spells the special token {spelled[0]!r}")
        return self.encode_ordinary(text)

    def decode(self, ids):
        """Whole runs of ids at once (the tokenizer's decoder joins pieces); an id from the vocabulary's
        padding shows as U+FFFD."""
        pieces, run = [], []
        for t in [*ids, None]:
            if t is not None and t < self.n_vocab:
                run.append(t)
            else:
                pieces.append(self.tok.decode(run, skip_special_tokens=False))
                run = []
        return "\ufffd".join(pieces)


def decode(enc, ids):
    """Text of token ids. An id from the vocabulary's padding (never in the data, but an untrained model
    samples them) shows as U+FFFD; so do bytes that are not UTF-8."""
    if isinstance(enc, HFTokenizer):
        return enc.decode(ids)
    pieces = (enc.decode_single_token_bytes(t) if t < enc.n_vocab else "\ufffd".encode() for t in ids)
    return b"".join(pieces).decode("utf-8", errors="replace")


def write_shard(path, tokens):
    """llm.c format: 256 int32 header (magic, version, count), then uint16 tokens. Atomic: temp + rename."""
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1 and (tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < 2**16)), \
        "tokens must fit in uint16"
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    with open(path + ".tmp", "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())
    os.replace(path + ".tmp", path)


def read_shard(path):
    """Memory-map a shard's tokens, checking its header against its size."""
    size, head = os.path.getsize(path), 4 * HEADER_INTS
    if size < head:
        raise ValueError(f"{path}: {size} bytes is too small for a token shard (header is {head} bytes)")
    magic, version, n = np.fromfile(path, dtype=np.int32, count=3).tolist()
    if magic != SHARD_MAGIC:
        raise ValueError(f"{path}: bad magic {magic} (expected {SHARD_MAGIC}): not an llm.c token shard")
    if version != SHARD_VERSION:
        raise ValueError(f"{path}: unsupported shard version {version} (expected {SHARD_VERSION})")
    if size != head + 2 * n:
        raise ValueError(f"{path}: header says {n} tokens but the file holds {(size - head) / 2:g}: "
                         "truncated or corrupt")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=head, shape=(n,))


def write_json(path, obj):  # temp + rename, like the shards: a crash leaves the old file or the new
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def tokenizer_file(name):  # the file a tokenizer is read from; None for a named one (bytes, gpt2, a hub name)
    path = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    return path if os.path.isfile(path) else None


def meta_of(enc, name):
    """meta.json's record of the tokenizer enc, loaded from name: so that train.py can size the vocabulary
    and refuse a mismatch. A tokenizer read from a file is kept beside the shards and named by that copy,
    so that the data directory can move to another machine."""
    file = tokenizer_file(name)
    return {"tokenizer": os.path.basename(file) if file else enc.name, "vocab_size": enc.n_vocab,
            "eot": enc.eot_token}


def write_meta(data_dir, enc, name):  # meta.json, and the tokenizer's file copied beside it
    if file := tokenizer_file(name):
        copy = os.path.join(data_dir, os.path.basename(file))
        if not (os.path.exists(copy) and os.path.samefile(file, copy)):  # resumed with the copy itself
            shutil.copy(file, copy)
    write_json(os.path.join(data_dir, "meta.json"), meta_of(enc, name))


def read_meta(data_dir):
    """The tokenizer record beside the shards, with "path" where the tokenizer is a file kept beside them;
    plain llm.c shards without one are GPT-2's."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        return {"tokenizer": "gpt2", "vocab_size": 50257, "eot": 50256}
    with open(path) as f:
        meta = json.load(f)
    beside = os.path.join(data_dir, meta["tokenizer"])
    if os.path.isfile(beside):
        meta["path"] = os.path.abspath(beside)
    return meta


def meta_tokenizer(meta):  # the tokenizer that a read_meta record names: the copy beside the shards, if any
    if "path" in meta and not os.path.exists(meta["path"]):  # e.g. a checkpoint far from its shards
        raise FileNotFoundError(f"{meta['path']} does not exist")
    return get_tokenizer(meta.get("path", meta["tokenizer"]))


def list_shards(data_dir, split):
    """Shards of a split, e.g. fineweb_val_000000.bin / fineweb_train_000001.bin, in order."""
    return sorted(glob.glob(os.path.join(data_dir, f"*_{split}_*.bin")))


def build_corpus(data_dir, name, docs, val_every, tokenizer="bytes"):
    """Documents (an iterable of str) as tokens in data_dir, every val_every-th one validation. Built aside,
    then renamed: a concurrent or interrupted build never leaves half a corpus."""
    if list_shards(data_dir, "train"):
        return
    enc = get_tokenizer(tokenizer)
    split = {"val": [], "train": []}
    for i, doc in enumerate(docs):
        split["val" if i % val_every == 0 else "train"] += [enc.eot_token] + enc.encode_ordinary(doc)
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent)
    write_shard(os.path.join(tmp, f"{name}_val_000000.bin"), split["val"])
    write_shard(os.path.join(tmp, f"{name}_train_000001.bin"), split["train"])
    write_meta(tmp, enc, tokenizer)
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, data_dir)
    except OSError:  # another process finished first
        shutil.rmtree(tmp)


def short(e):  # the first line of an exception's message
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


# ---- reading documents ----
# a source yields texts and keeps where[0] = the state to resume from at the next document, so we can
# record where each shard starts and later restart there, not at the top of a 30 GB stream

def hub_docs(args, where):
    import datasets  # here, not at the top: slow to import, and offline users never need it
    repo = "HuggingFaceFW/fineweb-edu" if args.edu else "HuggingFaceFW/fineweb"
    fail = lambda e: UsageError(f"could not stream {repo} ({args.name}): {short(e)}; "
                                "offline? use --input with local files")
    try:  # connect now, so that no network or a bad --name fails before anything is written
        ds = datasets.load_dataset(repo, name=args.name, split="train",
                                   streaming=True).select_columns(["text"])
        if where[0] is not None:
            ds.load_state_dict(where[0])  # skips the parquet files before it without downloading them
    except Exception as e:
        raise fail(e)

    def stream():
        try:
            for ex in ds:
                where[0] = ds.state_dict()
                yield ex["text"]
        except Exception as e:  # e.g. the connection dropped: the complete shards are kept, a rerun resumes
            raise fail(e)
    return stream()


def read_file(path):
    if path.endswith(".parquet"):  # how FineWeb ships; read just the text column, a batch at a time
        import pyarrow.parquet as pq  # here, not at the top: only parquet input needs it
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["text"]):
            yield from batch.column(0).to_pylist()
    elif path.endswith((".jsonl", ".jsonl.gz")):
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):  # a blank line (like a null text in parquet) is None: skipped
                try:
                    yield json.loads(line)["text"] if line.strip() else None
                except (ValueError, KeyError, TypeError) as e:
                    raise UsageError(f"{path}:{n}: expected a JSON object with a 'text' field ({short(e)})")
    else:  # .txt: the whole file is one document
        with open(path, encoding="utf-8") as f:
            yield f.read()


def local_docs(paths, where):
    first, skip = where[0] or (0, 0)  # state: (file index, documents of that file already read)
    for i in range(first, len(paths)):
        for j, text in enumerate(read_file(paths[i])):
            if (i > first or j >= skip) and text is not None:
                where[0] = (i, j + 1)
                yield text


def check_inputs(paths):  # fail before any work, not an hour in
    if any(p.endswith(".parquet") for p in paths):
        import pyarrow.parquet as pq
    for p in paths:
        if not os.path.isfile(p):
            raise UsageError(f"input file not found: {p}")
        if not p.endswith((".parquet", ".jsonl", ".jsonl.gz", ".txt")):
            raise UsageError(f"unknown file type: {p} (expected .parquet, .jsonl, .jsonl.gz or .txt)")
        try:
            columns = pq.read_schema(p).names if p.endswith(".parquet") else ["text"]
        except Exception as e:
            raise UsageError(f"{p}: not a readable parquet file ({short(e)})")
        if "text" not in columns:
            raise UsageError(f"{p}: no 'text' column (it has: {', '.join(columns)})")


def open_docs(args, where):
    return local_docs(args.input, where) if args.input else hub_docs(args, where)


# ---- tokenizing in parallel ----

def init_worker(enc):
    global worker_enc
    worker_enc = enc
    # ctrl-c is for the parent to handle, not one traceback per worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def tokenize(job):  # in a worker: end-of-text before each document, all in one uint16 array
    state, texts = job
    eot, docs = np.array([worker_enc.eot_token], dtype=np.uint32), []
    for text in texts:
        try:  # with no special tokens allowed this is encode_ordinary without the Python list: 20% faster
            docs += [eot, worker_enc.encode_to_numpy(text, disallowed_special=())]
        except UnicodeEncodeError:  # lone surrogates, which encode_ordinary knows how to repair
            docs += [eot, np.array(worker_enc.encode_ordinary(text), dtype=np.uint32)]
    return state, np.concatenate(docs).astype(np.uint16), np.array([len(d) + 1 for d in docs[1::2]])


def tokenized(docs, where, enc, workers):
    """(state, tokens, document lengths) for each chunk of documents, in order. Pool.imap would pull the
    whole stream into memory as fast as it can read it, so we keep a bounded window of tasks in flight."""
    pool = mp.Pool(workers, init_worker, (enc,))
    pending, state = deque(), where[0]
    try:
        while texts := list(islice(docs, DOCS_PER_TASK)):
            pending.append(pool.apply_async(tokenize, ((state, texts),)))
            state = where[0]  # where the next chunk starts
            if len(pending) > 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        # however we leave (done, a shard limit, an error), the few tasks in flight finish and the workers
        # exit on their own. terminate() would kill a worker halfway through sending its result, holding
        # the result queue's lock, and the pool would wait for that lock forever
        pool.close()
        pool.join()


# ---- shards, progress and resume ----

def shard_path(out_dir, k):
    return os.path.join(out_dir, f"fineweb_{'val' if k == 0 else 'train'}_{k:06d}.bin")


def is_full(path, shard_size):
    try:
        return len(read_shard(path)) == shard_size
    except (OSError, ValueError):
        return False


def remove_tmp(out_dir):  # what an interrupted write leaves behind, never under a final name
    for tmp in (glob.glob(os.path.join(out_dir, "fineweb_*.tmp"))
                + glob.glob(os.path.join(out_dir, "*.json.tmp"))):
        os.remove(tmp)


def prepare(args, enc, out_dir):
    """Stream, tokenize and shard; returns the number of tokens this run wrote."""
    S, limit, progress_path = args.shard_size, args.limit, os.path.join(out_dir, "progress.json")
    # never mix two tokenizers, inputs or shard sizes in one directory
    theirs, ours = read_meta(out_dir), meta_of(enc, args.tokenizer)  # theirs: GPT-2's if no meta.json
    file = tokenizer_file(args.tokenizer)  # a file must also have the bytes of the copy kept beside the shards
    other_bytes = file and "path" in theirs and not filecmp.cmp(file, theirs["path"], shallow=False)
    used = os.path.exists(os.path.join(out_dir, "meta.json")) or list_shards(out_dir, "val") \
        or list_shards(out_dir, "train")
    if used and ({k: theirs[k] for k in ours} != ours or other_bytes):
        raise UsageError(f"{out_dir} holds shards of tokenizer {theirs['tokenizer']!r}, not "
                         f"{args.tokenizer!r}; use another --out_dir")
    source = {"input": [[os.path.basename(p), os.path.getsize(p)] for p in args.input]} if args.input else \
        {"dataset": "fineweb-edu" if args.edu else "fineweb", "name": args.name}
    progress = {"source": source, "shard_size": S, "starts": [{"state": None, "skip": 0, "offset": 0}]}
    if os.path.exists(progress_path):
        with open(progress_path) as f:
            old = json.load(f)
        if (old["source"], old["shard_size"]) != (source, S):
            raise UsageError(f"{out_dir} holds shards of another input or --shard_size "
                             "(see its progress.json); use another --out_dir")
        progress = old

    # starts[k] is where shard k starts: the state of the chunk it starts in, then skip documents and offset
    # tokens into that chunk. keep each full shard whose successor's start is known; redo from the first other
    starts, k = progress["starts"], 0
    while k + 1 < len(starts) and k * S < limit and is_full(shard_path(out_dir, k), S):
        k += 1
    del starts[k + 1:]
    if k * S >= limit:
        print(f"{out_dir}: already holds {k} complete shards, nothing to do")
        return 0
    where = [starts[k]["state"]]
    docs = open_docs(args, where)
    os.makedirs(out_dir, exist_ok=True)
    remove_tmp(out_dir)
    write_meta(out_dir, enc, args.tokenizer)
    # the first chunk is redone whole, not entered at the skip: then every chunk, and so the progress
    # file too, comes out as in an uninterrupted run
    skip, drop = starts[k]["skip"], starts[k]["offset"]
    buf, fill, total, ndocs, first = np.empty(S, dtype=np.uint16), 0, k * S, 0, k * S
    bar = tqdm(total=limit if limit < float("inf") else None, initial=total, unit="tok", unit_scale=True,
               desc="tokens")
    with bar, closing(docs), closing(tokenized(docs, where, enc, args.workers)) as chunks:
        for state, toks, lens in chunks:
            ends, before = np.cumsum(lens), total
            i, skip, drop = (int(ends[skip - 1]) if skip else 0) + drop, 0, 0
            while i < len(toks) and total < limit:
                n = min(S - fill, len(toks) - i, limit - total)
                buf[fill:fill + n] = toks[i:i + n]
                fill, i, total = fill + n, i + n, total + n
                # full: write it, then record where the next one starts (a document may straddle)
                if fill == S:
                    write_shard(shard_path(out_dir, k), buf)
                    d = int(np.searchsorted(ends, i, side="right"))
                    starts.append({"state": state, "skip": d, "offset": i - int(ends[d - 1] if d else 0)})
                    write_json(progress_path, progress)
                    k, fill = k + 1, 0
            ndocs += len(lens)
            bar.set_postfix(docs=ndocs, refresh=False)
            bar.update(total - before)
            if total >= limit:
                break
        if fill:  # the last shard, short: not recorded as complete, so a rerun redoes it (and only it)
            write_shard(shard_path(out_dir, k), buf[:fill])
    print(f"{out_dir}: {k + (fill > 0)} shards, {total:,} tokens ({enc.name}); "
          f"this run tokenized {ndocs:,} documents")
    if k + (fill > 0) == 1:
        print("note: only the validation shard so far: raise --max_tokens or lower --shard_size "
              "to get training data")
    return total - first


# ---- benchmark ----

def bench(args, enc):
    """prepare() against the obvious one-process loop, encode_ordinary_batch, on the same input. prepare()
    goes first: workers forked from a process that has run encode_ordinary_batch's threads are ~15% slower."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        ours = prepare(args, enc, tmp) / (time.time() - t0)
    where, n, t0 = [None], 0, time.time()
    with closing(open_docs(args, where)) as docs:
        while n < args.limit and (texts := list(islice(docs, DOCS_PER_TASK))):
            n += sum(len(t) + 1 for t in enc.encode_ordinary_batch(texts))
    base = n / (time.time() - t0)
    print(f"bench | encode_ordinary_batch, 1 process: {base / 1e6:.2f}M tok/s | prepare_fineweb --workers "
          f"{args.workers}: {ours / 1e6:.2f}M tok/s | {ours / base:.2f}x")


# ---- command line ----

def load_tokenizer(name):
    if name.endswith((".tiktoken", ".json")) and not os.path.isfile(name):
        raise UsageError(f"tokenizer file not found: {name}")
    try:
        enc = get_tokenizer(name)
    except UsageError:
        raise
    except Exception as e:
        if os.path.exists(name):
            raise UsageError(f"could not read tokenizer {name}: {short(e)}")
        why = f"download failed ({type(e).__name__})" if isinstance(e, OSError) else short(e)
        raise UsageError(f"could not load tokenizer {name!r}: {why}; offline? pass a local copy, "
                         "e.g. --tokenizer path/to/gpt2.tiktoken or path/to/tokenizer.json")
    if enc.n_vocab > 2**16:
        raise UsageError(f"tokenizer {name!r} has {enc.n_vocab:,} tokens, but shards store uint16: "
                         "at most 65,536")
    return enc


def count(s):  # a positive whole number: 1e8 and 100000000 both work
    try:
        v = float(s)
    except ValueError:
        v = 0
    if not (1 <= v < 2**53 and v == int(v)):
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {s!r}")
    return int(v)


def parse_args(argv):
    p = Parser(prog="prepare_fineweb.py",
               description="Tokenize FineWeb (or local files) into llm.c token shards.")
    p.add_argument("--name", default="sample-10BT",
                   help="sample-10BT/100BT/350BT, or a dump like CC-MAIN-2024-10")
    p.add_argument("--edu", action="store_true",
                   help="HuggingFaceFW/fineweb-edu instead of HuggingFaceFW/fineweb")
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help="local .parquet/.jsonl(.gz)/.txt files, not the Hub")
    p.add_argument("--tokenizer", default="gpt2",
                   help="gpt2 (downloads), PATH.tiktoken (offline), bytes, or a Hugging Face tokenizer: "
                        "a hub name, a save_pretrained directory or a tokenizer.json")
    p.add_argument("--out_dir", help="default data/fineweb10B, or data/edu_fineweb10B with --edu")
    p.add_argument("--shard_size", type=count, default=10**8, help="tokens per shard")
    p.add_argument("--max_tokens", type=count, help="stop after this many tokens, all shards together")
    p.add_argument("--shards", type=count, help="stop after this many shards")
    p.add_argument("--workers", type=count, default=os.cpu_count(), help="tokenizer processes")
    p.add_argument("--bench", action="store_true",
                   help="print tokens/s of this script and of a one-process loop")
    args = p.parse_args(argv)
    if args.shard_size >= 2**31:
        p.error("--shard_size must be below 2^31: the shard header stores the count as an int32")
    args.limit = min(args.max_tokens or float("inf"),
                     args.shards * args.shard_size if args.shards else float("inf"))
    dataset = (("edu_" if args.edu else "")
               + ("fineweb10B" if args.name == "sample-10BT" else f"fineweb_{args.name}"))
    args.out_dir = args.out_dir or os.path.join("data", dataset)
    return args


def main(argv=None):
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"prepare_fineweb.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        check_inputs(args.input or [])
        enc = load_tokenizer(args.tokenizer)
        if args.bench:
            bench(args, enc)
        else:
            prepare(args, enc, args.out_dir)
    except UsageError as e:
        print(f"prepare_fineweb.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        remove_tmp(args.out_dir)
        print("\ninterrupted: the complete shards are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
