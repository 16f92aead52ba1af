"""
A compact LLaMA: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention.

    from model import LLaMA, PRESETS
    model = LLaMA(PRESETS["tiny"])
    logits, loss = model(idx, targets)   # idx, targets: (B, T) int64
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=50)

Module names follow Hugging Face's LlamaForCausalLM (q_proj ... down_proj, embed_tokens, lm_head),
so per-layer reports read like the paper and weights map onto HF checkpoints one to one.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class ModelConfig:
    dim: int = 128                 # width of the residual stream
    n_layers: int = 5              # transformer blocks
    n_heads: int = 4               # query heads; head_dim = dim // n_heads
    n_kv_heads: int = 0            # key/value heads; 0 = n_heads (plain multi-head, as the paper),
                                   # fewer = GQA
    ffn_dim: int = 0               # SwiGLU hidden size; 0 = 8/3 * dim rounded up to multiple_of
    multiple_of: int = 32          # rounding for the default ffn_dim
    vocab_size: int = 320          # padded up to a multiple of 64 (the byte tokenizer has 257)
    max_seq_len: int = 256         # length of the RoPE tables
    norm_eps: float = 1e-6         # RMSNorm epsilon, as in the paper
    rope_theta: float = 10000.0    # RoPE base
    tie_embeddings: bool = False   # share embed_tokens and lm_head (the paper does not)

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        if self.ffn_dim == 0:
            hidden = int(8 * self.dim / 3)
            self.ffn_dim = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim={self.dim} must divide by n_heads={self.n_heads}, "
                             f"and n_heads by n_kv_heads={self.n_kv_heads}")


def pad_vocab(n, multiple=64):
    return multiple * math.ceil(n / multiple)


# the paper's sizes (README, Method notes): head_dim 64; vocab_size is only a default, train.py takes the
# data's tokenizer's, padded to a multiple of 64 (T5's 32,100 -> 32,128 in the paper's recipe)
PRESETS = {
    "tiny": ModelConfig(),  # the CPU demo, about 1M parameters, byte vocabulary
    "tiny_gqa": ModelConfig(n_kv_heads=2),  # the same with grouped-query attention (k, v rectangular)
    "small": ModelConfig(dim=256, n_layers=6, n_heads=8),  # 5M: the second size of the CPU benchmark
    "llama60m": ModelConfig(dim=768, n_layers=6, n_heads=12, n_kv_heads=12, ffn_dim=1512,
                            vocab_size=50304, max_seq_len=1024),
    "llama135m": ModelConfig(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_dim=2048,
                             vocab_size=50304, max_seq_len=1024),
    "llama350m": ModelConfig(dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, ffn_dim=2736,
                             vocab_size=50304, max_seq_len=1024),
    "llama1b": ModelConfig(dim=2048, n_layers=24, n_heads=32, n_kv_heads=32, ffn_dim=5461,
                           vocab_size=50304, max_seq_len=1024),
    # the official code's 3B config: head_dim 80, and its 32,000-token vocabulary (--data's replaces it)
    "llama3b": ModelConfig(dim=2560, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=6848,
                           vocab_size=32000, max_seq_len=1024),
}

# ---- building blocks ----


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # x / sqrt(mean(x^2) + eps) * weight, in float32 even under bf16 autocast (the mean of squares is
        # precision sensitive). F.rms_norm does it in one fused kernel instead of four separate ops.
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).type_as(x)


def rope_tables(head_dim, seq_len, theta):
    """cos/sin of angle t * theta^(-2i/head_dim), each (seq_len, head_dim/2): real numbers,
    no complex dtype."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(seq_len).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    # x: (B, nh, T, hs). rotate each (first half, second half) pair by its angle, as HF's rotate_half does
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, dim)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)  # pre-norm residual blocks
        return x + self.mlp(self.post_attention_layernorm(x))


