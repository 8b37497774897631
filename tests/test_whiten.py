"""Whitened (activation-aware) truncation, q3r_whitened_factors through tests/tool_whiten, against
numpy on random W and activations X (G = X^T X):

- at every rank r its output error ||X W^T - X (A B)^T||_F is no larger than plain SVD's, and
  smaller at some rank (the inputs are correlated), and it equals the closed form
  sqrt(sum_{i >= r} sigma_i^2) with sigma the singular values of W S (S = cholesky(G));
- A B equals numpy's U_r Sigma_r V_r^T S^-1, and sigma numpy's singular values of W S;
- with X of identity covariance (G = c I) it is plain SVD truncation;
- a singular G (X of rank below n) gets a ridge, reported, and finite factors whose output
  error is within the ridge's effect of the least possible;
- calibration (q3r_calibrate, through tests/tool_calib): the Gram of every GPT matrix's inputs
  (Q/K/V's shared, the projection's, the MLP's two) on 20 training windows equals
  the one torch's nanoGPT module gives on the same windows and weights."""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import safetensors_np  # noqa: E402
from q3r_testing import Checks, tool_path, write_corpus  # noqa: E402

check = Checks()
tool = tool_path("tool_whiten")


def run(W, G, ranks):
    d = tempfile.mkdtemp(prefix="q3r-whiten-")
    try:
        i, o = os.path.join(d, "in.safetensors"), os.path.join(d, "out.safetensors")
        safetensors_np.write(i, {"W": W.astype(np.float32), "G": G.astype(np.float64),
                                 "ranks": np.array(ranks, dtype=np.int64)})
        p = subprocess.run([tool, i, o], capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr)
            return None
        return safetensors_np.read(o)[0]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def plain(W, r):
    U, s, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vt[:r]


def out_err(X, W, Wr):
    return np.linalg.norm(X @ (W.astype(np.float64) - Wr).T)


if tool:
    rng = np.random.default_rng(5)
    m, n, rows = 24, 16, 300
    W = rng.standard_normal((m, n)).astype(np.float32)
    # correlated inputs: a few directions carry most of the variance
    mix = rng.standard_normal((n, n)) * np.exp(-np.arange(n) / 3.0)[:, None]
    X = rng.standard_normal((rows, n)) @ mix
    G = X.T @ X
    ranks = list(range(1, n + 1))
    res = run(W, G, ranks)
    if check(res is not None, "tool_whiten ran"):
        S = np.linalg.cholesky(G)
        Uw, sw, Vtw = np.linalg.svd(W.astype(np.float64) @ S, full_matrices=False)
        check(np.allclose(res["sigma"], sw, rtol=1e-9, atol=1e-12 * sw[0]), "sigma = singular values of W S")
        check(res["ridge"][0] == 0, "no ridge for a positive definite G")
        better_somewhere = False
        for r in ranks:
            Wr = res[f"A.{r}"].astype(np.float64) @ res[f"B.{r}"].astype(np.float64)
            ref = (Uw[:, :r] * sw[:r]) @ Vtw[:r] @ np.linalg.inv(S)
            e_w, e_p = out_err(X, W, Wr), out_err(X, W, plain(W, r))
            closed = np.sqrt(np.sum(sw[r:] ** 2))
            scale = np.linalg.norm(X @ W.T.astype(np.float64))
            check(e_w <= e_p + 1e-6 * scale, f"r = {r}: whitened output error {e_w:.6g} <= plain {e_p:.6g}")
            check(abs(e_w - closed) <= 1e-5 * scale, f"r = {r}: error {e_w:.8g} = closed form {closed:.8g}")
            check(np.linalg.norm(Wr - ref) <= 1e-5 * np.linalg.norm(W), f"r = {r}: A B = U_r S_r V_r^T S^-1")
            better_somewhere |= e_w < 0.9 * e_p
        check(better_somewhere, "on correlated inputs whitening beats plain SVD clearly at some rank")

    # identity covariance: plain SVD
    Q, _ = np.linalg.qr(rng.standard_normal((rows, n)))
    Xi = 3.0 * Q
    res = run(W, Xi.T @ Xi, [1, 5, 11])
    if check(res is not None, "tool_whiten ran (identity covariance)"):
        for r in (1, 5, 11):
            Wr = res[f"A.{r}"].astype(np.float64) @ res[f"B.{r}"].astype(np.float64)
            check(np.linalg.norm(Wr - plain(W, r)) <= 1e-5 * np.linalg.norm(W),
                  f"r = {r}: identity covariance gives plain SVD truncation")

    # singular G: inputs in 10 of 16 directions
    Xs = rng.standard_normal((rows, 10)) @ rng.standard_normal((10, n))
    Gs = Xs.T @ Xs
    res = run(W, Gs, [3, 8])
    if check(res is not None, "tool_whiten ran (singular G)"):
        check(res["ridge"][0] > 0, f"a singular G gets a ridge ({res['ridge'][0]:.3g})")
        for r in (3, 8):
            Wr = res[f"A.{r}"].astype(np.float64) @ res[f"B.{r}"].astype(np.float64)
            # the least output error at rank r: Eckart-Young on X W^T's row space
            Ux, sx, Vtx = np.linalg.svd(Xs, full_matrices=False)
            keep = sx > 1e-9 * sx[0]
            Sx = Vtx[keep].T * sx[keep]  # X^T X = Sx Sx^T on the row space
            best = np.sqrt(np.sum(np.linalg.svd(W.astype(np.float64) @ Sx, compute_uv=False)[r:] ** 2))
            scale = np.linalg.norm(Xs @ W.T.astype(np.float64))
            check(np.all(np.isfinite(Wr)), f"r = {r}: finite factors")
            check(out_err(Xs, W, Wr) <= best + 1e-3 * scale,
                  f"r = {r}: output error {out_err(Xs, W, Wr):.6g} near the least {best:.6g}")

