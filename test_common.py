"""
Tests of common.py: checkpoints resume on another device than they were written on (RNG states, an
optimizer's kernel), the GPU table behind the console's MFU; on a GPU (-k cuda), a run that moves from the GPU
to the CPU and back, and the export of a run the GPU trained.

    python -m pytest -q test_common.py
"""

import dataclasses
import json
import os
import sys

import numpy as np
import pytest
import torch

import common
import export_hf
import train
from conftest import run
from model import LLaMA, ModelConfig

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- checkpoints across devices ----


@dataclasses.dataclass
class Cfg:  # what load_checkpoint compares a resume's settings with, and compute_init reads
    lr: float = 1e-3
    device: str = "cpu"
    dtype: str = "auto"


def save(tmp_path, state, device):
    common.save_checkpoint(str(tmp_path), state, device=device, step=3, config=dataclasses.asdict(Cfg()),
                           meta={"tokenizer": "bytes"})


def load(tmp_path, state, device):
    return common.load_checkpoint(str(tmp_path), state, Cfg(), {"tokenizer": "bytes"}, device, run_only=())


def draws():
    return torch.rand(4).tolist(), np.random.rand(4).tolist()


def test_rng_states_load_onto_any_device(tmp_path):
    """torch.load maps a checkpoint's tensors to the run's device; the RNG states must still restore (torch
    wants a CPU ByteTensor), or every resume on a GPU fails. The meta device stands in for a GPU here."""
    torch.manual_seed(0)
    np.random.seed(0)
    save(tmp_path, {}, torch.device("cpu"))
    expected = draws()
    draws()  # the RNGs move on
    assert load(tmp_path, {}, torch.device("meta")) == 3
    assert draws() == expected


class FakeCuda:
    """torch.cuda's RNG functions for n GPUs, each with a state of its own; set_rng_state takes a CPU ByteTensor
    and a GPU that exists, as the real one does."""

    def __init__(self, monkeypatch, n):
        self.states = {i: torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(n)}
        self.calls = []
        for module in (torch.cuda, torch.cuda.random):  # get_rng_state_all and friends call these by module
            monkeypatch.setattr(module, "device_count", lambda: len(self.states))
            monkeypatch.setattr(module, "get_rng_state", self.get)
            monkeypatch.setattr(module, "set_rng_state", self.set)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        real_load = torch.load  # this machine has no GPU to map tensors onto: load them where they are
        monkeypatch.setattr(torch, "load", lambda path, map_location=None, **kw: real_load(path, **kw))

    def index(self, device):
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        return device.index or 0

    def get(self, device="cuda"):
        self.calls.append(("get", self.index(device)))
        return self.states[self.index(device)].clone()

    def set(self, state, device="cuda"):
        self.calls.append(("set", self.index(device)))
        if not (state.device.type == "cpu" and state.dtype == torch.uint8):
            raise TypeError("RNG state must be a torch.ByteTensor")
        if self.index(device) not in self.states:
            raise IndexError(f"no GPU {self.index(device)}")
        self.states[self.index(device)] = state.clone()


def test_a_cpu_run_leaves_the_gpus_alone(tmp_path, monkeypatch):
    """--device=cpu on a machine with GPUs: saving and resuming leave CUDA alone (no CUDA context)."""
    cuda = FakeCuda(monkeypatch, 2)
    save(tmp_path, {}, torch.device("cpu"))
    load(tmp_path, {}, torch.device("cpu"))
    assert cuda.calls == []


def test_each_rank_restores_its_own_gpu_only(tmp_path, monkeypatch):
    """Rank 0 (cuda:0) writes the checkpoint; on resume, rank 1 sets cuda:1's generator to it, and no other."""
    cuda = FakeCuda(monkeypatch, 2)
    saved = cuda.states[0].clone()
    save(tmp_path, {}, torch.device("cuda", 0))
    cuda.states = {0: torch.zeros(8, dtype=torch.uint8), 1: torch.ones(8, dtype=torch.uint8)}  # they move on
    load(tmp_path, {}, torch.device("cuda", 1))
    assert torch.equal(cuda.states[1], saved)
    assert torch.equal(cuda.states[0], torch.zeros(8, dtype=torch.uint8))


