"""The full-model oracle: q3r's ViT against an independent PyTorch ViT.

tool_vit_dump (C) builds a small ViT, writes its weights and a batch to a safetensors file,
runs forward + backward and writes logits, loss and every parameter gradient. Here the same
architecture is written in plain torch (torch_reference.ViT: nn.Linear, nn.LayerNorm, F.gelu,
a conv2d patch embedding; timm's layout and names; not calling q3r), loaded from those weights
by name (strict), run in float64, and compared with fp32 tolerances. Exit 77 (skip) without
torch.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
from q3r_testing import tool_path  # noqa: E402

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch_reference import ViT
except ImportError as e:
    print(f"test_vit_torch: skipped, torch/numpy not available ({e})")
    sys.exit(77)


def main():
    tool = tool_path("tool_vit_dump")
    if not tool:
        return 1
    with tempfile.TemporaryDirectory() as d:
        wpath, rpath = os.path.join(d, "w.safetensors"), os.path.join(d, "r.safetensors")
        subprocess.run([tool, wpath, rpath], check=True)
        w, meta = safetensors_np.read(wpath)
        r, _ = safetensors_np.read(rpath)
    cfg = {k: int(v) for k, v in meta.items() if k != "label_smoothing"}
    ls = float(meta["label_smoothing"])
    images = torch.from_numpy(w.pop("images")).double()
    labels = torch.from_numpy(w.pop("labels"))
    torch.manual_seed(0)
    model = ViT(**cfg).double()
    model.load_state_dict({k: torch.from_numpy(v).double() for k, v in w.items()}, strict=True)
    logits = model(images)
    loss = F.cross_entropy(logits, labels, label_smoothing=ls)
    loss.backward()

    failures = 0

    def compare(name, got, want, rtol):
        nonlocal failures
        got = np.asarray(got, dtype=np.float64)
        want = want.detach().numpy()
        if got.shape != want.shape:
            print(f"FAIL {name}: shape {got.shape} vs torch {want.shape}")
            failures += 1
            return
        # error relative to the tensor's scale: fp32 accumulations against float64
        scale = max(np.abs(want).max(), 1e-6)
        err = np.abs(got - want).max() / scale
        ok = err <= rtol
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max err / max |ref| = {err:.2e} (tol {rtol:g})")

    compare("logits", r["logits"], logits, 1e-5)
    compare("loss", r["loss"], loss.reshape(1), 1e-5)
    n = 0
    for name, p in model.named_parameters():
        compare("grad." + name, r["grad." + name], p.grad, 2e-5)
        n += 1
    if n != len([k for k in r if k.startswith("grad.")]):
        print("FAIL: q3r and torch parameter sets differ")
        failures += 1
    print(f"test_vit_torch: {n} gradients compared, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
