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
from q3r_testing import Checks, require, tool_path  # noqa: E402

require("test_vit_torch", "numpy", "torch")
import safetensors_np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch_reference import ViT, compare_forward_backward  # noqa: E402


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

    check = Checks()
    n = compare_forward_backward(check, "", r, logits, loss, model)
    print(f"test_vit_torch: {n} gradients compared")
    return check.finish()

if __name__ == "__main__":
    sys.exit(main())
