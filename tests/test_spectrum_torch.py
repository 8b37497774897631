"""q3r spectrum on a PyTorch state dict, through the program a user runs.

A torch model (ViT-style blocks with a fused qkv nn.Linear, an MLP, a head, plus a
torch.nn.MultiheadAttention with its fused in_proj_weight, LayerNorms, biases and a conv)
is saved as safetensors by an independent numpy writer (tests/safetensors_np.py), and:

- `q3r spectrum --json` gives, per matrix (q, k, v split out of the fused weights), the
  singular values of torch.linalg.svdvals (float64 of the stored float32 weights) to 1e-5
  of sigma_1, and the effective rank exp(H), the rank of the 0.4 rule, the energy at it,
  sigma_{r+1}/sigma_1 and the 90%/99% ranks as computed here in torch;
- --filter, --no-split-qkv, --rank and --csv agree with that;
- the same model exported as F16 and as BF16 (with I32 and BOOL tensors beside it) gives
  the singular values of the decoded 16-bit weights; an Inf in a half matrix is refused;
- --plot writes a valid PNG (signature, IHDR size, non-trivial size) for one line per
  matrix and for the grouped-by-kind plot, leaving no temporary file; without gnuplot on
  PATH --plot fails with the apt-get hint while the table still works;
- bad input (missing or corrupt file, no 2-D tensors, a filter matching nothing, a bad
  --rank) exits non-zero with a message naming it.

Exit 77 (skip) without torch/numpy."""
import json
import math
import os
import shutil
import struct
import sys
import tempfile

try:
    import numpy as np
    import torch
except ImportError:
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
from q3r_testing import Q3R, Checks, run_q3r  # noqa: E402

check = Checks()


def run(args, env=None):
    return run_q3r(["spectrum"] + args, env=env)


