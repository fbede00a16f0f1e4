"""
The agent's sandbox: a small GPT, its optimizer (Muon + AdamW) and a training loop that computes for
a fixed time budget and then prints val_bpb (lower is better). One file, read top to bottom:
device set-up, the model, the optimizer, the hyperparameters (edit those directly), set-up, the
training loop, the final evaluation and the summary.

    uv run train.py
"""

import time
t_start = time.time()  # total_seconds counts from here: imports and start-up are overhead too

import os
os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # less GPU memory fragmentation
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # keep run.log free of download bars
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # big CPU tensors on 2 MB pages; read at torch's first allocation
os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # CPU threads spin briefly at a barrier, then sleep: see budget_clock

import gc
import math
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import (MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, SETUP, Tokenizer, make_dataloader, evaluate_bpb,
                     training_budget)
from harness.attention import load_attention, build_block_masks
from harness.errors import report_crashes
from harness.hardware import (default_device, device_name, bf16_is_native, tune_process,
                              peak_flops_of, peak_memory_mb)

# Line-buffered stdout: output redirected to run.log must not sit in a buffer and land after a
# crash's traceback, which has to be the last thing in the log.
sys.stdout.reconfigure(line_buffering=True)

# ---------------------------------------------------------------------------
# Device: everything hardware-specific is in this section
# ---------------------------------------------------------------------------

device = torch.device(default_device())  # CUDA, else Apple's MPS, else the CPU

# bf16 autocast where bf16 math is native (NVIDIA GPUs from Ampere on, CPUs with AVX512-BF16 or
# AMX); elsewhere, MPS included, bf16 is emulated or unproven and we stay in fp32.
USE_BF16 = bf16_is_native(device)
autocast_ctx = torch.amp.autocast(device_type=device.type, dtype=torch.bfloat16) if USE_BF16 else nullcontext()
COMPUTE_DTYPE = torch.bfloat16 if USE_BF16 else torch.float32  # also of the embedding and rotary tables
if device.type == "cuda":
    torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls

# torch.compile fuses the model (and on CUDA the optimizer's steps) at the cost of compiling in the
# first step. Always on CUDA. On the CPU it needs a C++ compiler, and pays off under `small`, not
# in a `smoke` run of seconds; compiling the CPU optimizer step costs more start-up than it saves.
COMPILE = device.type == "cuda" or (device.type == "cpu" and SETUP == "small" and shutil.which("g++") is not None)
COMPILE_OPTIMIZER = COMPILE and device.type == "cuda"
# CUDA compiles the model whole, as the reference does; elsewhere each block and the head apart:
# alike blocks share one compiled graph, and an edit recompiles a block, not the whole model
COMPILE_BY_BLOCK = device.type != "cuda"

tune_process(device, COMPILE)  # memory allocator and compiler settings: speed only (harness/hardware.py)
# Flash Attention 3 where prepare.py fetched it; else FlexAttention for sliding windows on CUDA, SDPA
# for the rest. One signature: attention(q, k, v, window_size), layout (B, T, heads, head_dim).
attention, attention_note = load_attention(device)
budget = training_budget(device)  # the judge's clock: it says when training is over (warm-up steps untimed)

print(f"Device: {device_name(device)}, {'bf16 autocast' if USE_BF16 else 'fp32'}, torch.compile {'on' if COMPILE else 'off'}")
print(f"Attention: {attention_note}")
print(f"Budget clock: {budget.note}")

# ---------------------------------------------------------------------------
# GPT model
# ---------------------------------------------------------------------------

@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4
    n_kv_head: int = 4
    n_embd: int = 512
    window_pattern: str = "SSSL"


def norm(x):
    return F.rms_norm(x, (x.size(-1),))  # parameter-free


def has_ve(layer_idx, n_layer):
    """Value embeddings on alternating layers, the last one always included."""
    return layer_idx % 2 == (n_layer - 1) % 2


