"""
Attention for train.py: one function with Flash Attention 3's signature and layout,

    y = attention(q, k, v, window_size)

where q, k, v are (B, T, heads, head_dim), k and v may have fewer heads than q (grouped-query
attention), and query i sees keys i - window_size[0] .. i. Behind it, the fastest kernel this
machine has:

    machine                          sliding-window layers ("S")     full-window layers ("L")
    CUDA, Flash Attention 3 loads    Flash Attention 3               Flash Attention 3
    CUDA without it                  FlexAttention (compiled)        SDPA, is_causal
    CPU, Apple's MPS                 SDPA with a boolean mask        SDPA, is_causal

Flash Attention 3 comes from the Hugging Face kernel hub through the `kernels` package. prepare.py
fetches this GPU's build once, into the cache `kernels` keeps (~/.cache/huggingface/hub, or
KERNELS_CACHE), pinned to the commit the hub had then and recorded in our own cache, beside
setup.json, as a kernels.lock. train.py loads exactly that build from disk and never asks the
network: a hub outage or a compute node without internet cannot end a night, and the commit a
result ran on is in its log.
"""
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# PyTorch's kernels: SDPA everywhere, FlexAttention for sliding windows on CUDA


def sliding_window_mask(T, window, device):
    """(T, T) boolean mask, True where query i may attend to key j: i - window <= j <= i. These are
    exactly the keys Flash Attention 3 lets a query see with window_size=(window, 0). Built on each
    call: a compiled model builds it in-graph, cheaply (a cache here would make it recompile)."""
    pos = torch.arange(T, device=device)
    offset = pos[:, None] - pos[None, :]  # query index minus key index
    return (offset >= 0) & (offset <= window)


def sdpa_attention(q, k, v, window_size):
    """Causal sliding-window attention with PyTorch's SDPA, in FA3's layout and signature."""
    T, window = q.size(1), window_size[0]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if k.size(1) != q.size(1):  # each key/value head serves a group of query heads
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    if window >= T - 1:  # the window reaches the first token: plain causal, which has faster kernels
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(T, window, q.device))
    return y.transpose(1, 2)


def flex_window_attention(q, k, v, window_size):
    """Causal sliding-window attention with FlexAttention, in FA3's layout and signature: only the
    blocks of keys that meet the window are computed, where SDPA with a mask computes them all
    (on an H200, fwd + bwd at the full config's shapes: 5.7 ms against 13.3). Fast only inside
    torch.compile; run eagerly it is a reference implementation that holds every score."""
    from torch.nn.attention.flex_attention import flex_attention  # here: importing it imports the compiler, ~2 s
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mask = block_mask(q.size(2), window_size[0], q.device)
    y = flex_attention(q, k, v, block_mask=mask, enable_gqa=k.size(1) != q.size(1))
    return y.transpose(1, 2)


def uses_flex(device_type, window, T, compiling):
    """Whether a layer runs on FlexAttention rather than SDPA: on CUDA, compiled (where it becomes a
    fused kernel), for a window shorter than the row. A window that reaches the first token is
    plain causal attention, where SDPA's is_causal kernel is faster (H200: 4.9 ms against 6.6)."""
    return device_type == "cuda" and compiling and window < T - 1


def pytorch_attention(q, k, v, window_size):
    """Attention without Flash Attention 3: FlexAttention or SDPA, as uses_flex decides."""
    if uses_flex(q.device.type, window_size[0], q.size(1), torch.compiler.is_compiling()):
        return flex_window_attention(q, k, v, window_size)
    return sdpa_attention(q, k, v, window_size)


# FlexAttention's block masks, one per (row length, window, device). Built outside the compiled
# graph and kept: read from here while torch.compile traces, a mask is an input to the graph.
_block_masks = {}


def block_mask(T, window, device):
    key = (T, window, device.type, device.index)
    if key not in _block_masks:
        # met first while tracing (a length nobody built ahead): built eagerly, at a graph break's cost
        _block_masks[key] = torch.compiler.disable(build_block_mask)(T, window, device)
    return _block_masks[key]


