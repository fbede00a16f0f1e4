"""harness/attention.py: the attention train.py calls, which kernel serves which layer where, and
Flash Attention 3 fetched at prepare time and loaded at run time without the network.

FlexAttention runs here eagerly, on the CPU: the same masking as the compiled CUDA kernel, in its
reference implementation. What only a GPU can show (the compiled kernel's speed, FA3 itself) is
tests/gpu_check.sh's."""
import math
import os
import shutil
import socket
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import ROOT, load_prepare

sys.path.insert(0, ROOT)
from harness import attention as att  # noqa: E402

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SHA = "0123456789abcdef0123456789abcdef01234567"  # a commit a kernel may be pinned to


@pytest.fixture(autouse=True)
def quiet_flex():
    with warnings.catch_warnings():  # eager FlexAttention says, once per process, that it is slow
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield


def qkv(B, T, n_head, n_kv_head, D=16, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(B, T, h, D, requires_grad=True) for h in (n_head, n_kv_head, n_kv_head)]


def reference_attention(q, k, v, window):
    """Naive softmax attention in FA3's layout (B, T, H, D): query i sees keys i - window .. i."""
    T, group = q.size(1), q.size(2) // k.size(2)
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = (j <= i) & (j >= i - window)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.size(-1))
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return torch.einsum("bhij,bjhd->bihd", weights, v)


def assert_same_attention(fn, ref, inputs, atol):
    """Outputs and the gradients of all three inputs agree."""
    out, expected = fn(*inputs), ref(*inputs)
    torch.testing.assert_close(out, expected, rtol=0, atol=atol)
    grad_out = torch.randn_like(out)
    for g, rg in zip(torch.autograd.grad(out, inputs, grad_out), torch.autograd.grad(expected, inputs, grad_out)):
        torch.testing.assert_close(g, rg, rtol=0, atol=10 * atol)


# ---------------------------------------------------------------------------
# The kernels against each other

def test_window_mask_has_flash_attention_3_semantics():
    # FA3's window_size=(w, 0): query i sees keys j with i - w <= j <= i (w + 1 keys, itself included)
    mask = att.sliding_window_mask(8, 3, CPU)
    expected = [[i - 3 <= j <= i for j in range(8)] for i in range(8)]
    assert mask.tolist() == expected


@pytest.mark.parametrize("n_head, n_kv_head, window", [
    (4, 4, 16),  # L: the full sequence (the is_causal path)
    (4, 4, 8),   # S: half the sequence (the explicit mask)
    (4, 2, 8),   # grouped-query attention: two query heads per key/value head
    (4, 1, 3),   # one key/value head, a short window
])
def test_sdpa_attention_matches_naive_softmax(n_head, n_kv_head, window):
    inputs = qkv(2, 16, n_head, n_kv_head, D=8)
    assert_same_attention(lambda q, k, v: att.sdpa_attention(q, k, v, (window, 0)),
                          lambda q, k, v: reference_attention(q, k, v, window), inputs, atol=1e-5)


@pytest.mark.parametrize("n_head, n_kv_head, T, window", [
    (4, 4, 256, 128),  # S at a training length: half the row, two of FlexAttention's 128-token blocks
    (4, 2, 256, 128),  # grouped-query attention
    (4, 1, 300, 17),   # one key/value head; a row that ends inside a block, a window inside one
    (2, 2, 200, 0),    # each query sees only itself
    (4, 2, 100, 64),   # the evaluation's shorter rows, with a window sized for training's (128)
    (4, 4, 129, 127),  # a window one short of the whole row: still a sliding window
])
def test_flex_attention_matches_sdpa_with_the_boolean_mask(n_head, n_kv_head, T, window):
    inputs = qkv(2, T, n_head, n_kv_head)
    assert_same_attention(lambda q, k, v: att.flex_window_attention(q, k, v, (window, 0)),
                          lambda q, k, v: att.sdpa_attention(q, k, v, (window, 0)), inputs, atol=2e-6)


def test_block_masks_are_built_once_per_length_and_window():
    att._block_masks.clear()
    first = att.block_mask(256, 128, CPU)
    assert att.block_mask(256, 128, CPU) is first  # kept, not built again
    assert att.block_mask(100, 128, CPU) is not first and att.block_mask(256, 64, CPU) is not first
    assert len(att._block_masks) == 3
    att.build_block_masks(512, [(64, 0), (512, 0)], CPU)  # only CUDA runs FlexAttention: nothing to build
    assert len(att._block_masks) == 3


@pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile on the CPU needs g++")
def test_compiled_flex_attention_reads_a_prebuilt_mask_and_builds_a_missing_one():
    # As train.py on CUDA: the mask built before torch.compile first traces is read from the cache,
    # and the graph stays whole. A length nobody built ahead still gets its mask, at a graph break.
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    att._block_masks.clear()
    compiled = torch.compile(lambda q, k, v: att.flex_window_attention(q, k, v, (64, 0)), dynamic=False)
    try:
        att.block_mask(256, 64, CPU)
        for T, breaks in ((256, False), (192, True)):
            q, k, v = (t.detach() for t in qkv(1, T, 2, 1))
            torch.testing.assert_close(compiled(q, k, v), att.sdpa_attention(q, k, v, (64, 0)), rtol=0, atol=2e-6)
            assert bool(counters["graph_break"]) is breaks, dict(counters["graph_break"])
        assert len(att._block_masks) == 2
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------
# Which kernel serves which layer

@pytest.mark.parametrize("device_type, window, T, compiling, flex", [
    ("cuda", 1024, 2048, True, True),    # S on a GPU, compiled: FlexAttention
    ("cuda", 2048, 2048, True, False),   # L: SDPA's causal kernel is faster there
    ("cuda", 2047, 2048, True, False),   # a window that reaches the first token is plain causal too
    ("cuda", 2046, 2048, True, True),    # one key short of it is not
    ("cuda", 1024, 2048, False, False),  # eager: FlexAttention would hold every score
    ("cpu", 256, 512, True, False),      # the CPU and MPS keep SDPA with the boolean mask
    ("mps", 256, 512, False, False),
])
def test_which_layers_run_on_flex_attention(device_type, window, T, compiling, flex):
    assert att.uses_flex(device_type, window, T, compiling) is flex


@pytest.mark.parametrize("window", [16, 8, 3])
def test_on_the_cpu_attention_is_sdpa(window):
    inputs = qkv(2, 16, 4, 2)
    assert torch.equal(att.pytorch_attention(*inputs, (window, 0)), att.sdpa_attention(*inputs, (window, 0)))


def test_the_attention_line_names_each_kind_of_layer_kernel(monkeypatch, tmp_path):
    load_prepare(monkeypatch, tmp_path)  # the kernels.lock of an empty cache
    fn, note = att.load_attention(CPU)
    assert fn is att.pytorch_attention and "\n" not in note
    assert note.startswith("SDPA with a boolean mask on sliding-window layers, SDPA's causal kernel on full ones")
    assert "Flash Attention 3 needs a CUDA GPU, this is cpu" in note
    fn, note = att.load_attention(CUDA)  # here no GPU; on a GPU no kernel was fetched into this cache
    assert fn is att.pytorch_attention and "\n" not in note
    assert note.startswith("FlexAttention on sliding-window layers, SDPA's causal kernel on full ones (Flash Attention 3 ")


# ---------------------------------------------------------------------------
# Flash Attention 3: fetched at prepare time, loaded offline

@pytest.fixture
def connections(monkeypatch):
    """No network: every connection attempt is refused, and recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise ConnectionRefusedError("no network in the tests")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def hopper(monkeypatch):
    """This machine as a Hopper GPU, as far as picking FA3's repository goes (nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    return att.fa3_repo((9, 0))


@pytest.fixture
def kernels_cache(monkeypatch, tmp_path):
    """An empty `kernels` cache in a temporary folder, and a function that puts a fake build of a
    repository at a commit into it, laid out as the hub's snapshots are."""
    kernels = pytest.importorskip("kernels.utils")  # a GPU machine may have torch without it
    cache = tmp_path / "hub"
    monkeypatch.setattr(kernels, "CACHE_DIR", str(cache))

    def put(repo, sha):
        build = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / sha / "build" / "torch-universal"
        build.mkdir(parents=True)
        (build / "__init__.py").write_text("flash_attn_interface = 'the pinned build'\n")
    return put


def test_fa3_repository_by_gpu():
    assert att.fa3_repo((9, 0)) == "varunneal/flash-attention-3"
    assert att.fa3_repo((8, 0)) == att.fa3_repo((10, 0)) == "kernels-community/flash-attn3"


