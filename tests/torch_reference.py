"""The PyTorch references the Python tests share (importing it needs torch and numpy):

- GPT: nanoGPT's GPT (bias=True) written here in plain torch with nanoGPT's parameter names
  (transformer.wte/wpe/h.{l}.ln_1/attn.c_attn/attn.c_proj/ln_2/mlp.c_fc/mlp.c_proj/ln_f,
  lm_head; the head tied to wte by default), the oracle of test_gpt_torch.py;
- ViT: the ViT written in plain torch (nn.Linear, nn.LayerNorm, F.gelu, a conv2d patch
  embedding; timm's layout and names; not calling q3r), the oracle of test_vit_torch.py;
- compare_forward_backward: how those two oracles check a tool_*_dump result;
- what the trainer-step tests (test_train_torch.py, test_lorita_torch.py) do alike: run a
  tool_*_steps program and load what it wrote (the batches and the initial weights of its
  small ViT, its hyperparameters, its results), torch.optim.AdamW with decay on one group of
  parameters stepped at the closed-form learning rate, and the errors they compare."""
import math
import os
import subprocess

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import safetensors_np
from q3r_testing import lr_at


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


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.heads))
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class GPTMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class GPTBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = GPTMLP(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's GPT without dropout (bias=True, LayerNorm eps 1e-5); tie_head=1 ties lm_head to
    wte as nanoGPT does (state_dict() then holds both names on one tensor)."""

    def __init__(self, width, depth, heads, context, mlp_hidden=None, vocab=256, tie_head=1, **_):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, width),
            wpe=nn.Embedding(context, width),
            h=nn.ModuleList([GPTBlock(width, heads, mlp_hidden or 4 * width) for _ in range(depth)]),
            ln_f=nn.LayerNorm(width),
        ))
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if tie_head:
            self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
        for b in self.transformer.h:
            x = b(x)
        return self.lm_head(self.transformer.ln_f(x))


def gpt_config(meta):
    """GPT(**gpt_config(meta)) from a q3r model file's "model.*" metadata."""
    keys = ("width", "depth", "heads", "context", "mlp_hidden", "vocab", "tie_head")
    return {k: int(meta["model." + k]) for k in keys}


# ---- trainer steps -----------------------------------------------------------------------------

def compare_forward_backward(check, what, r, logits, loss, model):
    """Checks a tool_*_dump result r (q3r's "logits", "loss" and "grad.<name>") with check (a
    q3r_testing.Checks) against the float64 torch model after loss.backward(): logits and loss
    to 1e-5, every parameter gradient to 2e-5, each error relative to the torch tensor's
    largest magnitude (fp32 accumulations against float64), and the same parameter set on both
    sides. `what` prefixes every message. Gives the number of gradients compared."""

    def compare(name, got, want, rtol):
        got = np.asarray(got, dtype=np.float64)
        want = want.detach().numpy()
        if not check(got.shape == want.shape, f"{what}{name}: shape {got.shape} vs torch {want.shape}"):
            return
        scale = max(np.abs(want).max(), 1e-6)
        err = np.abs(got - want).max() / scale
        if check(err <= rtol, f"{what}{name}: max err / max |ref| = {err:.2e} (tol {rtol:g})"):
            print(f"ok   {what}{name}: {err:.2e}")

    compare("logits", r["logits"], logits, 1e-5)
    compare("loss", r["loss"], loss.reshape(1), 1e-5)
    n = 0
    for name, p in model.named_parameters():
        compare("grad." + name, r["grad." + name], p.grad, 2e-5)
        n += 1
    check(n == len([k for k in r if k.startswith("grad.")]), f"{what}q3r and torch parameter sets agree")
    return n


# the ViT of tests/support/steps.c
STEPS_VIT = dict(image_size=16, channels=1, patch=4, width=32, depth=2, heads=2, mlp_hidden=64, classes=10)


# the GPT of tests/support/steps.c (tool_train_steps ... gpt)
STEPS_GPT = dict(width=32, depth=2, heads=2, context=16, mlp_hidden=128, tie_head=1)


def run_steps_tool(tool, mode, tmp, family="vit"):
    """Runs `tool MODE IN OUT [gpt]` in tmp; gives (meta, results, batches, model): IN's
    metadata, OUT's tensors, the [(inputs, targets)] of every step (images and labels, or
    bytes and next bytes) and the float64 ViT or GPT loaded (strict) from IN's initial
    weights."""
    inp = os.path.join(tmp, f"{family}-{mode}-in.safetensors")
    outp = os.path.join(tmp, f"{family}-{mode}-out.safetensors")
    subprocess.run([tool, mode, inp, outp] + ([family] if family != "vit" else []), check=True)
    w, meta = safetensors_np.read(inp)
    res, _ = safetensors_np.read(outp)
    x, y = ("tokens", "targets") if family == "gpt" else ("images", "labels")
    batches = [(torch.from_numpy(w.pop(f"batch.{s}.{x}")), torch.from_numpy(w.pop(f"batch.{s}.{y}")))
               for s in range(int(meta["steps"]))]
    if family == "vit":
        batches = [(a.double(), b) for a, b in batches]
    model = (GPT(**STEPS_GPT) if family == "gpt" else ViT(**STEPS_VIT)).double()
    model.load_state_dict({k: torch.from_numpy(v).double() for k, v in w.items()}, strict=True)
    return meta, res, batches, model


def adamw(decay, no_decay, meta):
    """AdamW with meta's weight decay on `decay` and none on `no_decay`; step it with adamw_step."""
    return torch.optim.AdamW([{"params": decay, "weight_decay": float(meta["weight_decay"])},
                              {"params": no_decay, "weight_decay": 0.0}], lr=1.0)


def step_lr(meta, s):
    """The learning rate of step s: meta's warmup+cosine schedule in closed form."""
    return lr_at(s, float(meta["lr"]), float(meta["min_lr"]), int(meta["warmup"]), int(meta["steps"]))


def step_loss(model, x, y, meta):
    z = model(x)
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), label_smoothing=float(meta["label_smoothing"]))


def adamw_step(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()


def max_rel_err(got, want):
    """max |got - want| / max |want|"""
    want = np.array(want)
    return np.abs(got - want).max() / np.abs(want).max()


def final_weights_err(model, res, where=None):
    """max over the model's parameters of |res["final.<name>"] - parameter|; where: {name: a
    boolean mask of the entries to compare} (None: all)"""
    worst = 0.0
    for name, p in model.named_parameters():
        d = np.abs(res["final." + name].astype(np.float64) - p.detach().numpy())
        if where is not None:
            d = d[where[name]]
        worst = max(worst, d.max(initial=0.0))
    return worst
