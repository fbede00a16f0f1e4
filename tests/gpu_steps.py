"""A few training steps of the `full` model, for tests/gpu_check.sh: the first step (compiling), then
the median step, tokens/s, MFU and peak memory, on the attention train.py picks or another one.

It runs train.py's own definitions and set-up (everything above its training loop) against a
prepared cache, with the sequence length and the setup's name set to `full`'s, so that the
hyperparameter block picks the reference model (DEPTH 8, DEVICE_BATCH_SIZE 128) at 2048 tokens a
row. Then it times steps as the loop does. On a CPU, --depth/--batch-size/--seq-len shrink it to a
dry run of the plumbing.

    python3 tests/gpu_steps.py [--attention default|sdpa|flex] [--train PATH] [--steps 10] [--warmup 3]
                               [--depth D --batch-size B --seq-len T]

--attention: `default` is what train.py picked (Flash Attention 3 where prepare fetched it);
`sdpa` runs every layer on SDPA, the sliding windows with a boolean mask (the fallback before
FlexAttention); `flex` is train.py's choice without FA3 (FlexAttention for sliding windows on
CUDA). --train: an edited copy of train.py, to time the first step after an edit.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_MARKER = "# Setup: tokenizer, model, optimizer, dataloader"
LOOP_MARKER = "# Training loop"

parser = argparse.ArgumentParser()
parser.add_argument("--attention", choices=["default", "sdpa", "flex"], default="default")
parser.add_argument("--train", default=os.path.join(ROOT, "train.py"), help="the train.py to run")
parser.add_argument("--steps", type=int, default=10, help="timed steps")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, warm-up)")
parser.add_argument("--depth", type=int, help="override DEPTH (dry runs)")
parser.add_argument("--batch-size", type=int, help="override DEVICE_BATCH_SIZE (dry runs)")
parser.add_argument("--seq-len", type=int, default=2048)
args = parser.parse_args()

sys.path.insert(0, ROOT)
from harness import hardware  # noqa: E402
import prepare  # noqa: E402
from harness import attention as harness_attention  # noqa: E402

prepare.SETUP, prepare.MAX_SEQ_LEN = "full", args.seq_len
source = open(args.train).read()
head, rest = source[:source.index(SETUP_MARKER)], source[source.index(SETUP_MARKER):source.index(LOOP_MARKER)]
train = {"__name__": "train_gpu_steps", "__file__": args.train}
exec(compile(head, "train.py", "exec"), train)  # device section, model, optimizer, hyperparameters
if args.attention == "sdpa":
    train["attention"] = harness_attention.sdpa_attention
    train["attention_note"] = "SDPA on every layer, a boolean mask on sliding-window ones"
elif args.attention == "flex":
    train["attention"] = harness_attention.pytorch_attention
    train["attention_note"] = harness_attention.pytorch_attention_kernels(train["device"])
if args.depth:
    train["DEPTH"] = args.depth
if args.batch_size:
    train["DEVICE_BATCH_SIZE"] = args.batch_size
    train["TOTAL_BATCH_SIZE"] = args.batch_size * args.seq_len * 2  # two micro-steps, as `full`'s 2**19 at 128 x 2048
exec(compile(rest, "train.py", "exec"), train)  # set-up: model, optimizer, compile, dataloader

model, optimizer, loader, device = train["model"], train["optimizer"], train["train_loader"], train["device"]
x, y, _ = train["x"], train["y"], train["epoch"]
times = []
for step in range(args.warmup + args.steps):
    hardware.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(train["grad_accum_steps"]):
        with train["autocast_ctx"]:
            loss = model(x, y)
        (loss / train["grad_accum_steps"]).backward()
        x, y, _ = next(loader)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    loss = loss.item()
    hardware.synchronize(device)
    times.append(time.perf_counter() - t0)
    print(f"step {step}: {times[-1] * 1000:.0f} ms, loss {loss:.3f}", flush=True)

dt = sorted(times[args.warmup:])[len(times[args.warmup:]) // 2]  # median
tokens = train["TOTAL_BATCH_SIZE"]
mfu = 100 * train["num_flops_per_token"] * tokens / dt / train["peak_flops"]
print(f"full_steps: depth {train['DEPTH']}, {train['DEVICE_BATCH_SIZE']} x {args.seq_len} tokens a micro-step, "
      f"{train['grad_accum_steps']} a step | first step {times[0]:.1f} s | median step {dt * 1000:.0f} ms | "
      f"{tokens / dt:,.0f} tok/s | MFU {mfu:.1f}% | peak memory {hardware.peak_memory_mb(device):,.0f} MB | "
      f"attention: {train['attention_note']}")
