"""
Tests of export_hf.py: the exported directory loads in transformers and gives our logits; bad input is refused.

    python -m pytest -q test_export_hf.py
"""

import dataclasses
import json
import os
import sys

import pytest
import torch

import export_hf
import train as T
from conftest import hf_tokenizer_file
from model import LLaMA, ModelConfig, PRESETS
from prepare_fineweb import get_tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def checkpoint(path, mc, seed=0, meta=None):
    """A checkpoint as train.py writes it (the keys export reads), of a model with random weights."""
    torch.manual_seed(seed)
    model = LLaMA(mc)
    for p in model.parameters():  # not the init: norm gains and all matrices random, so every weight matters
        p.data.normal_(0, 0.1 if p.ndim == 2 else 1.0)
    os.makedirs(path, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(mc), "config": dataclasses.asdict(T.TrainConfig()),
                "meta": meta or {"tokenizer": "gpt2", "vocab_size": 100, "eot": 99}}, os.path.join(path, "ckpt.pt"))
    return model


@pytest.mark.parametrize("mc", [ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=128, max_seq_len=32),  # MHA
                                ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, max_seq_len=32),  # GQA
                                ModelConfig(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=128, max_seq_len=32, tie_embeddings=True),
                                ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, max_seq_len=32, rope_theta=500.0)],
                         ids=["mha", "gqa", "tied", "rope_theta"])
def test_transformers_gives_our_logits(tmp_path, mc):
    ours = checkpoint(tmp_path / "run", mc)  # vocabulary 100 padded to 128 rows
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.vocab_size == 128 and hf.config.eos_token_id == 99
    idx = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=idx).logits, ours(idx)[0], rtol=1e-5, atol=1e-5)
    with open(tmp_path / "hf" / "config.json") as f:  # transformers 4 reads the first, 5 the second
        config = json.load(f)
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == mc.rope_theta


def test_the_checkpoint_is_mapped_onto_the_cpu(tmp_path, monkeypatch):
    """The optimizer state beside the weights (twice their size with AdamW) is never read, nor moved anywhere."""
    checkpoint(tmp_path / "run", ModelConfig(dim=64, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=128, max_seq_len=32))
    calls, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or load(*a, **kw))
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert calls == [{"map_location": "cpu", "mmap": True}]


def test_a_hugging_face_tokenizer_is_saved_with_the_model(tmp_path, capsys):
    """A run on a T5-like tokenizer exports it beside the model: AutoTokenizer, as lm-eval calls it with
    pretrained=DIR alone, loads it, encodes as the shards did, and ends sequences with the separator."""
    tok = hf_tokenizer_file(tmp_path / "tokenizer.json")
    checkpoint(tmp_path / "run", ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=320, max_seq_len=8),
               meta={"tokenizer": tok, "vocab_size": 300, "eot": 1})
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert f"pretrained={tmp_path / 'hf'} " in capsys.readouterr().out
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ["the cat and naïve café, 東京", "a </s> or <pad> spelled in the text"]:
        assert hf_tok(text, add_special_tokens=False).input_ids == get_tokenizer(tok).encode_ordinary(text)
    assert (hf_tok.eos_token, hf_tok.eos_token_id) == ("</s>", 1)


def test_a_tokenizer_no_longer_where_the_run_left_it(tmp_path, capsys):
    """A run whose shards (and the tokenizer copy beside them) are not on this machine: refused in one line
    that names --tokenizer, nothing written; with --tokenizer pointing at a copy, exported with it."""
    (tmp_path / "copy").mkdir()
    (tmp_path / "small").mkdir()
    tok = hf_tokenizer_file(tmp_path / "copy" / "tokenizer.json")
    checkpoint(tmp_path / "run", ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=320, max_seq_len=8),
               meta={"tokenizer": "tokenizer.json", "path": str(tmp_path / "gone" / "tokenizer.json"),
                     "vocab_size": 300, "eot": 1})
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "gone/tokenizer.json does not exist" in err and "--tokenizer" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["copy", "run", "small"]  # no export, no leftover of one
    for wrong in ["gpt2", str(hf_tokenizer_file(tmp_path / "small" / "tokenizer.json", vocab_size=280))]:
        assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf"), f"--tokenizer={wrong}"]) == 2
        err = capsys.readouterr().err
        assert wrong in err and len(err.strip().splitlines()) == 1
        assert sorted(os.listdir(tmp_path)) == ["copy", "run", "small"]
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf"), f"--tokenizer={tok}"]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok("the cat", add_special_tokens=False).input_ids == get_tokenizer(tok).encode_ordinary("the cat")


