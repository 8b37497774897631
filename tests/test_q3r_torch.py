"""Q3R against an independent re-implementation in PyTorch (float64, torch.linalg.svd,
the four-term operator and the eps schedules written from docs/q3r-math.md).

For several shapes, ranks and schedules, tests/tool_q3r runs a trajectory: per phase a
perturbation, a refresh, a few decoupled steps X -= lr 2 lambda R(X), then the value and
gradient at the final X. The same trajectory is replayed here in float64, and eps, r_env,
value, gradient and the weights are compared. Exit 77 (skip) without torch."""
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import tool_path  # noqa: E402

try:
    import torch
except ImportError:
    print("skip: torch is not importable by", sys.executable)
    sys.exit(77)

torch.set_default_dtype(torch.float64)
SCHEDULES = {"default": 0, "geometric": 1, "constant": 2, "exploration": 3}


class RefQ3R:
    """One matrix: the state and schedules exactly as the math note states them."""

    def __init__(self, rows, cols, rank, schedule, eps_const, eps_min, nsteps):
        self.k = min(rows, cols)
        self.rank, self.schedule = rank, schedule
        self.eps_const, self.eps_min, self.N = eps_const, eps_min, nsteps
        self.eps = float("inf")
        self.eps0 = None
        self.c = None
        self.g = 0
        self.U = torch.zeros(rows, 0)
        self.V = torch.zeros(cols, 0)
        self.t = torch.zeros(0)

    def refresh(self, W):
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        if self.rank >= self.k:
            self.eps = float("inf")
        else:
            s1 = S[self.rank].item()
            if self.schedule == "default":
                if s1 > 0:
                    self.eps = min(self.eps, s1)
            elif self.schedule == "exploration":
                if s1 > 0:
                    self.eps = s1
            elif self.schedule == "constant":
                self.eps = self.eps_const
            elif self.schedule == "geometric":
                if self.eps0 is None:
                    self.eps0 = max(s1, self.eps_min)
                    self.c = (self.eps_min / self.eps0) ** (1.0 / self.N)
                    self.eps = self.eps0
                    self.g = 0
                else:
                    self.g += 1
                    self.eps = self.eps_min if self.g >= self.N else max(self.c * self.eps, self.eps_min)
        r = int((S > self.eps).sum().item())
        self.U, self.V = U[:, :r], Vh[:r, :].T
        self.t = self.eps / S[:r] - 1
        return r

    def R(self, X):
        U, V, T = self.U, self.V, torch.diag(self.t)
        return X + U @ T @ U.T @ X + X @ V @ T @ V.T + U @ T @ (U.T @ X @ V) @ T @ V.T


worst = [0.0, 0.0, 0.0]  # value, gradient, weights


def run_case(tool, tmp, rows, cols, rank, schedule, phases, steps, lam, lr, seed):
    g = torch.Generator().manual_seed(seed)
    X0 = torch.randn(rows, cols, generator=g, dtype=torch.float32)
    perts = [torch.zeros(rows, cols, dtype=torch.float32)]
    for p in range(1, phases):
        # drift plus, every other phase, a growth of the dominant part
        perts.append((0.3 * torch.randn(rows, cols, generator=g)).float())
    eps_const, eps_min, nsteps = 0.6, 1e-3, 3
    inp, out = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")
    with open(inp, "wb") as f:
        f.write(struct.pack("<8i", rows, cols, rank, SCHEDULES[schedule], nsteps, phases, steps, 0))
        f.write(struct.pack("<4d", lam, eps_const, eps_min, lr))
        f.write(X0.numpy().astype("<f4").tobytes())
        for P in perts:
            f.write(P.numpy().astype("<f4").tobytes())
    subprocess.run([tool, inp, out], check=True)
    data = open(out, "rb").read()
    N = rows * cols
    rec = 24 + 8 * N
    assert len(data) == phases * rec, f"tool wrote {len(data)} bytes, expected {phases * rec}"

    ref = RefQ3R(rows, cols, rank, schedule, eps_const, eps_min, nsteps)
    X = X0.double()
    failures = []
    where = f"{rows}x{cols} r{rank} {schedule}"
    for p in range(phases):
        eps_c, renv_c, val_c = struct.unpack_from("<3d", data, p * rec)
        G_c = torch.frombuffer(bytearray(data[p * rec + 24 : p * rec + 24 + 4 * N]), dtype=torch.float32)
        X_c = torch.frombuffer(bytearray(data[p * rec + 24 + 4 * N : (p + 1) * rec]), dtype=torch.float32)
        G_c, X_c = G_c.double().reshape(rows, cols), X_c.double().reshape(rows, cols)
        X = X + perts[p].double()
        r = ref.refresh(X)
        for _ in range(steps):
            X = X - lr * 2 * lam * ref.R(X)
        # value and gradient of the reference operator at the tool's own X (so the
        # comparison of the operator is not blurred by float drift of the trajectory)
        G_r = 2 * lam * ref.R(X_c)
        val_r = lam * (X_c * ref.R(X_c)).sum().item()

        def rel(a, b):
            return abs(a - b) / max(abs(b), 1e-300)

        if not (eps_c == ref.eps or rel(eps_c, ref.eps) < 1e-5):
            failures.append(f"{where} phase {p}: eps {eps_c} vs {ref.eps}")
        if int(renv_c) != r:
            failures.append(f"{where} phase {p}: r_env {int(renv_c)} vs {r}")
        # Float accuracy contract: R(X) to ~1e-7 of ||X|| (not of ||R X||: when eps << sigma
        # the dominant part of R X is a float cancellation), so errors are measured against
        # the scale of X: lambda ||X||^2 for the value, 2 lambda max|X| for the gradient.
        xx = (X_c * X_c).sum().item()
        verr = abs(val_c - val_r) / (lam * xx)
        if verr > 2e-6:
            failures.append(f"{where} phase {p}: value {val_c} vs {val_r} (err {verr:.2e} of lambda |X|^2)")
        gerr = (G_c - G_r).abs().max().item() / (2 * lam * X_c.abs().max().item())
        worst[0] = max(worst[0], verr)
        worst[1] = max(worst[1], gerr)
        if gerr > 2e-6:
            failures.append(f"{where} phase {p}: gradient err {gerr:.2e} of 2 lambda max|X|")
        xerr = (X_c - X).abs().max().item() / X.abs().max().item()
        worst[2] = max(worst[2], xerr)
        if xerr > 1e-5:
            failures.append(f"{where} phase {p}: weights rel err {xerr:.2e}")
    return failures, r


def main():
    tool = tool_path("tool_q3r")
    if not tool:
        return 1
    cases = [
        (7, 5, 2), (5, 7, 2), (12, 12, 4), (30, 18, 6), (16, 48, 5), (9, 4, 4), (20, 10, 1),
    ]
    failures, n = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (rows, cols, rank) in enumerate(cases):
            for j, schedule in enumerate(SCHEDULES):
                f, _ = run_case(tool, tmp, rows, cols, rank, schedule, phases=6, steps=3, lam=0.5, lr=0.05,
                                seed=1000 * i + j)
                failures += f
                n += 1
    for f in failures:
        print("FAIL:", f)
    print(f"test_q3r_torch: {n} trajectories (6 refreshes x 3 steps each), {len(failures)} failures; "
          f"worst errors: value {worst[0]:.1e} of lambda|X|^2, gradient {worst[1]:.1e} of 2 lambda max|X|, "
          f"weights {worst[2]:.1e} of max|X|")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