class Block(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.Module()
        self.attn.qkv = torch.nn.Linear(d, 3 * d)
        self.attn.proj = torch.nn.Linear(d, d)
        self.mlp = torch.nn.Module()
        self.mlp.fc1 = torch.nn.Linear(d, h)
        self.mlp.fc2 = torch.nn.Linear(h, d)


class Model(torch.nn.Module):
    def __init__(self, d=24, h=40, depth=2, classes=10):
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(1, d, 4, 4)
        self.blocks = torch.nn.ModuleList([Block(d, h) for _ in range(depth)])
        self.pool = torch.nn.MultiheadAttention(d, 2)
        self.head = torch.nn.Linear(d, classes)


def reference(w, rule=0.4):
    """Metrics of one float32 matrix, in float64 torch."""
    w = torch.as_tensor(np.asarray(w, dtype=np.float64))
    s = torch.linalg.svdvals(w)
    m, n = w.shape
    k = s.numel()
    r = max(1, math.floor(rule * m * n / (m + n) * (1 + 1e-12)))
    p = s / s.sum()
    p = p[p > 0]
    e = torch.cumsum(s * s, 0) / (s * s).sum()
    return {
        "sigma": s.numpy(),
        "rank": r,
        "effective_rank": math.exp(float(-(p * p.log()).sum())),
        "energy_at_rank": float(e[min(r, k) - 1]),
        "sigma_ratio": float(s[r] / s[0]) if r < k else 0.0,
        "rank90": int((e < 0.9 * (1 - 1e-12)).sum()) + 1,
        "rank99": int((e < 0.99 * (1 - 1e-12)).sum()) + 1,
    }


def expected_matrices(sd, split=True):
    out = {}
    for name, t in sd.items():
        if t.ndim != 2:
            continue
        d = t.shape[1]
        fused = name.endswith(".qkv.weight") or name.endswith("in_proj_weight")
        if split and fused and t.shape[0] == 3 * d:
            prefix = name[: -len(".qkv.weight")] if name.endswith(".qkv.weight") else \
                name[: -len("in_proj_weight")] + "in_proj"
            for j, part in enumerate("qkv"):
                out[f"{prefix}.{part}"] = (name, t[j * d:(j + 1) * d])
        else:
            out[name] = (name, t)
    return out


def compare(report, sd, split=True, rule=0.4, only=None):
    want = expected_matrices(sd, split)
    if only is not None:
        want = {k: v for k, v in want.items() if k in only}
    got = {m["name"]: m for m in report["matrices"]}
    check(list(got) == list(want), f"matrices {list(got)} != {list(want)}")
    worst = 0.0
    for name, (tensor, w) in want.items():
        m = got.get(name)
        if m is None:
            continue
        ref = reference(w, rule)
        s = np.array(m["sigma"])
        check(m["tensor"] == tensor and [m["rows"], m["cols"]] == list(w.shape),
              f"{name}: tensor {m['tensor']} shape {m['rows']}x{m['cols']}")
        check(s.shape == ref["sigma"].shape, f"{name}: {s.shape} values, want {ref['sigma'].shape}")
        if s.shape != ref["sigma"].shape:
            continue
        err = float(np.max(np.abs(s - ref["sigma"])) / ref["sigma"][0])
        worst = max(worst, err)
        check(err <= 1e-5, f"{name}: singular values off by {err:.3g} of sigma_1")
        check(m["rank"] == ref["rank"], f"{name}: rank {m['rank']}, want {ref['rank']}")
        for key in ("effective_rank", "energy_at_rank", "sigma_ratio"):
            check(abs(m[key] - ref[key]) <= 1e-5 * max(1.0, abs(ref[key])),
                  f"{name}: {key} {m[key]}, want {ref[key]}")
        for key in ("rank90", "rank99"):
            check(m[key] == ref[key], f"{name}: {key} {m[key]}, want {ref[key]}")
    return got, worst


def png_ok(path, what):
    check(os.path.isfile(path), f"{what}: {path} missing")
    if not os.path.isfile(path):
        return
    b = open(path, "rb").read()
    check(b[:8] == b"\x89PNG\r\n\x1a\n", f"{what}: not a PNG signature")
    check(b[12:16] == b"IHDR", f"{what}: no IHDR chunk")
    w, h = struct.unpack(">II", b[16:24])
    check(w >= 400 and h >= 300, f"{what}: {w}x{h} image")
    check(len(b) > 10000, f"{what}: only {len(b)} bytes")
    check(b.endswith(b"IEND\xaeB`\x82"), f"{what}: no IEND chunk")


def main():
    if not os.access(Q3R, os.X_OK):
        print(f"missing {Q3R}")
        return 1
    torch.manual_seed(5)
    model = Model()
    with torch.no_grad():  # one matrix of clear low rank, so the metrics are not all alike
        u, v = torch.randn(40, 3), torch.randn(3, 24)
        model.blocks[1].mlp.fc1.weight.copy_(u @ v + 1e-3 * torch.randn(40, 24))
    sd = {k: t.detach().numpy().astype(np.float32) for k, t in model.state_dict().items()}
    tmp = tempfile.mkdtemp(prefix="q3r_spectrum_")
    try:
        path = os.path.join(tmp, "model.safetensors")
        safetensors_np.write(path, sd)
        have_gnuplot = shutil.which("gnuplot") is not None

        # everything, JSON, with a grouped plot (13 + 3 matrices) and CSV
        png, csv = os.path.join(tmp, "all.png"), os.path.join(tmp, "all.csv")
        args = [path, "--json", "--csv", csv, "--threads", "2"] + (["--plot", png] if have_gnuplot else [])
        p = run(args)
        check(p.returncode == 0, f"spectrum --json: rc {p.returncode}: {p.stderr}")
        rep = json.loads(p.stdout)
        got, worst = compare(rep, sd)
        print(f"{len(got)} matrices, worst singular value error {worst:.2e} of sigma_1")
        check(len(got) == 2 * 6 + 1 + 4, f"{len(got)} matrices")
        check(got.get("blocks.1.mlp.fc1.weight", {}).get("rank99", 99) <= 3, "low-rank fc1: rank99 > 3")
        check(got.get("blocks.0.attn.k", {}).get("kind") == "k", "kind of blocks.0.attn.k")
        check(got.get("pool.out_proj.weight", {}).get("kind") == "proj", "kind of pool.out_proj.weight")
        nonmat = sum(1 for t in sd.values() if t.ndim != 2)
        check(rep["tensors_skipped"] == nonmat, f"skipped {rep['tensors_skipped']}, want {nonmat}")
        if have_gnuplot:
            png_ok(png, "grouped plot")
        lines = open(csv).read().splitlines()
        check(len(lines) == 1 + len(got), f"csv: {len(lines)} lines")
        if len(lines) > 1:
            head = lines[0].split(",")
            row = lines[1].split(",")
            first = rep["matrices"][0]
            check(row[0].strip('"') == first["name"], "csv: first name")
            check(abs(float(row[head.index("effective_rank")]) - first["effective_rank"]) < 1e-6,
                  "csv: effective rank")

        # table: one line per matrix, aligned; plot with one line per matrix
        png2 = os.path.join(tmp, "few.png")
        p = run([path, "--filter", "blocks.0.mlp,head"] + (["--plot", png2] if have_gnuplot else []))
        check(p.returncode == 0, f"table: rc {p.returncode}: {p.stderr}")
        rows = [ln for ln in p.stdout.splitlines() if ln.startswith(("blocks.", "head"))]
        check(len(rows) == 3, f"table rows {rows}")
        check(len({ln.index(" ", len("blocks.0.mlp.fc1.weight")) for ln in rows}) == 1, "table not aligned")
        if have_gnuplot:
            png_ok(png2, "per-matrix plot")
        leftovers = [f for f in os.listdir(tmp) if ".tmp" in f]
        check(not leftovers, f"temporary files left: {leftovers}")

        # filters, no split, another rank rule
        p = run([path, "--json", "--filter", "q,v"])
        if p.returncode == 0:
            names = [m["name"] for m in json.loads(p.stdout)["matrices"]]
            check(names == ["blocks.0.attn.q", "blocks.0.attn.v", "blocks.1.attn.q", "blocks.1.attn.v",
                            "pool.in_proj.q", "pool.in_proj.v"], f"--filter q,v: {names}")
        else:
            check(False, f"--filter q,v: {p.stderr}")
        p = run([path, "--json", "--no-split-qkv", "--rank", "0.25", "--filter", "qkv,in_proj"])
        check(p.returncode == 0, f"--no-split-qkv: {p.stderr}")
        if p.returncode == 0:
            compare(json.loads(p.stdout), sd, split=False, rule=0.25,
                    only={"blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight", "pool.in_proj_weight"})

        # an F64 matrix and an integer rank
        p64 = os.path.join(tmp, "f64.safetensors")
        w64 = np.random.default_rng(1).standard_normal((9, 14))
        safetensors_np.write(p64, {"w": w64, "b": np.zeros(3)})
        p = run([p64, "--json", "--rank", "4"])
        check(p.returncode == 0, f"f64: {p.stderr}")
        if p.returncode == 0:
            m = json.loads(p.stdout)["matrices"][0]
            s = torch.linalg.svdvals(torch.as_tensor(w64)).numpy()
            check(np.max(np.abs(np.array(m["sigma"]) - s)) <= 1e-6 * s[0], "f64 singular values")
            check(m["rank"] == 4 and abs(m["sigma_ratio"] - s[4] / s[0]) < 1e-6, "f64 rank 4")

        # a half and a bfloat16 export of the same model (numpy has no bfloat16: its bits go in
        # as int16 under the BF16 name), with an int32 id vector and a bool mask beside it:
        # the singular values are those of the decoded 16-bit weights, the rest is skipped
        for half, tdt in (("F16", torch.float16), ("BF16", torch.bfloat16)):
            ph = os.path.join(tmp, f"{half}.safetensors")
            sdh, names = {}, {}
            for k, t in model.state_dict().items():
                th = t.detach().to(tdt)
                sdh[k] = th.view(torch.int16).numpy() if tdt == torch.bfloat16 else th.numpy()
                if tdt == torch.bfloat16:
                    names[k] = "BF16"
            sdh["position_ids"] = np.arange(5, dtype=np.int32)[None, :].repeat(2, 0)
            sdh["mask"] = np.eye(3, dtype=np.bool_)
            safetensors_np.write(ph, sdh, dtypes=names)
            p = run([ph, "--json"])
            check(p.returncode == 0, f"{half}: {p.stderr}")
            if p.returncode == 0:
                decoded = {k: t.detach().to(tdt).double().numpy() for k, t in model.state_dict().items()}
                rep = json.loads(p.stdout)
                got, worst = compare(rep, decoded)
                print(f"{half}: {len(got)} matrices, worst singular value error {worst:.2e} of sigma_1")
                nonmat = sum(1 for t in decoded.values() if t.ndim != 2) + 2
                check(rep["tensors_skipped"] == nonmat, f"{half}: skipped {rep['tensors_skipped']}, want {nonmat}")
        pinf = os.path.join(tmp, "inf16.safetensors")
        winf = np.ones((4, 5), np.float16)
        winf[2, 3] = np.inf
        safetensors_np.write(pinf, {"blocks.0.mlp.fc1.weight": winf})
        p = run([pinf])
        check(p.returncode != 0 and "F16" in p.stderr and "blocks.0.mlp.fc1.weight" in p.stderr and "13" in p.stderr,
              f"F16 Inf: rc {p.returncode}, {p.stderr!r}")

        # no gnuplot on PATH: --plot fails with the hint, the table does not need it
        empty = os.path.join(tmp, "emptybin")
        os.mkdir(empty)
        env = dict(os.environ, PATH=empty)
        p = run([path, "--plot", os.path.join(tmp, "x.png")], env=env)
        check(p.returncode != 0 and "apt-get install gnuplot" in p.stderr, f"no gnuplot: {p.returncode} {p.stderr}")
        check(not os.path.exists(os.path.join(tmp, "x.png")), "no gnuplot: a PNG appeared")
        p = run([path], env=env)
        check(p.returncode == 0, f"no gnuplot, no --plot: {p.stderr}")

        # bad input
        corrupt = os.path.join(tmp, "corrupt.safetensors")
        with open(corrupt, "wb") as f:
            f.write(struct.pack("<Q", 1000) + b"{\"w\": ")
        vec = os.path.join(tmp, "vectors.safetensors")
        safetensors_np.write(vec, {"bias": np.zeros(4, np.float32), "steps": np.zeros((2, 2), np.int64)})
        bad = [
            ([os.path.join(tmp, "missing.safetensors")], "missing.safetensors"),
            ([corrupt], "corrupt.safetensors"),
            ([vec], "no 2-D"),
            ([path, "--filter", "nosuchlayer"], "nosuchlayer"),
            ([path, "--filter", "q,,k"], "empty"),
            ([path, "--rank", "abc"], "--rank"),
            ([path, "--rank", "1.5"], "--rank"),
            ([path, "--rank", "0"], "--rank"),
            ([], "expected one"),
            ([path, path], "unexpected"),
        ]
        for args, needle in bad:
            p = run(args)
            check(p.returncode != 0 and needle in p.stderr and not p.stdout,
                  f"{args}: rc {p.returncode}, stderr {p.stderr!r}, want a message with {needle!r}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
