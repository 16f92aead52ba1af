"""
Export a run to a Hugging Face LlamaForCausalLM directory: config.json and model.safetensors, which
transformers.AutoModelForCausalLM.from_pretrained loads, for lm-evaluation-harness or anything else.

    python export_hf.py out/llama60m-adamw-llr hf/llama60m-adamw-llr

The weights map one to one (model.py uses Hugging Face's module names and rotary convention). The
vocabulary keeps its padding (GPT-2's 50,257 tokens padded to 50,304 rows, as the model was trained):
the tokenizer never produces the extra ids. A run on a Hugging Face tokenizer (T5's, ...) has it saved
beside the model, where AutoTokenizer finds it (where the run's data is not on this machine, pass a copy:
--tokenizer=DIR or tokenizer.json); GPT-2-tokenized runs use the `gpt2` tokenizer; a run on byte tokens
has no Hugging Face tokenizer, so its export is for logits, not for lm-eval.
"""

import argparse
import json
import os
import shutil
import sys

import torch

from cli import Parser, UsageError
from prepare_fineweb import is_hugging_face, short
from sample import load_tokenizer


def hf_config(mc, meta):
    """config.json of a LlamaForCausalLM with the same shapes as our ModelConfig (as a dict)."""
    eot = meta.get("eot")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
            "hidden_size": mc["dim"], "intermediate_size": mc["ffn_dim"], "num_hidden_layers": mc["n_layers"],
            "num_attention_heads": mc["n_heads"], "num_key_value_heads": mc["n_kv_heads"],
            "head_dim": mc["dim"] // mc["n_heads"], "vocab_size": mc["vocab_size"],
            "max_position_embeddings": mc["max_seq_len"], "rms_norm_eps": mc["norm_eps"],
            "rope_theta": mc["rope_theta"],
            "rope_parameters": {"rope_type": "default", "rope_theta": mc["rope_theta"]},
            "tie_word_embeddings": mc["tie_embeddings"], "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "bos_token_id": eot, "eos_token_id": eot, "initializer_range": 0.02}


def save_tokenizer(enc, path):
    """A Hugging Face tokenizer in path: its tokenizer.json, and a tokenizer_config.json that has
    transformers load it as it is, with the documents' separator as end-of-sequence and text that spells a
    special token encoded as text, as in the shards."""
    enc.tok.save(os.path.join(path, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": enc.tok.id_to_token(enc.eot_token),
              "split_special_tokens": True}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def export(run_dir, target, tokenizer=""):
    """Write target/config.json and target/model.safetensors from run_dir/ckpt.pt, and the run's Hugging
    Face tokenizer (or the copy given) beside them; the run is only read. Returns the tokenizer's name."""
    try:
        from safetensors.torch import save_file  # an optional extra, like transformers
    except ImportError:
        raise UsageError("export_hf.py needs safetensors: pip install safetensors "
                         "(or pip install -r requirements-dev.txt)") from None
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    if not os.path.isfile(ckpt_path):
        raise UsageError(f"{ckpt_path} does not exist; pass the out_dir of a run that has written "
                         "a checkpoint")
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise UsageError(f"{target} exists and is not an empty directory; "
                         "choose another target (nothing was written)")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", mmap=True)  # the weights only are read
        meta, mc = ckpt["meta"], ckpt["model_config"]  # the model as train.py built it
    except Exception as e:  # not a checkpoint of train.py, or truncated
        raise UsageError(f"cannot load {ckpt_path}: {short(e)}") from None
    name = tokenizer or meta["tokenizer"]
    if tokenizer and not is_hugging_face(tokenizer):
        raise UsageError(f"--tokenizer={tokenizer} is no Hugging Face tokenizer; pass a tokenizer directory "
                         "or tokenizer.json (nothing was written)")
    enc = load_tokenizer(meta, tokenizer) if is_hugging_face(name) else None  # before anything is written
    # Hugging Face's names are ours under "model.", but for the head; a tied head is stored once,
    # as the embedding
    weights = {(k if k.startswith("lm_head.") else "model." + k): v.contiguous()
               for k, v in ckpt["model"].items()}
    if mc["tie_embeddings"]:
        del weights["lm_head.weight"]
    tmp = target.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(mc, meta), f, indent=2)
    if enc is not None:
        save_tokenizer(enc, tmp)
    if os.path.isdir(target):
        os.rmdir(target)  # empty, checked above
    os.replace(tmp, target)  # written aside, then renamed: never half an export under the target's name
    return name


def main(argv=None):
    p = Parser(prog="export_hf.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run's out_dir (holds ckpt.pt)")
    p.add_argument("target", help="directory to write (must not exist, or be empty)")
    p.add_argument("--tokenizer", default="",
                   help="a copy of the run's Hugging Face tokenizer (directory or tokenizer.json), where "
                        "the one its data was made with is not on this machine")
    try:
        args = p.parse_args(argv)
        tokenizer = export(args.run_dir, args.target, args.tokenizer)
    except UsageError as e:
        print(f"export_hf.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.target}/config.json and model.safetensors (LlamaForCausalLM)")
    if is_hugging_face(tokenizer):
        print(f"tokenizer: {tokenizer}, saved beside the model, e.g. lm_eval --model hf "
              f"--model_args pretrained={args.target} ...")
    elif tokenizer in ("gpt2", "gpt2.tiktoken"):  # by name, or the ranks file kept beside the shards
        print("tokenizer: gpt2, e.g. lm_eval --model hf "
              f"--model_args pretrained={args.target},tokenizer=gpt2 ...")
    else:
        print(f"note: the run's tokenizer is {tokenizer!r}, which no Hugging Face tokenizer matches: "
              f"the export gives the model's logits, but lm-eval cannot tokenize text for it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