def apply_rotary_emb(x, cos, sin):
    assert x.ndim == 4  # (B, T, heads, head_dim): rotate the two halves of each head
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x1 * (-sin) + x2 * cos
    return torch.cat([y1, y2], 3)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.n_embd = config.n_embd
        self.head_dim = self.n_embd // self.n_head
        assert self.n_embd % self.n_head == 0
        assert self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0
        self.c_q = nn.Linear(self.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)
        self.ve_gate_channels = 32
        self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False) if has_ve(layer_idx, config.n_layer) else None

    def forward(self, x, ve, cos_sin, window_size):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)

        # Value residual (ResFormer): mix in the value embedding, with an input-dependent gate per head
        if ve is not None:
            ve = ve.view(B, T, self.n_kv_head, self.head_dim)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))  # 1.0 at init
            v = v + gate.unsqueeze(-1) * ve

        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm

        y = attention(q, k, v, window_size)
        y = y.contiguous().view(B, T, -1)
        y = self.c_proj(y)
        return y


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        x = self.c_fc(x)
        x = F.relu(x).square()
        x = self.c_proj(x)
        return x


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window_size):
        x = x + self.attn(norm(x), ve, cos_sin, window_size)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.window_sizes = self._compute_window_sizes(config)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        # Value embeddings
        head_dim = config.n_embd // config.n_head
        kv_dim = config.n_kv_head * head_dim
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, kv_dim)
            for i in range(config.n_layer) if has_ve(i, config.n_layer)
        })
        # Rotary embeddings, for 10x the sequence length
        self.rotary_seq_len = config.sequence_len * 10
        cos, sin = self._precompute_rotary_embeddings(self.rotary_seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        # Embedding and unembedding
        torch.nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        torch.nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        # Transformer blocks: uniform with the std of normal(0, 1/sqrt(n_embd)); outputs start at zero
        n_embd = self.config.n_embd
        s = 3**0.5 * n_embd**-0.5
        for block in self.transformer.h:
            torch.nn.init.uniform_(block.attn.c_q.weight, -s, s)
            torch.nn.init.uniform_(block.attn.c_k.weight, -s, s)
            torch.nn.init.uniform_(block.attn.c_v.weight, -s, s)
            torch.nn.init.zeros_(block.attn.c_proj.weight)
            torch.nn.init.uniform_(block.mlp.c_fc.weight, -s, s)
            torch.nn.init.zeros_(block.mlp.c_proj.weight)
        # Per-layer scalars
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        # Value embeddings
        for ve in self.value_embeds.values():
            torch.nn.init.uniform_(ve.weight, -s, s)
        # Gates start at zero: 2 * sigmoid(0) = 1, a neutral mix
        for block in self.transformer.h:
            if block.attn.ve_gate is not None:
                torch.nn.init.zeros_(block.attn.ve_gate.weight)
        # Rotary embeddings (buffers are empty after materialising from the meta device)
        head_dim = self.config.n_embd // self.config.n_head
        cos, sin = self._precompute_rotary_embeddings(self.rotary_seq_len, head_dim)
        self.cos, self.sin = cos, sin
        # Embedding tables in bf16 (where we compute in bf16): half the memory, and lookups need no precision
        self.transformer.wte.to(dtype=COMPUTE_DTYPE)
        for ve in self.value_embeds.values():
            ve.to(dtype=COMPUTE_DTYPE)

    def _precompute_rotary_embeddings(self, seq_len, head_dim, base=10000, device=None):
        if device is None:
            device = self.transformer.wte.weight.device
        channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (base ** (channel_range / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        cos, sin = freqs.cos(), freqs.sin()
        cos, sin = cos.to(COMPUTE_DTYPE), sin.to(COMPUTE_DTYPE)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # broadcast over batch and heads
        return cos, sin

    def _compute_window_sizes(self, config):
        """Per layer (window, 0): S is half the sequence, L all of it; the last layer is always L."""
        pattern = config.window_pattern.upper()
        assert all(c in "SL" for c in pattern)
        long_window = config.sequence_len
        short_window = long_window // 2
        char_to_window = {"L": (long_window, 0), "S": (short_window, 0)}
        window_sizes = [char_to_window[pattern[i % len(pattern)]] for i in range(config.n_layer)]
        window_sizes[-1] = (long_window, 0)
        return window_sizes

    def estimate_flops(self):
        """FLOPs per token, forward and backward: 6 per matmul weight, plus attention's."""
        nparams = sum(p.numel() for p in self.parameters())
        value_embeds_numel = sum(ve.weight.numel() for ve in self.value_embeds.values())
        nparams_exclude = (self.transformer.wte.weight.numel() + value_embeds_numel +
                           self.resid_lambdas.numel() + self.x0_lambdas.numel())
        h = self.config.n_head
        q = self.config.n_embd // self.config.n_head
        t = self.config.sequence_len
        attn_flops = sum(12 * h * q * min(window, t) for window, _ in self.window_sizes)
        return 6 * (nparams - nparams_exclude) + attn_flops

    def num_scaling_params(self):
        wte = sum(p.numel() for p in self.transformer.wte.parameters())
        value_embeds = sum(p.numel() for p in self.value_embeds.parameters())
        lm_head = sum(p.numel() for p in self.lm_head.parameters())
        transformer_matrices = sum(p.numel() for p in self.transformer.h.parameters())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        total = wte + value_embeds + lm_head + transformer_matrices + scalars
        return {
            'wte': wte, 'value_embeds': value_embeds, 'lm_head': lm_head,
            'transformer_matrices': transformer_matrices, 'scalars': scalars, 'total': total,
        }

    def setup_optimizer(self, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02,
                        weight_decay=0.0, adam_betas=(0.8, 0.95), scalar_lr=0.5, compiled=False):
        model_dim = self.config.n_embd
        matrix_params = list(self.transformer.h.parameters())
        value_embeds_params = list(self.value_embeds.parameters())
        embedding_params = list(self.transformer.wte.parameters())
        lm_head_params = list(self.lm_head.parameters())
        resid_params = [self.resid_lambdas]
        x0_params = [self.x0_lambdas]
        assert len(list(self.parameters())) == (len(matrix_params) + len(embedding_params) +
            len(lm_head_params) + len(value_embeds_params) + len(resid_params) + len(x0_params))
        # Scale the AdamW LRs by 1/sqrt(model_dim): they were tuned at 768
        dmodel_lr_scale = (model_dim / 768) ** -0.5
        print(f"Scaling AdamW LRs by 1/sqrt({model_dim}/768) = {dmodel_lr_scale:.6f}")
        param_groups = [
            dict(kind='adamw', params=lm_head_params, lr=unembedding_lr * dmodel_lr_scale, betas=adam_betas, eps=1e-10, weight_decay=0.0),
            dict(kind='adamw', params=embedding_params, lr=embedding_lr * dmodel_lr_scale, betas=adam_betas, eps=1e-10, weight_decay=0.0),
            dict(kind='adamw', params=value_embeds_params, lr=embedding_lr * dmodel_lr_scale, betas=adam_betas, eps=1e-10, weight_decay=0.0),
            dict(kind='adamw', params=resid_params, lr=scalar_lr * 0.01, betas=adam_betas, eps=1e-10, weight_decay=0.0),
            dict(kind='adamw', params=x0_params, lr=scalar_lr, betas=(0.96, 0.95), eps=1e-10, weight_decay=0.0),
        ]
        for shape in sorted({p.shape for p in matrix_params}):  # one stacked Muon step per shape
            group_params = [p for p in matrix_params if p.shape == shape]
            param_groups.append(dict(
                kind='muon', params=group_params, lr=matrix_lr,
                momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=weight_decay,
            ))
        optimizer = MuonAdamW(param_groups, compiled=compiled)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return optimizer

    def forward(self, idx, targets=None):
        B, T = idx.size()
        assert T <= self.cos.size(1)
        cos_sin = self.cos[:, :T], self.sin[:, :T]

        x = self.transformer.wte(idx)
        x = norm(x)
        x0 = x  # the normed embedding, mixed back in before every block
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.window_sizes[i])
        return self.head(x, targets)

    def head(self, x, targets=None):
        x = norm(x)
        softcap = 15  # smoothly caps logits to [-15, 15]
        logits = self.lm_head(x)
        logits = logits.float()
        # softcap * tanh(logits / softcap), written with a sigmoid: the same function, faster on CPUs
        logits = 2 * softcap * torch.sigmoid(logits * (2 / softcap)) - softcap

        if targets is not None:
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits

# ---------------------------------------------------------------------------
# Optimizer (MuonAdamW, single device)
# ---------------------------------------------------------------------------

# Polar Express (Amsel et al., 2025): per-iteration quintic coefficients that push every singular
# value towards 1 faster than Newton-Schulz's fixed ones.
polar_express_coeffs = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def polar_express(g, ns_steps=5):
    """Approximately orthogonalise a (stack of) matrices in bf16: U V^T of the SVD U S V^T."""
    X = g.bfloat16()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)  # singular values now below 1
    if g.size(-2) > g.size(-1):  # tall: iterate on the small Gram matrix X^T X
        for a, b, c in polar_express_coeffs[:ns_steps]:
            A = X.mT @ X
            B = b * A + c * (A @ A)
            X = a * X + X @ B
    else:
        for a, b, c in polar_express_coeffs[:ns_steps]:
            A = X @ X.mT
            B = b * A + c * (A @ A)
            X = a * X + B @ X
    return X


def adamw_step_fused(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, wd):
    p.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    bias1 = 1 - beta1 ** step
    bias2 = 1 - beta2 ** step
    denom = (exp_avg_sq / bias2).sqrt() + eps
    step_size = lr / bias1
    p.add_(exp_avg / denom * -step_size)


def muon_step_fused(stacked_grads, stacked_params, momentum_buffer, second_momentum_buffer,
                    momentum, lr, wd, beta2, ns_steps, red_dim):
    # Nesterov momentum
    momentum_buffer.lerp_(stacked_grads, 1 - momentum)
    g = stacked_grads.lerp_(momentum_buffer, momentum)
    # Orthogonalise
    g = polar_express(g, ns_steps)
    # NorMuon variance reduction: normalise each row (tall) or column (wide) by the running RMS of
    # its update, then rescale so that the update's overall norm is unchanged
    v_mean = g.float().square().mean(dim=red_dim, keepdim=True)
    red_dim_size = g.size(red_dim)
    v_norm_sq = v_mean.sum(dim=(-2, -1), keepdim=True) * red_dim_size
    v_norm = v_norm_sq.sqrt()
    second_momentum_buffer.lerp_(v_mean.to(dtype=second_momentum_buffer.dtype), 1 - beta2)
    step_size = second_momentum_buffer.clamp_min(1e-10).rsqrt()
    scaled_sq_sum = (v_mean * red_dim_size) * step_size.float().square()
    v_norm_new = scaled_sq_sum.sum(dim=(-2, -1), keepdim=True).sqrt()
    final_scale = step_size * (v_norm / v_norm_new.clamp_min(1e-10))
    g = g * final_scale.to(g.dtype)
    # Cautious weight decay: decay only where the update and the parameter agree in sign
    mask = (g * stacked_params) >= 0
    stacked_params.sub_(lr * g + lr * wd * stacked_params * mask)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the matrices inside the blocks, AdamW for everything else."""

    def __init__(self, param_groups, compiled=False):
        super().__init__(param_groups, defaults={})
        self.compiled = compiled
        if compiled:
            self._adamw = torch.compile(adamw_step_fused, dynamic=False, fullgraph=True)
            self._muon = torch.compile(muon_step_fused, dynamic=False, fullgraph=True)
        else:
            self._adamw, self._muon = adamw_step_fused, muon_step_fused
        self._scalars = {}

    def _hp(self, name, value):
        """A hyperparameter for a step kernel. Compiled kernels take 0-d CPU tensors, since a new
        tensor value does not recompile where a new Python float would; eager ones take floats."""
        if not self.compiled:
            return value
        if name not in self._scalars:
            self._scalars[name] = torch.tensor(0.0, dtype=torch.float32, device="cpu")
        return self._scalars[name].fill_(value)

    def _step_adamw(self, group):
        for p in group['params']:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state['step'] = 0
                state['exp_avg'] = torch.zeros_like(p)
                state['exp_avg_sq'] = torch.zeros_like(p)
            state['step'] += 1
            self._adamw(p, p.grad, state['exp_avg'], state['exp_avg_sq'],
                        self._hp('adamw_step', state['step']), self._hp('adamw_lr', group['lr']),
                        self._hp('adamw_beta1', group['betas'][0]), self._hp('adamw_beta2', group['betas'][1]),
                        self._hp('adamw_eps', group['eps']), self._hp('adamw_wd', group['weight_decay']))

    def _step_muon(self, group):
        params = group['params']
        if not params:
            return
        p = params[0]
        state = self.state[p]
        num_params = len(params)
        shape, device, dtype = p.shape, p.device, p.dtype
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros(num_params, *shape, dtype=dtype, device=device)
        if "second_momentum_buffer" not in state:
            state_shape = (num_params, shape[-2], 1) if shape[-2] >= shape[-1] else (num_params, 1, shape[-1])
            state["second_momentum_buffer"] = torch.zeros(state_shape, dtype=dtype, device=device)
        red_dim = -1 if shape[-2] >= shape[-1] else -2
        stacked_grads = torch.stack([p.grad for p in params])
        stacked_params = torch.stack(params)
        lr = group["lr"] * max(1.0, shape[-2] / shape[-1]) ** 0.5  # tall matrices take larger steps
        self._muon(stacked_grads, stacked_params, state["momentum_buffer"], state["second_momentum_buffer"],
                   self._hp('muon_momentum', group["momentum"]), self._hp('muon_lr', lr),
                   self._hp('muon_wd', group["weight_decay"]), self._hp('muon_beta2', group["beta2"]),
                   group["ns_steps"], red_dim)
        torch._foreach_copy_(params, list(stacked_params.unbind(0)))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group['kind'] == 'adamw':
                self._step_adamw(group)
            elif group['kind'] == 'muon':
                self._step_muon(group)

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------

# Model architecture
ASPECT_RATIO = 64        # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128           # target head dimension for attention
# Four knobs depend on the setup (`full`: one big GPU; `small`: CPUs, Apple silicon, small GPUs;
# `smoke`: an install check). Each line holds every setup's value and picks the active one:
# edit the value for the setup you run under (the active setup is printed at the start of a run).
WINDOW_PATTERN = {"full": "SSSL", "small": "L", "smoke": "SSSL"}[SETUP]  # L=full, S=half context

# Optimization
TOTAL_BATCH_SIZE = {"full": 2**19, "small": 2**13, "smoke": 2**10}[SETUP]  # tokens per optimizer step
EMBEDDING_LR = 0.6        # learning rate for token embeddings (Adam)
UNEMBEDDING_LR = 0.004    # learning rate for lm_head (Adam)
MATRIX_LR = 0.04          # learning rate for matrix parameters (Muon)
SCALAR_LR = 0.5           # learning rate for per-layer scalars (Adam)
WEIGHT_DECAY = 0.2        # cautious weight decay for Muon
ADAM_BETAS = (0.8, 0.95)  # Adam beta1, beta2
WARMUP_RATIO = 0.0        # fraction of time budget for LR warmup
WARMDOWN_RATIO = 0.5      # fraction of time budget for LR warmdown
FINAL_LR_FRAC = 0.0       # final LR as fraction of initial

# Model size
DEPTH = {"full": 8, "small": 4, "smoke": 2}[SETUP]                    # number of transformer layers
DEVICE_BATCH_SIZE = {"full": 128, "small": 16, "smoke": 8}[SETUP]     # per-device batch size (lower if out of memory)

# ---------------------------------------------------------------------------
# Setup: tokenizer, model, optimizer, dataloader
# ---------------------------------------------------------------------------

tokenizer = Tokenizer.from_directory()  # first: without prepared data this exits with what to do
torch.manual_seed(42)  # seeds every device
vocab_size = tokenizer.get_vocab_size()
print(f"Setup: {SETUP} (sequence length {MAX_SEQ_LEN}, training budget {TIME_BUDGET}s, "
      f"{EVAL_TOKENS:,} evaluation tokens), vocab size {vocab_size:,}")


report_crashes(SETUP)  # a traceback on a fresh line, last in run.log; out of memory names the knob


def build_model_config(depth):
    base_dim = depth * ASPECT_RATIO
    model_dim = ((base_dim + HEAD_DIM - 1) // HEAD_DIM) * HEAD_DIM  # round up to whole heads
    num_heads = model_dim // HEAD_DIM
    return GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=vocab_size, n_layer=depth, n_head=num_heads,
                     n_kv_head=num_heads, n_embd=model_dim, window_pattern=WINDOW_PATTERN)


config = build_model_config(DEPTH)
print(f"Model config: {asdict(config)}")

with torch.device("meta"):  # no memory and no initialisation work until the real device
    model = GPT(config)
model.to_empty(device=device)
model.init_weights()

param_counts = model.num_scaling_params()
print("Parameter counts:")
for key, value in param_counts.items():
    print(f"  {key:24s}: {value:,}")
num_params = param_counts['total']
num_flops_per_token = model.estimate_flops()
print(f"Estimated FLOPs per token: {num_flops_per_token:e}")
peak_flops = peak_flops_of(device, USE_BF16)

tokens_per_fwdbwd = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
assert TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0, (
    f"TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE:,}) must be a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN "
    f"({DEVICE_BATCH_SIZE} * {MAX_SEQ_LEN} = {tokens_per_fwdbwd:,})")
grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_fwdbwd

optimizer = model.setup_optimizer(unembedding_lr=UNEMBEDDING_LR, embedding_lr=EMBEDDING_LR, scalar_lr=SCALAR_LR,
                                  adam_betas=ADAM_BETAS, matrix_lr=MATRIX_LR, weight_decay=WEIGHT_DECAY,
                                  compiled=COMPILE_OPTIMIZER)

build_block_masks(MAX_SEQ_LEN, model.window_sizes, device)  # FlexAttention's (CUDA), before torch.compile traces
if COMPILE and COMPILE_BY_BLOCK:
    for block in model.transformer.h:
        block.compile(dynamic=False)
    model.head = torch.compile(model.head, dynamic=False)
    # Grad mode stays on inside the judge's no_grad: its evaluation runs the block graphs compiled for
    # training (compiled for no_grad, an edited block would compile again: ~7 s on a CPU)
    model.forward = torch.enable_grad()(model.forward)
elif COMPILE:
    model = torch.compile(model, dynamic=False)

train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train", device=device)
x, y, epoch = next(train_loader)  # prefetch first batch

print(f"Time budget: {TIME_BUDGET}s")
print(f"Gradient accumulation steps: {grad_accum_steps}")

# Schedules (all based on progress = training_time / TIME_BUDGET)

def get_lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO if WARMUP_RATIO > 0 else 1.0
    elif progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    else:
        cooldown = (1.0 - progress) / WARMDOWN_RATIO
        return cooldown * 1.0 + (1 - cooldown) * FINAL_LR_FRAC


def get_muon_momentum(step):
    frac = min(step / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95


def get_weight_decay(progress):
    return WEIGHT_DECAY * (1 - progress)

# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

smooth_train_loss = 0
step = 0

while True:
    for micro_step in range(grad_accum_steps):
        with autocast_ctx:
            loss = model(x, y)
        train_loss = loss.detach()
        loss = loss / grad_accum_steps
        loss.backward()
        x, y, epoch = next(train_loader)  # the next batch loads while the device works

    # Progress and schedules
    progress = budget.progress()
    lrm = get_lr_multiplier(progress)
    muon_momentum = get_muon_momentum(step)
    muon_weight_decay = get_weight_decay(progress)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group['kind'] == 'muon':
            group["momentum"] = muon_momentum
            group["weight_decay"] = muon_weight_decay
    optimizer.step()
    model.zero_grad(set_to_none=True)

    train_loss_f = train_loss.item()

    # Fast fail: abort if the loss is exploding or NaN
    if math.isnan(train_loss_f) or train_loss_f > 100:
        print(f"\nFAIL: training loss {train_loss_f} at step {step}: the run diverged")
        sys.exit(1)

    # GC management: Python's collector causes ~500ms stalls, and the loop makes little garbage
    if step == 0:
        gc.collect()
        gc.freeze()
        gc.disable()
    elif (step + 1) % 5000 == 0:
        gc.collect()

    done = budget.over()  # the judge's clock: synchronizes the device, then reads the time
    dt = budget.step_seconds

    # Logging
    ema_beta = 0.9
    smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss_f
    debiased_smooth_loss = smooth_train_loss / (1 - ema_beta**(step + 1))
    tok_per_sec = int(TOTAL_BATCH_SIZE / dt)
    mfu = 100 * num_flops_per_token * TOTAL_BATCH_SIZE / dt / peak_flops
    remaining = max(0, TIME_BUDGET - budget.trained)

    print(f"\rstep {step:05d} ({100 * progress:.1f}%) | loss: {debiased_smooth_loss:.6f} | lrm: {lrm:.2f} | dt: {dt*1000:.0f}ms | tok/sec: {tok_per_sec:,} | mfu: {mfu:.1f}% | epoch: {epoch} | remaining: {remaining:.0f}s    ", end="", flush=True)

    step += 1
    if done:
        break

print()  # newline after the \r training log

total_tokens = step * TOTAL_BATCH_SIZE

# Final eval
print("Evaluating val_bpb...")
model.eval()
with autocast_ctx:
    val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)

# Final summary
t_end = time.time()
timed_steps = step - budget.untimed  # the steps in budget.trained
steady_state_mfu = 100 * num_flops_per_token * TOTAL_BATCH_SIZE * timed_steps / budget.trained / peak_flops if budget.trained > 0 else 0
peak_vram_mb = peak_memory_mb(device)

print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {budget.trained:.1f}")
print(f"total_seconds:    {t_end - t_start:.1f}")
print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
print(f"mfu_percent:      {steady_state_mfu:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
print(f"setup:            {SETUP}")
print(f"device:           {device_name(device)}")
print(f"training_wall_seconds: {budget.wall:.1f}")