# calibration: q3r's Grams of every GPT matrix's inputs against torch's, on the same windows
calib = tool_path("tool_calib")
if calib:
    import torch  # noqa: E402
    from q3r_testing import run_q3r  # noqa: E402
    from torch_reference import GPT, gpt_config  # noqa: E402
    tmp = tempfile.mkdtemp(prefix="q3r-calib-")
    try:
        text = write_corpus(os.path.join(tmp, "corpus.txt"), 4, 3000)
        run_dir = os.path.join(tmp, "run")
        p = run_q3r(["train", "--model", "gpt-tiny", "--data", text, "--width", "32", "--depth", "2", "--heads",
                     "2", "--mlp", "64", "--context", "16", "--batch", "8", "--epochs", "1", "--epoch-steps", "10",
                     "--val-windows", "10", "--threads", "1", "--quiet", "--reg", "none", "--out", run_dir],
                    expect_ok=True)
        model = os.path.join(run_dir, "model.safetensors")
        out = os.path.join(tmp, "grams.safetensors")
        q = subprocess.run([calib, model, text, "20", "7", out], capture_output=True, text=True)
        if check(p.returncode == 0 and q.returncode == 0, f"tool_calib ran ({q.stderr.strip()})"):
            got = safetensors_np.read(out)[0]
            w, meta = safetensors_np.read(model)
            net = GPT(**gpt_config(meta)).double()
            net.load_state_dict({k: torch.from_numpy(v).double() for k, v in w.items()}, strict=True)
            inputs = {}

            def hook(name):
                def f(mod, args):
                    x = args[0].detach().reshape(-1, args[0].shape[-1])
                    inputs[name] = x.T @ x
                return f

            for b, blk in enumerate(net.transformer.h):
                blk.attn.c_attn.register_forward_pre_hook(hook(f"transformer.h.{b}.attn.q"))
                blk.attn.c_proj.register_forward_pre_hook(hook(f"transformer.h.{b}.attn.c_proj"))
                blk.mlp.c_fc.register_forward_pre_hook(hook(f"transformer.h.{b}.mlp.c_fc"))
                blk.mlp.c_proj.register_forward_pre_hook(hook(f"transformer.h.{b}.mlp.c_proj"))
            with torch.no_grad():
                net(torch.from_numpy(got["tokens"]))
            check(got["tokens"].shape == (20, 16), f"20 windows of 16: {got['tokens'].shape}")
            for b in range(2):
                for n in "kv":
                    inputs[f"transformer.h.{b}.attn.{n}"] = inputs[f"transformer.h.{b}.attn.q"]
            names = sorted(k[5:] for k in got if k.startswith("gram."))
            # the head is tied to the embedding (gpt-tiny's default), so never a target
            check(len(names) == 12, f"a Gram per block matrix: {names}")
            for n in names:
                want = inputs[n]
                err = np.linalg.norm(got["gram." + n] - want.numpy()) / np.linalg.norm(want.numpy())
                check(err < 1e-5, f"Gram of {n}'s inputs: relative error {err:.2e} against torch")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