def build_block_mask(T, window, device):
    from torch.nn.attention.flex_attention import create_block_mask

    def in_window(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx <= window)
    return create_block_mask(in_window, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


def build_block_masks(T, window_sizes, device):
    """Build, before torch.compile first traces the model, the block masks its sliding-window
    layers will ask for at row length T: one missing then would split the compiled graph."""
    if device.type != "cuda":
        return
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as the model's tensors name it
    for window, _ in window_sizes:
        if window < T - 1:
            block_mask(T, window, device)


# ---------------------------------------------------------------------------
# Flash Attention 3: fetched at prepare time, pinned, loaded from disk at run time


def fa3_repo(capability):
    """The hub repository of FA3 builds for a GPU of this compute capability: varunneal's for
    Hopper (9.0), which is faster there, kernels-community's for the others."""
    return "varunneal/flash-attention-3" if tuple(capability) == (9, 0) else "kernels-community/flash-attn3"


def kernels_lock_file():
    from harness.cache import CACHE_DIR  # at each call: tests move the cache and import it afresh
    return os.path.join(CACHE_DIR, "kernels.lock")


def read_lock(path):
    """{repo: pinned commit} from a kernels.lock; {} where there is none or it is unreadable."""
    try:
        with open(path) as f:
            return {entry["repo_id"]: entry["sha"] for entry in json.load(f)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def record_pin(path, repo, sha):
    """Pin repo to commit sha in path, in the format of `kernels lock` (load_kernel reads it), keeping
    the pins of other GPUs' repositories: one cache may serve a Hopper and an Ampere machine."""
    from harness.cache import write_json_atomically
    pins = {**read_lock(path), repo: sha}
    write_json_atomically(path, [{"repo_id": r, "sha": s, "variants": {}} for r, s in sorted(pins.items())])


def one_line(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:150]}"


def fetch_flash_attention_3(device, lock_file=None):
    """At prepare time: this GPU's build of FA3 into the `kernels` cache, pinned to the commit the
    hub's main branch has now (or to the one pinned already: a re-run only checks the build is
    there, offline too). Never fails a prepare: returns one line saying what it did, or why not."""
    lock_file = lock_file or kernels_lock_file()
    if device.type != "cuda":
        return f"Flash Attention 3: not fetched (it needs a CUDA GPU, this is {device.type})"
    try:
        from kernels import install_kernel
        repo = fa3_repo(torch.cuda.get_device_capability(device))
        sha = read_lock(lock_file).get(repo)
        if sha is None:
            from huggingface_hub import HfApi
            sha = HfApi().repo_info(repo, revision="main").sha
        try:
            install_kernel(repo, sha, local_files_only=True)  # in the cache already: no network
        except FileNotFoundError:
            install_kernel(repo, sha)  # only the build for this machine's torch and CUDA
    except Exception as e:  # no network, no build for this torch, ...: train.py uses PyTorch's kernels
        return f"Flash Attention 3: not fetched ({one_line(e)}); train.py will use PyTorch's attention"
    record_pin(lock_file, repo, sha)
    return f"Flash Attention 3: {repo}@{sha[:12]}, in the kernels cache, pinned in {lock_file}"


def load_pinned_kernel(repo, lock_file):
    """repo's module at the commit lock_file pins, from the `kernels` cache: load_kernel looks only
    on disk (it downloads nothing), so a run never waits on the network."""
    from kernels import load_kernel
    return load_kernel(repo, lockfile=Path(lock_file))


def load_flash_attention_3(device, lock_file=None):
    """FA3 as prepare.py fetched it, and a note: its build (repo@commit), or why there is none."""
    if device.type != "cuda":
        return None, f"needs a CUDA GPU, this is {device.type}"
    lock_file = lock_file or kernels_lock_file()
    try:
        repo = fa3_repo(torch.cuda.get_device_capability(device))
        sha = read_lock(lock_file).get(repo)
        if sha is None:
            return None, f"not fetched: `uv run prepare.py` on this GPU, with a network, fetches {repo} once"
        fa3 = load_pinned_kernel(repo, lock_file).flash_attn_interface
        q = torch.zeros(1, 8, 1, 64, device=device, dtype=torch.bfloat16)
        fa3.flash_attn_func(q, q, q, causal=True, window_size=(4, 0))  # loading is not running: try it once
        return fa3, f"{repo}@{sha[:12]}"
    except FileNotFoundError as e:  # pinned, but not in the kernels cache (cleared, or another torch)
        return None, f"not in the kernels cache ({one_line(e)}): `uv run prepare.py` fetches it again"
    except Exception as e:  # no build for this GPU, a kernel that fails its trial, ...: none fatal
        return None, f"unavailable: {one_line(e)}"


def fa3_attention(fa3):
    """attention() on Flash Attention 3's kernel, every layer."""
    def attention(q, k, v, window_size):
        y = fa3.flash_attn_func(q, k, v, causal=True, window_size=window_size)
        return y[0] if isinstance(y, tuple) else y  # some builds also return the log-sum-exp
    return attention


def load_attention(device):
    """train.py's attention function for this device, and the line that says which kernel each kind
    of layer runs on (and, for FA3, which build): a result's log records it."""
    fa3, note = load_flash_attention_3(device)
    if fa3 is not None:
        return fa3_attention(fa3), f"Flash Attention 3 on every layer ({note})"
    return pytorch_attention, f"{pytorch_attention_kernels(device)} (Flash Attention 3 {note})"


def pytorch_attention_kernels(device):
    """What pytorch_attention runs each kind of layer on, on this device (compiled, on CUDA)."""
    windows = "FlexAttention" if device.type == "cuda" else "SDPA with a boolean mask"
    return f"{windows} on sliding-window layers, SDPA's causal kernel on full ones"
