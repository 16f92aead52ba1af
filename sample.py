"""
Sample text from a trained run, decoded with the run's own tokenizer.

    python sample.py --out_dir=out/tiny-adamw-llr --start="def " --num_samples=3 --max_new_tokens=200 \
        --temperature=0.8 --top_k=50 --seed=0
    python sample.py --out_dir=out/llama60m-adamw-llr --tokenizer=gpt2.tiktoken   # GPT-2 shards, offline

Every sample starts a new document, as in the shards: end-of-text, then --start. The tokenizer is the one
the checkpoint's data was made with (bytes, GPT-2, a Hugging Face tokenizer such as T5's, ...); where it
cannot be loaded (GPT-2 or a hub tokenizer without internet), point --tokenizer at a local copy of it.
"""

import math
import os
import sys

import torch

from cli import Parser, UsageError
from model import LLaMA, ModelConfig
from prepare_fineweb import decode, get_tokenizer, meta_tokenizer, short

# ---- the run: model and tokenizer ----


def load_model(out_dir, device):
    """The run's model on device, in eval mode, and its data's meta. The checkpoint is mapped from disk onto
    the CPU, and only the model's weights move to the device: the optimizer state it also holds (twice the
    weights with AdamW) is never read."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist; train a run first (python train.py) "
                         "or point --out_dir at one")
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True)
        model = LLaMA(ModelConfig(**ckpt["model_config"]))  # the model as train.py built it
        model.load_state_dict(ckpt["model"])
    except Exception as e:  # not a checkpoint of train.py, truncated, or of an incompatible model.py
        raise UsageError(f"cannot load {path}: {short(e)}") from None
    return model.to(device).eval(), ckpt["meta"]


def load_tokenizer(meta, path):
    """The tokenizer named in the run's meta (bytes, gpt2, a Hugging Face one, ...), or the one given; its
    vocabulary must match."""
    name = path or meta["tokenizer"]
    try:
        enc = get_tokenizer(path) if path else meta_tokenizer(meta)
    except Exception as e:  # tiktoken downloads 'gpt2' on first use; offline that fails, as does a bad file
        hint = "" if path else ("; pass a local copy of the tokenizer the shards were made with: "
                                "--tokenizer=PATH.tiktoken or PATH/tokenizer.json")
        raise UsageError(f"cannot load tokenizer {name!r} ({short(e)}){hint}") from None
    if enc.n_vocab != meta["vocab_size"]:
        raise UsageError(f"tokenizer {name!r} has {enc.n_vocab} tokens, but the run was trained on "
                         f"{meta['tokenizer']!r} tokens ({meta['vocab_size']}); "
                         "pass the tokenizer its shards were made with")
    return enc


def encode_start(enc, start):
    """end-of-text (a document starts here), then the start text; refuse what is not plain text."""
    try:
        start.encode("utf-8")  # a shell may hand over bytes that are not UTF-8 (lone surrogates here)
        ids = enc.encode(start)  # text that spells a special token (<|endoftext|>, </s>) raises
    except (UnicodeEncodeError, ValueError) as e:
        raise UsageError(f"--start={start!r} cannot be encoded: {short(e)}") from None
    return [enc.eot_token] + ids

# ---- command line ----


def parse_args(argv):
    p = Parser(prog="sample.py", description="Sample text from a trained run (out_dir/ckpt.pt).")
    p.add_argument("--out_dir", default="out/tiny-adamw", help="the run's directory, holding ckpt.pt")
    p.add_argument("--start", default="",
                   help="text each sample begins with (after end-of-text); empty = a fresh document")
    p.add_argument("--num_samples", type=int, default=3, help="samples to draw")
    p.add_argument("--max_new_tokens", type=int, default=200, help="tokens generated per sample")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature; < 1 is more conservative, 0 greedy")
    p.add_argument("--top_k", type=int, default=50, help="sample only among the k likeliest tokens; 0 = all")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--tokenizer", default="",
                   help="bytes, gpt2, PATH.tiktoken or a Hugging Face tokenizer (hub name, directory, "
                        "tokenizer.json); default: the one the run's data was made with")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda when available")
    args = p.parse_args(argv)
    for key in ("num_samples", "max_new_tokens"):
        if getattr(args, key) < 1:
            raise UsageError(f"--{key} must be positive, got {getattr(args, key)}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top_k must be >= 0 (0 = all tokens), got {args.top_k}")
    if not 0 <= args.seed < 2**64:  # what torch.manual_seed takes
        raise UsageError(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device=cuda but no CUDA device is available; use --device=cpu")
    return args


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        device = torch.device("cuda" if args.device == "cuda"
                              or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
        model, meta = load_model(args.out_dir, device)
        enc = load_tokenizer(meta, args.tokenizer)
        prompt = encode_start(enc, args.start)
    except UsageError as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    idx = torch.tensor([prompt] * args.num_samples, device=device)  # (num_samples, len(prompt)): all at once
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None)
    for row in out.tolist():
        print(decode(enc, row[1:]))  # the start text and what followed it, without the leading end-of-text
        print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
