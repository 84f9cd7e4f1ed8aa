#!/usr/bin/env python3
"""Benchmark tfkd's full-sum RNN-T loss (forward + backward) against baselines, on CPU.

Columns, all measured in this run on this machine (medians over `--repeats` after a warm-up call
that also compiles):
- `tfkd`: `tfkd.losses.rnnt_loss` on given logits, gradient w.r.t. the logits;
- `textbook`: a plain TF implementation kept in this file: log_softmax -> gather -> alpha by
  `tf.while_loop` over anti-diagonals, gradient by autodiff;
- `floor`: memory-traffic floor, one full read of the logits plus one read and one write
  (NumPy `sum` + `multiply(out=)` into a preallocated buffer, or the same in XLA, whichever is
  faster);
- `plain+joint` / `chunked`: the loss from encoder and prediction outputs through a joint,
  gradient w.r.t. both: `rnnt_loss(joint(enc, pred))` by autodiff through the joint, and
  `rnnt_loss_from_joint` (never holds the `[B, T, U+1, V]` tensor). The joint here is additive,
  `enc[:, :, None, :] + pred[:, None, :, :]` with D = V, so that its cost does not hide the loss's;
- `torchaudio`: `torchaudio.functional.rnnt_loss`, only if torch and torchaudio import.

Peak extra memory, as a multiple of the logits size: each implementation runs in a fresh child
process with TF's default (malloc) allocator, which returns large freed blocks to the OS. After a
warm-up step the child records its resident set (VmRSS), resets the kernel's high-water mark
(`echo 5 > /proc/self/clear_refs`), runs one step and reads VmHWM. Extra = VmHWM - VmRSS before the
step, so it counts everything the step allocates (gradient, temporaries), but not the inputs. For
the plain paths the gradient w.r.t. the logits alone is 1.0x.

Timing runs with `TF_CPU_ALLOCATOR_USE_BFC=true` unless `--allocator malloc`: with malloc every
fresh full-size buffer is returned to the OS after use and page-faulted in again on the next step,
which on some VMs costs more than the computation itself. A training loop on CPU should set it too.

Usage:
  python tools/bench_rnnt_loss.py                      # the three issue shapes
  python tools/bench_rnnt_loss.py --quick              # small shapes, fewer repeats
  python tools/bench_rnnt_loss.py --shapes 4,300,80,1024 --repeats 7 --threads 2
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import cli  # noqa: E402  (after the path; no TensorFlow)

DEFAULT_SHAPES = ["8,150,40,256", "4,300,80,1024", "16,100,30,128"]
QUICK_SHAPES = ["16,100,30,128", "8,150,40,256"]
IMPLS = ["tfkd", "textbook", "plain+joint", "chunked", "torchaudio"]


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", help="B,T,U+1,V (default: the three issue shapes)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per column (default 5)")
    p.add_argument("--threads", type=int, default=2, help="TF intra-op threads (default 2)")
    p.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--allocator", choices=["bfc", "malloc"], default="bfc")
    p.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS, help="columns to run")
    p.add_argument("--time-chunk", type=int, default=None, help="chunked path's frames per chunk")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.shapes is None:
        args.shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    args.shapes = [_shape(s) for s in args.shapes]
    cli.check_at_least("--repeats", args.repeats, 1)
    cli.check_at_least("--threads", args.threads, 1)
    cli.check_at_least("--time-chunk", args.time_chunk, 1)
    return args


def _shape(text):
    """`B,T,U+1,V` as four ints >= 1; UsageError otherwise."""
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise cli.UsageError(f"--shapes {text}: expected B,T,U+1,V, four integers >= 1")
    return shape


def _setup_tf(threads):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


# ----------------------------------------------------------------------------------------------
# The textbook baseline: everything by autodiff.


def textbook_rnnt_loss(tf, logits, labels, logit_lengths, label_lengths, blank=0):
    """-log P(y|x) [B]: log_softmax, gather, alpha over anti-diagonals in a tf.while_loop."""
    neg = -1e30
    batch, frames, nodes_u = tf.shape(logits)[0], tf.shape(logits)[1], tf.shape(logits)[2]
    lp = tf.nn.log_softmax(logits)
    nxt = tf.pad(labels, [[0, 0], [0, 1]], constant_values=blank)
    nxt = tf.where(tf.range(nodes_u)[None] < label_lengths[:, None], nxt, blank)
    idx = tf.broadcast_to(nxt[:, None, :, None], [batch, frames, nodes_u, 1])
    label_lp = tf.gather(lp, idx, batch_dims=3)[..., 0]
    blank_lp = lp[..., blank]
    t = tf.range(frames)[None, :, None]
    u = tf.range(nodes_u)[None, None, :]
    in_t = t < logit_lengths[:, None, None]
    blank_lp = tf.where(in_t & (u <= label_lengths[:, None, None]), blank_lp, neg)
    label_lp = tf.where(in_t & (u < label_lengths[:, None, None]), label_lp, neg)

    def diagonals(x):  # [B, T, U+1] -> [T+U, B, U+1], row u shifted right by u
        xt = tf.pad(tf.transpose(x, [0, 2, 1]), [[0, 0], [0, 0], [0, nodes_u]], constant_values=neg)
        n = frames + nodes_u - 1
        flat = tf.reshape(xt, [batch, -1])[:, : nodes_u * n]
        return tf.transpose(tf.reshape(flat, [batch, nodes_u, n]), [2, 0, 1])

    blank_d, label_d = diagonals(blank_lp), diagonals(label_lp)
    num = frames + nodes_u - 1
    alpha0 = tf.where(tf.range(nodes_u)[None] == 0, 0.0, neg) + tf.zeros([batch, 1])
    ta = tf.TensorArray(tf.float32, size=num + 1).write(0, alpha0)

    def body(n, alpha, ta):
        stay = alpha + blank_d[n]
        move = tf.concat([tf.fill([batch, 1], neg), (alpha + label_d[n])[:, :-1]], 1)
        alpha = tf.maximum(tf.reduce_logsumexp(tf.stack([stay, move]), 0), neg)
        return n + 1, alpha, ta.write(n + 1, alpha)

    _, _, ta = tf.while_loop(lambda n, *_: n < num, body, (0, alpha0, ta))
    alphas = ta.stack()
    idx = tf.stack([logit_lengths + label_lengths, tf.range(batch), label_lengths], 1)
    return -tf.gather_nd(alphas, idx)


# ----------------------------------------------------------------------------------------------
# Steps: each returns a callable that runs forward + backward once and returns a small tensor.


def _inputs(tf, np, shape, seed=0):
    batch, frames, nodes_u, vocab = shape
    rng = np.random.default_rng(seed)
    labels = tf.constant(rng.integers(1, vocab, size=(batch, nodes_u - 1)), tf.int32)
    logit_lengths = tf.fill([batch], frames)
    label_lengths = tf.fill([batch], nodes_u - 1)
    return labels, logit_lengths, label_lengths


def make_step(tf, np, impl, shape, time_chunk=None):
    batch, frames, nodes_u, vocab = shape
    labels, logit_lengths, label_lengths = _inputs(tf, np, shape)
    rng = np.random.default_rng(1)
    if impl in ("tfkd", "textbook"):
        logits = tf.constant(rng.normal(size=shape).astype(np.float32))
        if impl == "tfkd":
            from tfkd.losses import rnnt_loss

            loss_fn = rnnt_loss
        else:

            def loss_fn(z, y, t, u):
                return textbook_rnnt_loss(tf, z, y, t, u)

        @tf.function
        def step(z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = tf.reduce_sum(loss_fn(z, labels, logit_lengths, label_lengths))
            return loss, tape.gradient(loss, z)

        return lambda: step(logits), logits
    if impl in ("plain+joint", "chunked"):
        from tfkd.losses import rnnt_loss, rnnt_loss_from_joint

        enc = tf.constant(rng.normal(size=(batch, frames, vocab)).astype(np.float32))
        pred = tf.constant(rng.normal(size=(batch, nodes_u, vocab)).astype(np.float32))

        def joint(e, p):
            return e[:, :, None, :] + p[:, None, :, :]

        kwargs = {} if time_chunk is None else {"time_chunk": time_chunk}

        @tf.function
        def step(e, p):
            with tf.GradientTape() as tape:
                tape.watch([e, p])
                if impl == "chunked":
                    losses = rnnt_loss_from_joint(
                        e, p, joint, labels, logit_lengths, label_lengths, **kwargs
                    )
                else:
                    losses = rnnt_loss(joint(e, p), labels, logit_lengths, label_lengths)
                loss = tf.reduce_sum(losses)
            return loss, tape.gradient(loss, [e, p])

        return lambda: step(enc, pred), None
    if impl == "torchaudio":
        import torch
        import torchaudio.functional as taf

        torch.set_num_threads(1)
        logits = torch.tensor(rng.normal(size=shape).astype(np.float32), requires_grad=True)
        t_labels = torch.tensor(labels.numpy())
        t_len = torch.tensor(logit_lengths.numpy())
        u_len = torch.tensor(label_lengths.numpy())

        def step():
            logits.grad = None
            loss = taf.rnnt_loss(logits, t_labels, t_len, u_len, blank=0, reduction="sum")
            loss.backward()
            return loss.detach()

        return step, None
    raise ValueError(impl)


def check_textbook(tf, np):
    """The baseline must compute the same loss and gradient as tfkd, or the ratios mean nothing."""
    from tfkd.losses import rnnt_loss

    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(size=(3, 6, 4, 9)).astype(np.float32))
    labels = tf.constant(rng.integers(1, 9, size=(3, 3)), tf.int32)
    logit_lengths, label_lengths = tf.constant([6, 4, 2]), tf.constant([3, 1, 0])
    results = []
    for fn in (rnnt_loss, lambda *a: textbook_rnnt_loss(tf, *a)):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = fn(logits, labels, logit_lengths, label_lengths)
        results.append((loss.numpy(), tape.gradient(loss, logits).numpy()))
    (want, want_grad), (got, got_grad) = results
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)


def _time(fn, repeats):
    fn()  # warm-up and compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _ = out[0].numpy() if isinstance(out, tuple) else out
        times.append(time.perf_counter() - t0)
        del out
    times.sort()
    return times[len(times) // 2] * 1e3


def floor_ms(tf, np, shape, repeats):
    """One read plus one read-and-write of a logits-sized f32 buffer: NumPy and XLA, the faster."""
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    out = np.empty_like(x)
    out.fill(0.0)

    def numpy_step():
        x.sum()
        np.multiply(x, 1.0, out=out)

    best = _time(lambda: numpy_step() or 0, repeats)
    xt = tf.constant(x)
    read = tf.function(jit_compile=True)(lambda z: tf.reduce_sum(z))
    write = tf.function(jit_compile=True)(lambda z: z * 1.0)

    def tf_step():
        read(xt).numpy()
        return write(xt)[0, 0, 0, :1]

    return min(best, _time(tf_step, repeats))


def peak_extra_child(impl, shape, threads, time_chunk):
    """Runs in a child process: prints the peak extra resident memory of one step, in bytes."""
    tf = _setup_tf(threads)
    import numpy as np

    step, _ = make_step(tf, np, impl, shape, time_chunk)
    step()
    step()

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = step()
    _ = out[0].numpy() if isinstance(out, tuple) else out
    print(json.dumps({"extra": status("VmHWM:") - before}))


def peak_extra(impl, shape, threads, time_chunk):
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="false", TF_CPP_MIN_LOG_LEVEL="3")
    spec = ",".join(map(str, (impl, *shape, threads, time_chunk or 0)))
    res = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_child", spec],
        capture_output=True,
        text=True,
        env=env,
    )
    if res.returncode != 0:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["extra"]


def _available(impl):
    if impl != "torchaudio":
        return True
    try:
        import torch  # noqa: F401
        import torchaudio  # noqa: F401
    except Exception:
        return False
    return True


def main(argv=None):
    args = _parse_args(argv)
    if args._child:
        impl, *rest = args._child.split(",")
        *shape, threads, chunk = map(int, rest)
        peak_extra_child(impl, tuple(shape), threads, chunk or None)
        return
    if args.allocator == "bfc":
        os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    tf = _setup_tf(args.threads)
    import numpy as np

    impls = [i for i in IMPLS if i in args.impls and _available(i)]
    check_textbook(tf, np)
    print(
        f"# tfkd RNN-T loss benchmark: forward + backward, float32, {args.threads} intra-op "
        f"threads, allocator={args.allocator}, medians of {args.repeats}; "
        f"TF {tf.__version__}, {os.cpu_count()} CPUs\n"
    )
    rows = []
    for shape in args.shapes:
        mb = np.prod(shape) * 4 / 2**20
        times = {"floor": floor_ms(tf, np, shape, args.repeats)}
        for impl in impls:
            step, _ = make_step(tf, np, impl, shape, args.time_chunk)
            times[impl] = _time(step, args.repeats)
            del step
        mem = {}
        if not args.no_memory:
            for impl in impls:
                extra = peak_extra(impl, shape, args.threads, args.time_chunk)
                mem[impl] = None if extra is None else extra / (np.prod(shape) * 4)
        rows.append((shape, mb, times, mem))

    def fmt_mem(m):
        return "—" if m is None else f"{m:.2f}×"

    head = "| B,T,U+1,V (logits MB) | " + " | ".join(["floor"] + impls) + " |"
    print("## Time (ms, median)\n")
    print(head)
    print("|" + "---|" * (len(impls) + 2))
    for shape, mb, times, _ in rows:
        cells = [f"{times['floor']:.1f}"] + [f"{times[i]:.1f}" for i in impls]
        print(f"| {','.join(map(str, shape))} ({mb:.0f}) | " + " | ".join(cells) + " |")
    print("\n## Ratios\n")
    print(
        "| B,T,U+1,V | textbook / tfkd | tfkd / floor | chunked / plain+joint |"
        + (" torchaudio / tfkd |" if "torchaudio" in impls else "")
    )
    print("|---|---|---|---|" + ("---|" if "torchaudio" in impls else ""))

    def ratio(t, a, b):
        return f"{t[a] / t[b]:.2f}×" if a in t and b in t else "—"

    for shape, _, t, _ in rows:
        cells = [
            ratio(t, "textbook", "tfkd"),
            ratio(t, "tfkd", "floor"),
            ratio(t, "chunked", "plain+joint"),
        ]
        if "torchaudio" in impls:
            cells.append(ratio(t, "torchaudio", "tfkd"))
        print(f"| {','.join(map(str, shape))} | " + " | ".join(cells) + " |")
    if not args.no_memory:
        print("\n## Peak extra memory (× logits size; fresh child per cell, VmHWM - VmRSS)\n")
        print("| B,T,U+1,V | " + " | ".join(impls) + " |")
        print("|---|" + "---|" * len(impls))
        for shape, _, _, mem in rows:
            cells = [fmt_mem(mem.get(i)) for i in impls]
            print(f"| {','.join(map(str, shape))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(cli.run(main, "tools/bench_rnnt_loss.py"))