def head_loss_sum(h, weight, targets):
    # one chunk of tokens: its logits (chunk, vocab) in float32, as the plain path's, summed over the chunk
    return F.cross_entropy(F.linear(h, weight).float(), targets, reduction="sum")


def chunked_cross_entropy(h, weight, targets, chunk):
    """The mean cross-entropy of the logits h @ weight.T (h: (N, dim), targets: (N,)), chunk tokens at a time.
    Each chunk's logits are recomputed in backward (torch.utils.checkpoint), so the float32 logits of at most
    one chunk are ever in memory, not the whole micro-batch's (10-12 bytes x vocab a token)."""
    sums = [checkpoint(head_loss_sum, h_c, weight, t_c, use_reentrant=False)
            for h_c, t_c in zip(h.split(chunk), targets.split(chunk))]
    return torch.stack(sums).sum() / targets.numel()


# ---- the model ----


class LLaMA(nn.Module):
    def __init__(self, cfg, loss_chunk=0, checkpoint_blocks=False):
        super().__init__()
        self.cfg = cfg
        # memory, not math: loss_chunk > 0 computes head and loss that many tokens at a time (forward then
        # returns no logits); checkpoint_blocks keeps each block's input, recomputes the rest in backward
        self.loss_chunk, self.checkpoint_blocks = loss_chunk, checkpoint_blocks
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.dim // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # recomputed, never checkpointed
        self.register_buffer("rope_sin", sin, persistent=False)
        for m in self.modules():  # N(0, 0.02) everywhere, as the paper
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        assert T <= self.cfg.max_seq_len, f"sequence length {T} > max_seq_len {self.cfg.max_seq_len}"
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed_tokens(idx)  # (B, T, dim)
        for layer in self.layers:
            if self.checkpoint_blocks:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        x = self.norm(x)
        if targets is not None and self.loss_chunk:
            return None, chunked_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1),
                                               self.loss_chunk)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Append max_new_tokens sampled tokens to idx (B, T). temperature 0 is greedy (argmax); top_k keeps
        only the k likeliest tokens. No KV cache: each step reruns the (cropped) context, which is simple
        and fast enough at these sizes. `generator` keeps sampling off the global RNG (training uses it)."""
        for _ in range(max_new_tokens):
            # RoPE tables end at max_seq_len: forget the oldest tokens
            context = idx[:, -self.cfg.max_seq_len:]
            logits = self(context)[0][:, -1, :].float()  # (B, vocab), the next token only
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    # the accessors of transformers' models: llr finds embedding and head by them
    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # a tied embedding counts once

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention scores."""
        cfg = self.cfg
        # every weight is used in a matmul except the embedding lookup; tied, the embedding is the
        # head's matmul too
        n = self.num_params() - (0 if cfg.tie_embeddings else self.embed_tokens.weight.numel())
        return 6 * n + 12 * cfg.n_layers * cfg.dim * seq_len

    def estimate_mfu(self, tokens_per_sec, seq_len, peak_flops):
        """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak."""
        return self.flops_per_token(seq_len) * tokens_per_sec / peak_flops


# ---- memory: an estimate from the config ----