def test_resume_on_fewer_gpus(tmp_path, monkeypatch):
    """A checkpoint of an 8-GPU run resumes on a machine with one GPU."""
    cuda = FakeCuda(monkeypatch, 8)
    saved = cuda.states[0].clone()
    save(tmp_path, {}, torch.device("cuda", 0))
    cuda.states = {0: torch.zeros(8, dtype=torch.uint8)}
    load(tmp_path, {}, torch.device("cuda", 0))
    assert torch.equal(cuda.states[0], saved)


def test_a_gpu_checkpoint_resumes_on_a_machine_without_one(tmp_path, monkeypatch):
    """A checkpoint written on cuda:0 (its tensors tagged cuda:0, as torch.save tags a GPU's, and a CUDA RNG
    state) resumed with --device=cpu where there is no GPU: every tensor is loaded onto the CPU (torch.load
    without a map_location refuses such a file there) and CUDA's generator is left alone."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([w], lr=1e-2)
    w.grad = torch.randn(4, 3)
    opt.step()
    with monkeypatch.context() as gpu:
        FakeCuda(gpu, 1)
        gpu.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save(tmp_path, {"optimizers": [opt]}, torch.device("cuda", 0))
    assert torch.load(tmp_path / "ckpt.pt", map_location="cpu")["rng"]["cuda"] is not None
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine's, whatever it has
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a, **kw: calls.append(a))
    resumed = torch.optim.AdamW([w], lr=1e-2)
    assert load(tmp_path, {"optimizers": [resumed]}, torch.device("cpu")) == 3
    assert calls == []
    state = resumed.state[w]
    assert state["exp_avg"].device.type == "cpu" and torch.equal(state["exp_avg"], opt.state[w]["exp_avg"])


def test_a_resume_says_when_dtype_auto_changes_the_precision(tmp_path, monkeypatch, capsys):
    """--dtype=auto is bfloat16 on a GPU and float32 on a CPU: a checkpoint written on a GPU and resumed on a
    CPU (or back) changes precision, and the console says so once, with the flag that keeps it."""
    FakeCuda(monkeypatch, 1)
    save(tmp_path, {}, torch.device("cpu"))
    load(tmp_path, {}, torch.device("cpu"))
    assert "dtype" not in capsys.readouterr().out
    save(tmp_path, {}, torch.device("cuda", 0))
    load(tmp_path, {}, torch.device("cpu"))
    note = capsys.readouterr().out
    assert "float32 here" in note and "--dtype=bfloat16" in note


KERNEL = ("fused", "foreach", "capturable")


@pytest.mark.parametrize("saved_on, resumed_on", [({"fused": True}, {"fused": False}),  # CPU-built, now on a GPU
                                                  ({"foreach": True}, {"fused": True}),
                                                  ({"fused": False}, {"fused": True})])
def test_a_resumed_optimizer_runs_the_kernel_it_was_built_with(tmp_path, saved_on, resumed_on):
    """AdamW built for the device a run resumes on keeps its fused/foreach choice after loading a checkpoint
    written with another; its state and hyperparameters still come from the checkpoint."""
    torch.manual_seed(0)
    build = lambda p, **kw: torch.optim.AdamW([{"params": [p], "name": "w"}], lr=1e-2, betas=(0.8, 0.9), **kw)
    w = torch.nn.Parameter(torch.randn(4, 3))
    before = build(w, **saved_on)
    w.grad = torch.randn(4, 3)
    before.step()
    save(tmp_path, {"optimizers": [before]}, torch.device("cpu"))
    after = build(w, **resumed_on)
    kernel = {k: after.param_groups[0][k] for k in KERNEL}
    load(tmp_path, {"optimizers": [after]}, torch.device("cpu"))
    assert {k: after.param_groups[0][k] for k in KERNEL} == kernel
    assert after.param_groups[0]["betas"] == (0.8, 0.9) and after.param_groups[0]["name"] == "w"
    state = after.state[w]
    assert torch.equal(state["exp_avg"], before.state[w]["exp_avg"]) and float(state["step"]) == 1
    after.step()  # the kernel runs on the state as loaded
    assert float(after.state[w]["step"]) == 2


# ---- the GPU table behind MFU ----

# torch.cuda.get_device_name of each GPU, and its dense bf16 peak in TFLOP/s (None: not listed, no MFU shown)
GPUS = [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835), ("NVIDIA GH200 480GB", 989), ("NVIDIA B200", 2250),
        ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-SXM4-40GB", 312), ("NVIDIA A100-PCIE-40GB", 312),
        ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA A10", 125), ("NVIDIA L40S", 362), ("NVIDIA L4", 121),
        ("NVIDIA GeForce RTX 4090", 165), ("NVIDIA A10G", None), ("NVIDIA L40", None), ("NVIDIA H800", None),
        ("NVIDIA GB200", None), ("NVIDIA GeForce RTX 4090 Laptop GPU", None), ("Tesla T4", None)]


@pytest.mark.parametrize("name, tflops", GPUS)
def test_peak_flops_of_real_device_names(monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak = common.peak_flops(torch.device("cuda", 0))
    assert peak == (tflops and tflops * 1e12)


def test_no_peak_flops_on_cpu():
    assert common.peak_flops(torch.device("cpu")) is None


# ---- processes ----


def test_more_processes_than_gpus_is_a_usage_error(monkeypatch):
    """torchrun --nproc_per_node=2 on a machine with one GPU: process 1 says so in one line, before touching CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail(f"set_device({device})"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(common.UsageError, match="no GPU of its own .1 visible.*--nproc_per_node"):
        common.compute_init(Cfg(device="auto"))


# ---- on a GPU: python -m pytest -q -k cuda (each skipped, with the reason, without one) ----


def test_cuda_compile_bf16_resume_across_devices(cuda, tmp_path, data_dir):
    """tiny on the GPU with --compile in bf16, stopped and resumed on the CPU, then on the GPU again to the end,
    each invocation a user's command line: each leg runs the optimizer kernel of its device and says when the
    precision changes, the GPU's legs show their GPU and MFU, and the run trains on across both moves."""
    out = tmp_path / "out"
    steps = [f"--data={data_dir}", f"--out_dir={out}", "--max_steps=30", "--batch_size=8", "--seq_len=64",
             "--eval_interval=10", "--eval_steps=2", "--log_interval=5"]
    for args, precision in [(["--device=cuda", "--compile", "--stop_after=10"], None),
                            (["--device=cpu", "--resume", "--stop_after=10"], "float32 here"),
                            (["--device=cuda", "--compile", "--resume"], "bfloat16 here")]:
        r = run([sys.executable, os.path.join(HERE, "train.py"), *steps, *args], 600, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        fused = [g["fused"] for g in torch.load(out / "ckpt.pt")["optimizers"][0]["param_groups"]]
        assert set(fused) == {args[0] == "--device=cuda"}  # the kernel of the device it ran on
        assert precision is None or precision in r.stdout, r.stdout  # the --dtype=auto note, on each move
        if args[0] == "--device=cuda":
            assert "cuda:0" in r.stdout and ("| mfu " in r.stdout or "no MFU: this GPU" in r.stdout), r.stdout
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["device"] != common.cpu_name() for r in records if "config" in r] == [True, False, True]
    losses = [r["loss"] for r in records if "loss" in r]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(losses) == 30 and all(np.isfinite(losses)) and vals[-1] < vals[0] - 1


def test_cuda_export_of_a_gpu_run_gives_its_logits_in_transformers(cuda, tmp_path, data_dir):
    """export_hf.py of a run trained on the GPU (its checkpoint's tensors tagged cuda:0): transformers loads it
    onto the GPU and gives our model's float32 logits there to 1e-4 (on CPU 1e-5, test_export_hf.py; the GPU's
    kernels round differently). Here, not in test_export_hf.py, which skips as a whole without transformers: on
    a GPU a missing export extra fails this test."""
    import safetensors  # noqa: F401  (export_hf.py's extras: requirements-dev.txt)
    import transformers
    out, hf_dir = tmp_path / "out", tmp_path / "hf"
    train.train(train.TrainConfig(data=data_dir, out_dir=str(out), max_steps=10, batch_size=4, seq_len=32,
                                  eval_interval=10, eval_steps=1, sample_tokens=0, device=cuda))
    assert export_hf.main([str(out), str(hf_dir)]) == 0
    ckpt = torch.load(out / "ckpt.pt", map_location=cuda)
    ours = LLaMA(ModelConfig(**ckpt["model_config"])).to(cuda)
    ours.load_state_dict(ckpt["model"])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(cuda)
    idx = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(0)).to(cuda)
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=idx).logits, ours(idx)[0], rtol=1e-4, atol=1e-4)
