"""The full-model oracle: q3r's ViT against an independent PyTorch ViT.

tool_vit_dump (C) builds a small ViT, writes its weights and a batch to a safetensors file,
runs forward + backward and writes logits, loss and every parameter gradient. Here the same
architecture is written in plain torch (nn.Linear, nn.LayerNorm, F.gelu, a conv2d patch
embedding; timm's layout and names; not calling q3r), loaded from those weights by name
(strict), run in float64, and compared with fp32 tolerances. Exit 77 (skip) without torch.
"""
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print(f"test_vit_torch: skipped, torch/numpy not available ({e})")
    sys.exit(77)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.heads))
        att = att.softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, channels, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    def __init__(self, image_size, channels, patch, width, depth, heads, mlp_hidden, classes):
        super().__init__()
        tokens = (image_size // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
        self.patch_embed = PatchEmbed(channels, width, patch)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, classes)

    def forward(self, img):
        x = self.patch_embed(img)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x)[:, 0])


def main():
    bindir = os.environ.get("Q3R_BINARY_DIR", os.path.join(os.path.dirname(__file__), "..", "build"))
    tool = os.path.join(bindir, "tool_vit_dump")
    if not os.path.exists(tool):
        print(f"test_vit_torch: FAIL, {tool} not built")
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
