"""q3r truncate end to end, checked in numpy (torch is used for the SVD when present).

A tiny dense ViT is trained for one short epoch with `q3r train` on a Fashion-MNIST subset, then
`q3r truncate` cuts it; here, independently of q3r:
- every factor product A @ B equals the rank-r SVD truncation of the original slice (Q, K, V
  cut from the fused qkv weight), with r = floor(p m n / (m + n)) for a fraction p, the given
  integer, or the smallest r keeping the asked energy;
- the JSON accounting (per matrix kept = r (m + n) / (m n), energy, error; targeted and total
  parameter counts) matches counts taken from the files' tensors;
- the metadata carries model.*, data.name/mean/std and the rank table; untouched tensors are
  copied bit for bit;
- `q3r eval` scores a full-rank truncation exactly like the dense model;
- bad input exits non-zero with a message naming the flag, file or matrix, and IN is never
  overwritten.
Exit 77 (skip) without numpy or the dataset."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Checks, require, run_q3r, skip_without_fashion_mnist  # noqa: E402
require("test_truncate_torch", "numpy")
import numpy as np  # noqa: E402
import safetensors_np  # noqa: E402
try:
    import torch
except ImportError:
    torch = None

skip_without_fashion_mnist("test_truncate_torch")
check = Checks()


run = run_q3r


def svals(w):
    if torch is not None:
        return torch.linalg.svdvals(torch.from_numpy(w.astype(np.float64))).numpy()
    return np.linalg.svd(w.astype(np.float64), compute_uv=False)


def best(w, r):
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


# removed at exit (also when a check raises); mkdtemp alone left one directory behind per run
tmp_dir = tempfile.TemporaryDirectory(prefix="q3r-truncate-test-")
tmp = tmp_dir.name
D, DEPTH, M = 32, 2, 64
p = run(["train", "--width", str(D), "--depth", str(DEPTH), "--heads", "2", "--mlp", str(M),
         "--train-limit", "512", "--test-limit", "100", "--batch", "64", "--epochs", "1",
         "--threads", "1", "--quiet", "--reg", "none", "--out", os.path.join(tmp, "run")])
check(p.returncode == 0, "q3r train: " + p.stderr)
dense_path = os.path.join(tmp, "run", "model.safetensors")
dense, dmeta = safetensors_np.read(dense_path)
dense_bytes = open(dense_path, "rb").read()


def matrices(t):
    """name -> (dense original slice) for every rank-table matrix of a dense file"""
    out = {}
    for b in range(DEPTH):
        qkv = t[f"blocks.{b}.attn.qkv.weight"]
        for j, c in enumerate("qkv"):
            out[f"blocks.{b}.attn.{c}"] = qkv[j * D:(j + 1) * D]
        for n in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            out[f"blocks.{b}.{n}"] = t[f"blocks.{b}.{n}.weight"]
    out["head"] = t["head.weight"]
    return out


orig = matrices(dense)
total_dense = sum(v.size for v in dense.values())


def truncate(out, *flags):
    p = run(["truncate", dense_path, out, "--json"] + list(flags))
    check(p.returncode == 0, f"q3r truncate {flags}: {p.stderr}")
    return json.loads(p.stdout) if p.returncode == 0 else None


def verify(out, rep, rank_of, targets):
    t, meta = safetensors_np.read(out)
    names = [n for n in orig if any(n.endswith(s) for s in targets)]
    check([m["name"] for m in rep["matrices"]] == names, f"{out}: matrices {[m['name'] for m in rep['matrices']]}")
    tdense = tafter = 0
    for m in rep["matrices"]:
        w = orig[m["name"]]
        rows, cols = w.shape
        r = rank_of(w)
        a, b = t[m["name"] + ".weight_a"], t[m["name"] + ".weight_b"]
        check(m["rank"] == r and a.shape == (rows, r) and b.shape == (r, cols),
              f"{m['name']}: rank {m['rank']}, shapes {a.shape} {b.shape}, want {r}")
        err = np.abs(a.astype(np.float64) @ b - best(w, r)).max()
        check(err < 1e-5 * np.abs(w).max() + 1e-7, f"{m['name']}: A@B vs rank-{r} SVD: {err}")
        s = svals(w)
        check(abs(m["kept"] - r * (rows + cols) / (rows * cols)) < 1e-9, f"{m['name']}: kept {m['kept']}")
        check(abs(m["energy"] - (s[:r] ** 2).sum() / (s ** 2).sum()) < 1e-6, f"{m['name']}: energy")
        check(abs(m["error_fro"] - np.sqrt((s[r:] ** 2).sum())) < 1e-5 * s[0], f"{m['name']}: error")
        tdense += rows * cols
        tafter += r * (rows + cols)
        if m["name"][-7:] in (".attn.q", ".attn.k", ".attn.v"):
            fused = m["name"][:-2] + ".qkv"
            check(fused + ".weight" not in t and fused + ".bias" in t, f"{m['name']}: fused weight gone, bias kept")
    check(rep["targeted_dense"] == tdense and rep["targeted_after"] == tafter,
          f"targeted counts {rep['targeted_dense']} {rep['targeted_after']} want {tdense} {tafter}")
    check(abs(rep["targeted_kept"] - tafter / tdense) < 1e-8, "targeted kept")
    total_after = sum(v.size for v in t.values())
    check(rep["total_dense"] == total_dense and rep["total_after"] == total_after,
          f"total {rep['total_dense']} {rep['total_after']} want {total_dense} {total_after}")
    check(abs(rep["total_kept"] - total_after / total_dense) < 1e-8, f"total kept {rep['total_kept']} vs {total_after / total_dense}")
    # everything that is not a targeted matrix is copied bit for bit
    for n, v in t.items():
        if n in dense:
            check(v.tobytes() == dense[n].tobytes(), f"{n} copied")
    for k in ("data.name", "data.mean", "data.std", "model.width", "model.depth", "model.name"):
        check(meta.get(k) == dmeta.get(k), f"metadata {k}: {meta.get(k)} vs {dmeta.get(k)}")
    ranks = [int(x) for x in meta["model.ranks"].split(",")]
    check(len(ranks) == 6 * DEPTH + 1, "model.ranks length")
    want = [next((m["rank"] for m in rep["matrices"] if m["name"] == n), 0) for n in orig]
    check(ranks == want, f"model.ranks {ranks} want {want}")
    return t


# fraction p = 0.4 on Q, K, V: r = floor(0.4 * 32 * 32 / 64) = 6
out = os.path.join(tmp, "p04.safetensors")
rep = truncate(out, "--targets", "qkv", "--rank", "0.4")
if rep:
    verify(out, rep, lambda w: int(0.4 * w.shape[0] * w.shape[1] / sum(w.shape)), ["attn.q", "attn.k", "attn.v"])
    check(rep["matrices"][0]["rank"] == 6, "p = 0.4 gives rank 6")

# integer rank on everything and the head
out = os.path.join(tmp, "r3.safetensors")
rep = truncate(out, "--targets", "all,head", "--rank", "3")
if rep:
    verify(out, rep, lambda w: 3, list(orig))


# energy 0.9 on fc1, fc2
def energy_rank(w, e=0.9):
    s2 = svals(w) ** 2
    return int(np.searchsorted(np.cumsum(s2) / s2.sum(), e - 1e-12) + 1)


out = os.path.join(tmp, "e09.safetensors")
rep = truncate(out, "--targets", "fc1,fc2", "--energy", "0.9")
if rep:
    verify(out, rep, energy_rank, ["mlp.fc1", "mlp.fc2"])

# full rank on all: q3r eval scores it exactly like the dense model
full = os.path.join(tmp, "full.safetensors")
rep = truncate(full, "--targets", "all", "--rank", str(D))
ev = [run(["eval", path, "--limit", "300", "--json", "--threads", "1"]) for path in (dense_path, full)]
check(all(e.returncode == 0 for e in ev), "q3r eval: " + " ".join(e.stderr for e in ev))
if all(e.returncode == 0 for e in ev):
    a, b = (json.loads(e.stdout) for e in ev)
    check(a["acc"] == b["acc"] and abs(a["loss"] - b["loss"]) < 1e-4,
          f"eval dense {a['acc']} {a['loss']} vs full-rank factored {b['acc']} {b['loss']}")
# the table form prints every matrix and the totals
p = run(["truncate", dense_path, os.path.join(tmp, "t.safetensors"), "--rank", "0.4"])
check(p.returncode == 0 and "blocks.1.attn.v" in p.stdout and "targeted:" in p.stdout and "model:" in p.stdout,
      "table output: " + p.stdout + p.stderr)

# bad input
nometa = os.path.join(tmp, "nometa.safetensors")
safetensors_np.write(nometa, dense)
other = os.path.join(tmp, "other.safetensors")
safetensors_np.write(other, dense, dict(dmeta, **{"model.width": "48"}))
r3 = os.path.join(tmp, "r3.safetensors")
bad = [
    ([dense_path, dense_path, "--rank", "0.4"], "refusing to overwrite"),
    ([dense_path, os.path.join(tmp, "run", "..", "run", "model.safetensors"), "--rank", "2"], "refusing"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--rank", "1.5"], "--rank"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--rank", "0"], "--rank"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--rank", "33"], "blocks.0.attn.q"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--rank", "0.01"], "blocks.0.attn.q"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--energy", "1.5"], "--energy"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--energy", "0"], "--energy"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--rank", "2", "--energy", "0.9"], "exactly one"),
    ([dense_path, os.path.join(tmp, "x.safetensors")], "exactly one"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--rank", "2", "--targets", "qkv,mlp"], "mlp"),
    ([dense_path, os.path.join(tmp, "x.safetensors"), "--rank", "2", "--targets", ""], "select no matrix"),
    ([nometa, os.path.join(tmp, "x.safetensors"), "--rank", "2"], "not a q3r model"),
    ([other, os.path.join(tmp, "x.safetensors"), "--rank", "2"], "other.safetensors"),
    ([r3, os.path.join(tmp, "x.safetensors"), "--rank", "4"], "grow"),
    ([dense_path], "expected IN.safetensors OUT.safetensors"),
]
for args, want in bad:
    p = run(["truncate"] + args)
    check(p.returncode != 0 and want in p.stderr, f"truncate {args}: rc {p.returncode}, {p.stderr.strip()}")
check(not os.path.exists(os.path.join(tmp, "x.safetensors")), "no output written on failure")
check(open(dense_path, "rb").read() == dense_bytes, "input never modified")
# a factored input truncated further: rank 3 -> 2 equals the dense file cut to 2
p = run(["truncate", r3, os.path.join(tmp, "r2.safetensors"), "--targets", "qkv", "--rank", "2"])
check(p.returncode == 0, "re-truncate: " + p.stderr)
if p.returncode == 0:
    t = safetensors_np.read(os.path.join(tmp, "r2.safetensors"))[0]
    e = max(np.abs(t[n + ".weight_a"].astype(np.float64) @ t[n + ".weight_b"] - best(w, 2)).max()
            for n, w in orig.items() if ".attn." in n and not n.endswith("proj"))
    check(e < 1e-5, f"rank 3 -> 2 equals the dense rank-2 truncation: {e}")

tmp_dir.cleanup()
sys.exit(check.finish())
