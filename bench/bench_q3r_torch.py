#!/usr/bin/python3
"""The Q3R refresh and value+gradient in PyTorch, for bench_q3r's side-by-side.

Per case (rows x cols, envelope rank r) on W ~ N(0, 0.02^2) in float32:
  refresh      a full torch.linalg.svd(W, full_matrices=False), then eps = sigma_{r+1}
               (the default schedule's first refresh) and the top r_env triplets
  vg           value and gradient by the public code's formula: value as the four traces of
               <W, R(W)> and the gradient as the four-term R(W) with the projectors U U^T,
               V V^T and identities formed explicitly, evaluated left to right as written
  vg_shared    the same value and gradient through the shared products A = U^T W, B = W V,
               C = A V of docs/q3r-math.md (what the C library does), for reference
Times are medians over repetitions. Run with Debian's /usr/bin/python3.

  bench_q3r_torch.py [--threads N] [--cases 192x192:9,2048x2048:102] [--json]
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
except ImportError:
    print("bench_q3r_torch: torch is not importable by %s" % sys.executable, file=sys.stderr)
    sys.exit(77)

DEFAULT_SHAPES = [(192, 192), (576, 192), (768, 192), (768, 256), (256, 768), (768, 3072), (2048, 2048)]
LAMBDA = 0.1


def median_time(fn, min_reps=3, budget=0.5):
    fn()  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def refresh(W, r):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    eps = S[r].item() if r < S.numel() else float("inf")
    r_env = int((S > eps).sum().item())
    return U[:, :r_env], S[:r_env], Vh[:r_env].T.contiguous(), eps


def vg_public(X, U, S, V, eps):
    """Four-term R(X) with explicit projectors, as the public Q3R code writes it."""
    d = 1.0 / torch.clamp(S / eps, min=1.0)           # min(eps / sigma, 1)
    D = torch.diag(d)
    Dm = D - torch.eye(d.numel(), dtype=X.dtype)
    # value: <X, R X> as four traces
    t1 = torch.trace(X.t() @ X)
    UtX = U.t() @ X
    t2 = torch.trace((V.t() @ X.t() @ U) @ Dm @ UtX @ V @ Dm)
    t3 = torch.trace(V.t() @ X.t() @ X @ V @ Dm)
    t4 = torch.trace(U.t() @ X @ X.t() @ U @ Dm)
    value = LAMBDA * (t1 + t2 + t3 + t4)
    # gradient: 2 lambda R(X) with U U^T, V V^T and identities formed
    PU, PV = U @ U.t(), V @ V.t()
    I1, I2 = torch.eye(X.shape[0], dtype=X.dtype), torch.eye(X.shape[1], dtype=X.dtype)
    g = (U @ D @ U.t() @ X @ V @ D @ V.t() + U @ D @ U.t() @ X @ (I2 - PV)
         + (I1 - PU) @ X @ V @ D @ V.t() + (I1 - PU) @ X @ (I2 - PV))
    return value, LAMBDA * 2 * g


def vg_shared(X, U, S, V, eps):
    """The same through the shared products (no rows x rows or cols x cols matrices)."""
    t = eps / S - 1.0
    A = U.t() @ X
    B = X @ V
    C = A @ V
    G = X + (U * t) @ (A + (C * t) @ V.t()) + (B * t) @ V.t()
    return LAMBDA * torch.sum(X * G), 2 * LAMBDA * G


def run_case(rows, cols, r, gen):
    W = (0.02 * torch.randn(rows, cols, generator=gen, dtype=torch.float64)).float()
    with torch.no_grad():
        U, S, V, eps = refresh(W, r)
        r_env = S.numel()
        t_refresh = median_time(lambda: refresh(W, r))
        t_vg = median_time(lambda: vg_public(W, U, S, V, eps))
        t_shared = median_time(lambda: vg_shared(W, U, S, V, eps), min_reps=5)
        # the two formulas agree (a guard against benchmarking a wrong computation)
        v1, g1 = vg_public(W, U, S, V, eps)
        v2, g2 = vg_shared(W, U, S, V, eps)
        rel = (g1 - g2).norm().item() / g2.norm().item()
        if rel > 1e-3 or abs(v1.item() - v2.item()) > 1e-3 * abs(v2.item()):
            print("bench_q3r_torch: %dx%d r %d: formulas disagree (grad rel %.3g)" % (rows, cols, r, rel),
                  file=sys.stderr)
            sys.exit(1)
    return {"bench": "q3r_torch", "rows": rows, "cols": cols, "r_env": r_env, "threads": torch.get_num_threads(),
            "refresh_s": t_refresh, "vg_s": t_vg, "vg_shared_s": t_shared, "torch": torch.__version__}


def parse_cases(text):
    cases = []
    for item in text.split(","):
        shape, _, r = item.partition(":")
        rows, _, cols = shape.partition("x")
        cases.append((int(rows), int(cols), int(r)))
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=8192, help="accepted for symmetry with bench_q3r; unused")
    ap.add_argument("--cases", help="comma-separated ROWSxCOLS:R (default: the bench shapes at p = 0.1, 0.4, r = 8)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    if args.cases:
        try:
            cases = parse_cases(args.cases)
        except ValueError:
            ap.error("--cases: expected ROWSxCOLS:R[,...], got %r" % args.cases)
    else:
        cases = [(m, n, r) for m, n in DEFAULT_SHAPES
                 for r in (int(0.1 * m * n / (m + n)), int(0.4 * m * n / (m + n)), 8)]
    gen = torch.Generator().manual_seed(42)
    if not args.json:
        print("torch %s, %d threads" % (torch.__version__, args.threads))
        print("%-10s %5s %11s %9s %11s" % ("shape", "r_env", "refresh_ms", "vg_ms", "vgshr_ms"))
    for rows, cols, r in cases:
        res = run_case(rows, cols, r, gen)
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print("%-10s %5d %11.3f %9.3f %11.3f" % ("%dx%d" % (rows, cols), res["r_env"], 1e3 * res["refresh_s"],
                                                    1e3 * res["vg_s"], 1e3 * res["vg_shared_s"]), flush=True)


if __name__ == "__main__":
    main()
