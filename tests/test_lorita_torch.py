"""Five optimizer steps of q3r's LoRITa (3 factors) and factorized (rank fraction 0.4) modes
against PyTorch, on a small ViT with every qkv slice, proj, fc1 and fc2 as targets.

The reference is written here, independently of q3r's reparam code: each target (each Q, K, V
row block of a fused qkv weight separately) is a product of nn.Parameters in float64
(LoRITa: W_1 = W_0, W_2 = W_3 = I; factorized: A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T from
torch.linalg.svd of W_0, r = floor(0.4 m n / (m + n))), materialised into the dense ViT of
torch_reference.py before each forward. The dense task gradient (every parameter, targets
included) goes through torch.nn.utils.clip_grad_norm_, as in the other modes; autograd carries
the clipped dW of each target back through its product to the factors; one torch.optim.AdamW
steps the factors (decay) and the other parameters (decay on the non-target matrices only), at
the warmup+cosine learning rate from its closed form.

Compares the loss and the pre-clip gradient norm of every step, the final collapsed weights,
and the final factors (the factorized ones up to the sign of each rank-one pair, which the SVD
does not fix). Exit 77 (skip) without torch."""
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import require, tool_path  # noqa: E402

require("test_lorita_torch", "numpy", "torch")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch_reference import adamw, adamw_step, final_weights_err, max_rel_err, run_steps_tool, step_loss, step_lr  # noqa: E402

torch.set_num_threads(1)
WIDTH, DEPTH, MLP = 32, 2, 64


def targets(model):
    """(name, weight parameter, first row, rows) of every target matrix, in q3r's order."""
    out = []
    for b, blk in enumerate(model.blocks):
        for j, c in enumerate("qkv"):
            out.append((f"blocks.{b}.attn.{c}", blk.attn.qkv.weight, j * WIDTH, WIDTH))
        out.append((f"blocks.{b}.attn.proj", blk.attn.proj.weight, 0, blk.attn.proj.weight.shape[0]))
        out.append((f"blocks.{b}.mlp.fc1", blk.mlp.fc1.weight, 0, blk.mlp.fc1.weight.shape[0]))
        out.append((f"blocks.{b}.mlp.fc2", blk.mlp.fc2.weight, 0, blk.mlp.fc2.weight.shape[0]))
    return out


def product(factors):
    p = factors[0]
    for f in factors[1:]:
        p = p @ f
    return p


def run(mode, tool, tmp):
    meta, res, batches, model = run_steps_tool(tool, mode, tmp)

    chains = {}
    for name, p, r0, rows in targets(model):
        W0 = p.data[r0:r0 + rows].clone()
        m, n = W0.shape
        if mode == "lorita":
            fs = [W0] + [torch.eye(n, dtype=torch.float64) for _ in range(int(meta["factors"]) - 1)]
        else:
            r = int(math.floor(float(meta["rank_fraction"]) * m * n / (m + n)))
            U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
            fs = [U[:, :r] * S[:r].sqrt(), S[:r].sqrt()[:, None] * Vh[:r]]
        chains[name] = [torch.nn.Parameter(f.clone()) for f in fs]
    target_params = {id(p) for _, p, _, _ in targets(model)}
    factors = [f for fs in chains.values() for f in fs]
    decay, no_decay = list(factors), []
    for name, p in model.named_parameters():
        if id(p) in target_params:
            continue   # materialised from the factors, never stepped itself
        is_matrix = name.endswith(".weight") and p.dim() >= 2
        (decay if is_matrix else no_decay).append(p)
    opt = adamw(decay, no_decay, meta)

    def materialise():
        prods = []
        for name, p, r0, rows in targets(model):
            P = product(chains[name])
            with torch.no_grad():
                p[r0:r0 + rows] = P.detach()
            prods.append(P)
        return prods

    losses, norms = [], []
    for s, (x, y) in enumerate(batches):
        lr = step_lr(meta, s)
        prods = materialise()
        opt.zero_grad()
        model.zero_grad()
        loss = step_loss(model, x, y, meta)
        loss.backward()
        losses.append(loss.item())
        # The dense task gradient, targets' dW included, is what gets clipped, as in every mode.
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), float(meta["clip"]))))
        torch.autograd.backward(prods, [p.grad[r0:r0 + rows] for _, p, r0, rows in targets(model)])
        adamw_step(opt, lr)
    materialise()

    failures = 0

    def report(ok, text):
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {mode}: {text}")

    got = res["losses"]
    err = max_rel_err(got, losses)
    report(err < 1e-5, f"losses q3r {np.array2string(got, precision=6)} torch "
                       f"{np.array2string(np.array(losses), precision=6)} (max rel err {err:.1e})")
    gn = res["grad_norms"]
    err = max_rel_err(gn, norms)
    report(err < 1e-5 and min(norms) > float(meta["clip"]),
           f"pre-clip grad norms {np.array2string(gn, precision=4)} (max rel err {err:.1e}; all above the clip "
           f"{meta['clip']}, so clipping acted)")
    worst = final_weights_err(model, res)
    report(worst < 2e-5, f"final collapsed weights max |q3r - torch| = {worst:.2e} (tol 2e-5; lr 2e-3)")
    worst, moved = 0.0, 0.0
    for name, fs in chains.items():
        got = [res[f"reparam.{name}.{k}"].astype(np.float64) for k in range(len(fs))]
        want = [f.detach().numpy() for f in fs]
        if mode == "factorized":   # the sign of each (column of A, row of B) pair is the SVD's choice
            sg = np.sign((got[0] * want[0]).sum(axis=0))
            want = [want[0] * sg, want[1] * sg[:, None]]
        for k in range(len(fs)):
            worst = max(worst, np.abs(got[k] - want[k]).max())
        if mode == "lorita":
            moved = max(moved, np.abs(got[1] - np.eye(got[1].shape[0])).max())
    report(worst < 2e-5, f"final factors max |q3r - torch| = {worst:.2e} (tol 2e-5)")
    if mode == "lorita":
        report(moved > 10 * 2e-5, f"the identity factors moved by {moved:.2e} (must exceed 10x the tolerance)")
    else:
        ranks = [np.linalg.svd(res[f"final.blocks.{b}.mlp.fc1.weight"].astype(np.float64), compute_uv=False)
                 for b in range(DEPTH)]
        r = int(math.floor(0.4 * MLP * WIDTH / (MLP + WIDTH)))
        ratio = max(s[r] / s[0] for s in ranks)
        report(ratio < 1e-5, f"saved fc1 has rank <= {r}: sigma_{r + 1} / sigma_1 = {ratio:.1e}")
    return failures


def main():
    tool = tool_path("tool_reparam_steps")
    if not tool:
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        failures = run("lorita", tool, tmp) + run("factorized", tool, tmp)
    checks = 10
    print(f"{checks - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