@pytest.mark.parametrize("specials, eos", [(("<pad>", "<unk>", "<eos>"), "<eos>"),  # Gemma's name for it
                                          (("<pad>", "</s>", "<|endoftext|>"), "<|endoftext|>")],  # the first of SEPARATORS
                         ids=["custom", "two-candidates"])
def test_the_exported_end_of_sequence_is_the_runs_separator(tmp_path, specials, eos):
    """lm-eval ends a sequence at the tokenizer's EOS and at config.json's eos_token_id: both are the token the
    run's shards put between documents (meta's eot), not a fixed name or id, also where the tokenizer has
    another candidate."""
    tok = hf_tokenizer_file(tmp_path / "tokenizer.json", specials)
    eot = get_tokenizer(tok).eot_token
    assert eot == specials.index(eos)
    checkpoint(tmp_path / "run", ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=320, max_seq_len=8),
               meta={"tokenizer": tok, "vocab_size": 300, "eot": eot})
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (hf_tok.eos_token, hf_tok.eos_token_id) == (eos, eot)
    assert transformers.AutoConfig.from_pretrained(tmp_path / "hf").eos_token_id == eot


@pytest.mark.parametrize("name, words", [("gpt2", "tokenizer=gpt2"), ("gpt2.tiktoken", "tokenizer=gpt2"),
                                         ("bytes", "no Hugging Face tokenizer matches")])
def test_the_tokenizer_to_evaluate_with(tmp_path, capsys, name, words):
    checkpoint(tmp_path / "run", ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=320, max_seq_len=8),
               meta={"tokenizer": name, "vocab_size": 300, "eot": 1})
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert words in capsys.readouterr().out


def test_a_trained_run_exports_and_still_resumes_exactly(tmp_path, data_dir):
    small = lambda **kw: T.TrainConfig(data=data_dir, out_dir=str(tmp_path / "run"), max_steps=8, batch_size=2, seq_len=32,
                                       eval_interval=4, eval_steps=1, log_interval=100, device="cpu", **kw)
    straight = T.train(dataclasses.replace(small(), out_dir=str(tmp_path / "straight")))
    T.train(small(stop_after=4))
    before = (tmp_path / "run" / "ckpt.pt").read_bytes()
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "run" / "ckpt.pt").read_bytes() == before
    resumed = T.train(small(resume=True))
    for (n, p), (_, q) in zip(straight["model"].named_parameters(), resumed["model"].named_parameters()):
        assert torch.equal(p, q), n
    assert PRESETS["tiny"].dim == transformers.AutoConfig.from_pretrained(tmp_path / "hf").hidden_size


def test_bad_input_is_one_line_and_overwrites_nothing(tmp_path, capsys):
    assert export_hf.main([str(tmp_path / "none"), str(tmp_path / "hf")]) == 2
    assert "ckpt.pt does not exist" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    checkpoint(tmp_path / "run", ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=64, max_seq_len=8))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "not an empty directory" in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path / "hf") == ["keep.txt"] and (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    assert export_hf.main([str(tmp_path / "run")]) == 2  # the target is missing
    capsys.readouterr()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt.pt").write_bytes(b"not a checkpoint")
    assert export_hf.main([str(tmp_path / "bad"), str(tmp_path / "hf2")]) == 2
    err = capsys.readouterr().err
    assert "cannot load" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "hf2").exists()


def test_missing_safetensors_is_one_line(tmp_path, capsys, monkeypatch):
    checkpoint(tmp_path / "run", ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=64, max_seq_len=8))
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import then raises ImportError, as when not installed
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "pip install safetensors" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "hf").exists()
