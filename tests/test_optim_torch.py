"""AdamW + clipping + cosine schedule in C (tests/tool_optim.c) against torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_, with weight-decay masks, parameters left out of the optimizer
(the C side's trainable mask) and a mid-run state save/restore.
Files are exchanged as safetensors through a tiny independent numpy reader/writer.
Exit 77 (skip) without torch/numpy."""
import json, math, os, struct, subprocess, sys, tempfile

try:
    import numpy as np
    import torch
except ImportError:
    sys.exit(77)

DT = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "U8": "u1"}
NAME = {np.dtype(v).str: k for k, v in DT.items()}
NAME["|u1"] = "U8"


def st_write(path, tensors, meta=None):
    header, blobs, off = {}, [], 0
    if meta is not None:
        header["__metadata__"] = meta
    for k, a in tensors.items():
        a = np.ascontiguousarray(a)
        b = a.tobytes()
        header[k] = {"dtype": NAME[a.dtype.str], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def st_read(path):
    b = open(path, "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    h = json.loads(b[8:8 + n].decode())
    meta = h.pop("__metadata__", None)
    data = b[8 + n:]
    out = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(data[s:e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out, meta


def lr_closed_form(lr, min_lr, warmup, total, step):
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def run_case(tool, tmp, name, hp, ranges, n=37, T=10, seed=0, frozen=()):
    """frozen: indices of ranges left out of the torch optimizer (C: trainable mask 0 there);
    they still have gradients, so clipping sees them on both sides."""
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(n).astype(np.float32)
    scales = np.linspace(0.05, 1.0, T).astype(np.float32)[:, None]  # some steps clip, some not
    grads = (rng.standard_normal((T, n)).astype(np.float32) * scales).astype(np.float32)
    inp, outp = os.path.join(tmp, name + "_in.safetensors"), os.path.join(tmp, name + "_out.safetensors")
    tensors = {"params": params, "grads": grads, "ranges": np.array(ranges, dtype=np.int64)}
    if frozen:
        trainable = np.ones(n, dtype=np.uint8)
        for j in frozen:
            off, cnt, _ = ranges[j]
            trainable[off:off + cnt] = 0
        tensors["trainable"] = trainable
    st_write(inp, tensors, {k: repr(v) for k, v in hp.items()})
    r = subprocess.run([tool, "adamw", inp, outp], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        return 1
    got, _ = st_read(outp)

    # torch: one leaf tensor per range; decay ranges in a group with weight_decay, others 0.
    leaves, groups = [], {0: [], 1: []}
    for j, (off, cnt, dec) in enumerate(ranges):
        t = torch.tensor(params[off:off + cnt].copy(), requires_grad=True)
        leaves.append((off, cnt, t))
        if j not in frozen:
            groups[dec].append(t)
    opt = torch.optim.AdamW([{"params": groups[1], "weight_decay": hp["weight_decay"]},
                             {"params": groups[0], "weight_decay": 0.0}],
                            lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    fails = 0
    for t in range(T):
        for off, cnt, leaf in leaves:
            leaf.grad = torch.tensor(grads[t, off:off + cnt].copy())
        want_norm64 = float(np.sqrt(np.sum(grads[t].astype(np.float64) ** 2)))
        if hp["max_norm"] > 0:
            tn = float(torch.nn.utils.clip_grad_norm_([l for _, _, l in leaves], hp["max_norm"]))
            if not math.isclose(got["norms"][t], tn, rel_tol=1e-5):
                print(f"{name} step {t}: norm {got['norms'][t]} vs torch {tn}"); fails += 1
        if not math.isclose(got["norms"][t], want_norm64, rel_tol=1e-12):
            print(f"{name} step {t}: norm {got['norms'][t]} vs float64 {want_norm64}"); fails += 1
        lr = lr_closed_form(hp["lr"], hp["min_lr"], int(hp["warmup"]), int(hp["total"]), t)
        if not math.isclose(got["lrs"][t], lr, rel_tol=1e-12, abs_tol=1e-300):
            print(f"{name} step {t}: lr {got['lrs'][t]} vs {lr}"); fails += 1
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        cur = np.zeros(n, dtype=np.float32)
        for off, cnt, leaf in leaves:
            cur[off:off + cnt] = leaf.detach().numpy()
        err = np.max(np.abs(got["traj"][t] - cur) / (1e-6 + 1e-5 * np.abs(cur)))
        if not err <= 1.0:
            i = int(np.argmax(np.abs(got["traj"][t] - cur)))
            print(f"{name} step {t}: params differ at {i}: {got['traj'][t][i]} vs torch {cur[i]}"); fails += 1
    m = np.zeros(n, dtype=np.float32); v = np.zeros(n, dtype=np.float32)
    for j, (off, cnt, leaf) in enumerate(leaves):
        if j in frozen:  # not in the optimizer: no state (m, v stay 0), params untouched
            if not np.array_equal(got["params"][off:off + cnt], params[off:off + cnt]):
                print(f"{name}: frozen range {j} moved"); fails += 1
            continue
        st = opt.state[leaf]
        m[off:off + cnt] = st["exp_avg"].numpy(); v[off:off + cnt] = st["exp_avg_sq"].numpy()
        if int(st["step"]) != int(got["optim.step"]):
            print(f"{name}: step {int(got['optim.step'])} vs torch {int(st['step'])}"); fails += 1
    if not np.allclose(got["optim.m"], m, rtol=1e-5, atol=1e-8):
        print(f"{name}: m differs, max {np.max(np.abs(got['optim.m'] - m))}"); fails += 1
    if not np.allclose(got["optim.v"], v, rtol=1e-5, atol=1e-10):
        i = int(np.argmax(np.abs(got["optim.v"] - v))); print(f"{name}: v differs at {i}: {got['optim.v'][i]} vs {v[i]}"); fails += 1
    if not np.array_equal(got["params"], got["traj"][-1]):
        print(f"{name}: final params != last trajectory row"); fails += 1
    # The test must be able to fail: decay must have mattered and clipping must have fired.
    print(f"{name}: {T} steps, max |dp| {np.max(np.abs(got['params'] - params)):.3g}, "
          f"norms {np.min(got['norms']):.3g}..{np.max(got['norms']):.3g}, {fails} failures")
    return fails


def main():
    tool = os.path.join(os.environ.get("Q3R_BINARY_DIR", "build"), "tool_optim")
    if not os.access(tool, os.X_OK):
        print(f"missing {tool}")
        return 1
    fails = 0
    with tempfile.TemporaryDirectory() as tmp:
        hp = dict(lr=1e-2, min_lr=1e-3, warmup=3, total=10, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.1, max_norm=1.5, resume_at=5)
        fails += run_case(tool, tmp, "clip_resume", hp, [(0, 20, 1), (20, 7, 0), (27, 10, 1)])
        hp2 = dict(lr=3e-2, min_lr=0.0, warmup=0, total=8, beta1=0.8, beta2=0.95, eps=1e-3,
                   weight_decay=0.5, max_norm=0.0, resume_at=-1)
        fails += run_case(tool, tmp, "noclip_biggers", hp2, [(0, 5, 0), (5, 32, 1)], seed=1)
        fails += run_case(tool, tmp, "frozen_resume", hp, [(0, 9, 1), (9, 6, 0), (15, 12, 1), (27, 10, 0)],
                          seed=2, frozen=(1, 2))
    print("test_optim_torch:", "FAILED" if fails else "ok")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