def block_bytes(cfg, bf16):
    """Bytes one block saves for backward per token (measured on CPU with saved_tensors_hooks: test_train.py).
    Under bf16 autocast the matmuls save bf16 copies of their inputs, one per projection; the norms and the
    residual stay float32. On CUDA a fused RMSNorm may save less: this errs high."""
    d, f, kv = cfg.dim, cfg.ffn_dim, cfg.n_kv_heads * (cfg.dim // cfg.n_heads)
    a = 2 if bf16 else 4  # bytes of a matmul's input or output
    norms = 2 * (8 * d + 4)  # each RMSNorm: its float32 input and normalised input, and 1/rms
    inputs = a * d * ((3 if bf16 else 1) + 1 + (2 if bf16 else 1))  # of q/k/v, o_proj, gate/up
    attention = a * (2 * d + 2 * kv) + 4 * cfg.n_heads  # q, k, v, the output, a float32 logsumexp per head
    mlp = 4 * a * f  # gate, silu(gate), up and their product
    return norms + inputs + attention + mlp


def estimate_memory(cfg, batch_size, seq_len, bf16, optimizer="adamw", loss_chunk=0, checkpoint_blocks=False,
                    lanton=False, ddp=False):
    """Estimated peak bytes of one training process, by part, from the config alone (the model is built on the
    meta device: nothing of its size is allocated). Weights, grads, optimizer state and LANTON's gradient copy
    are there throughout; the peak adds the largest of what three moments hold beside them: the end of a
    micro-batch's forward (the activations, every bf16 weight copy, the loss's forward), the start of its
    backward or a recomputed block's (the activations, the copies saved for backward, the loss's or the block's
    transients), and under DDP its one re-bucketing of the gradients (at the second step, before any forward)."""
    with torch.device("meta"):
        model = LLaMA(cfg)
    n, head = model.num_params(), model.lm_head.weight.numel()
    hidden = sum(p.numel() for p in model.layers.parameters() if p.dim() == 2)  # blocks' matrices (Muon's)
    tokens, d = batch_size * seq_len, cfg.dim
    loss_tokens = min(loss_chunk or tokens, tokens)  # the tokens whose logits exist at once
    saved_block = 4 * d if checkpoint_blocks else block_bytes(cfg, bf16)  # checkpointed: its float32 input
    final = 8 * d + 4 + (2 if bf16 else 4) * d + 8  # the last norm, the head's input, the token ids
    # autocast's bf16 copy of a matrix lives in its cache until the forward's autocast region ends, then on
    # where backward needs it: every matrix's but those a checkpointed block or loss chunk recomputes (and
    # copies again, one block or chunk at a time)
    copies = 2 * (hidden + head) if bf16 else 0
    saved_copies = 2 * ((0 if checkpoint_blocks else hidden) + (0 if loss_chunk else head)) if bf16 else 0
    parts = {
        "weights": 4 * n,
        "grads": 4 * n,
        # a momentum (Muon's, LARS's), or Adam's two moments (AdamW's, LAMB's)
        "optimizer": {"muon": 4 * hidden + 8 * (n - hidden), "lars": 4 * n}.get(optimizer, 8 * n),
        # the last gradient of every parameter, float32, kept from one step to the next every `every` steps
        "LANTON grad copy": 4 * n if lanton else 0,
        "activations": tokens * (cfg.n_layers * saved_block + final),
        "bf16 weight copies": copies,
        # at the end of the forward: the float32 logits (and their bf16 original under autocast) and
        # log-softmax's float32 output, for the whole micro-batch or one chunk
        "loss in forward": (10 if bf16 else 8) * cfg.vocab_size * loss_tokens,
        # at the start of backward: log-softmax's saved float32 output, its gradient and the logits' gradient,
        # 12 bytes x vocab a token; a chunk adds its own gradient of the head (float32; under autocast its
        # bf16 copy of the head and the gradient in bf16)
        "logits and loss": 12 * cfg.vocab_size * loss_tokens + (4 * head if loss_chunk else 0),
        # what one block saves for backward when recomputed, and its matrices' bf16 copies
        "recomputed block": (tokens * block_bytes(cfg, bf16) + (2 * hidden // cfg.n_layers if bf16 else 0)
                             if checkpoint_blocks else 0),
        # once, at the second step's first forward: DDP's new buckets (in the order backward made the
        # gradients) are filled from the old ones, and both are held at once
        "DDP re-bucketing": 4 * n if ddp else 0,
    }
    held = parts["activations"]
    moments = [held + copies + parts["loss in forward"],
               held + saved_copies + max(parts["logits and loss"], parts["recomputed block"]),
               parts["DDP re-bucketing"]]
    throughout = parts["weights"] + parts["grads"] + parts["optimizer"] + parts["LANTON grad copy"]
    parts["total"] = throughout + max(moments)
    return parts