def test_a_pin_is_recorded_and_read_back_beside_other_gpus_pins(monkeypatch, tmp_path):
    load_prepare(monkeypatch, tmp_path)
    lock = att.kernels_lock_file()
    assert os.path.dirname(lock) == str(tmp_path)  # beside setup.json
    assert att.read_lock(lock) == {}
    att.record_pin(lock, "kernels-community/flash-attn3", "a" * 40)
    att.record_pin(lock, "varunneal/flash-attention-3", SHA)
    att.record_pin(lock, "varunneal/flash-attention-3", "b" * 40)  # pinned anew
    assert att.read_lock(lock) == {"kernels-community/flash-attn3": "a" * 40, "varunneal/flash-attention-3": "b" * 40}
    open(lock, "w").write("not json")
    assert att.read_lock(lock) == {}


def test_prepare_without_cuda_says_in_one_line_that_fa3_was_not_fetched(tmp_path):
    lock = tmp_path / "kernels.lock"
    line = att.fetch_flash_attention_3(CPU, str(lock))
    assert line == "Flash Attention 3: not fetched (it needs a CUDA GPU, this is cpu)"
    assert not lock.exists()


def test_prepare_on_a_gpu_without_network_says_why_and_pins_nothing(tmp_path, connections, hopper, kernels_cache):
    lock = tmp_path / "kernels.lock"
    line = att.fetch_flash_attention_3(CUDA, str(lock))  # refused, or HF_HUB_OFFLINE (gpu_check sets it)
    assert line.startswith("Flash Attention 3: not fetched ("), line
    assert line.endswith("; train.py will use PyTorch's attention") and "\n" not in line
    assert not lock.exists()


def test_a_pinned_build_in_the_cache_is_checked_and_loaded_without_the_network(tmp_path, connections, hopper, kernels_cache):
    lock = str(tmp_path / "kernels.lock")
    att.record_pin(lock, hopper, SHA)  # as a first prepare, with a network, left it
    kernels_cache(hopper, SHA)
    line = att.fetch_flash_attention_3(CUDA, lock)  # a second prepare, offline: the build is there
    assert line.startswith(f"Flash Attention 3: {hopper}@{SHA[:12]}, in the kernels cache"), line
    assert att.read_lock(lock) == {hopper: SHA}
    assert att.load_pinned_kernel(hopper, lock).flash_attn_interface == "the pinned build"
    assert connections == []  # not even tried


def test_a_pin_whose_build_left_the_cache_is_reported_not_fetched(tmp_path, connections, hopper, kernels_cache):
    lock = str(tmp_path / "kernels.lock")
    att.record_pin(lock, hopper, SHA)
    assert att.fetch_flash_attention_3(CUDA, lock).startswith("Flash Attention 3: not fetched (")
    connections.clear()
    with pytest.raises(FileNotFoundError):  # load_kernel looks on disk only
        att.load_pinned_kernel(hopper, lock)
    fa3, note = att.load_flash_attention_3(CUDA, lock)
    assert fa3 is None and note.startswith("not in the kernels cache (") and note.endswith("`uv run prepare.py` fetches it again")
    assert connections == []


def test_without_a_pin_train_py_does_not_look_for_fa3(tmp_path, connections, hopper):
    fa3, note = att.load_flash_attention_3(CUDA, str(tmp_path / "kernels.lock"))
    assert fa3 is None and note.startswith("not fetched: `uv run prepare.py`") and hopper in note
    assert connections == []
    assert att.load_flash_attention_3(CPU) == (None, "needs a CUDA GPU, this is cpu")


def test_prepare_prints_the_kernel_line(monkeypatch, tmp_path, corpus, capsys):
    load_prepare(monkeypatch, tmp_path / "cache").prepare(None, corpus, 2, 4, "smoke")
    lines = capsys.readouterr().out.splitlines()
    kernel = [line for line in lines if line.startswith("Flash Attention 3: ")]
    assert len(kernel) == 1 and lines[-1].startswith("ready: ")
    if not torch.cuda.is_available():
        assert kernel == ["Flash Attention 3: not fetched (it needs a CUDA GPU, this is cpu)"]


def test_old_train_py_commits_still_find_the_fa3_loader_where_they_import_it(tmp_path):
    # `analysis.py --confirm` runs a night's old commits with this checkout's judge and harness/, and
    # harness/compat_machinery.py as their machinery.py; their train.py imports load_flash_attention_3
    # from prepare or from machinery
    code = ("import torch; from prepare import load_flash_attention_3 as p; "
            "from harness.compat_machinery import load_flash_attention_3 as m; "
            "from harness.attention import load_flash_attention_3 as h; assert p is m is h; print(p(torch.device('cpu'))[1])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, AUTORESEARCH_CACHE=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "needs a CUDA GPU, this is cpu"
