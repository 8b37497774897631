"""q3r adapter merge / extract against PEFT's LoRA semantics, written here in torch and numpy
(PEFT itself is not packaged): a LoRA module adds s (x A^T) B^T to its base nn.Linear, s =
lora_alpha / r (or / sqrt(r) with use_rslora); r and alpha per module come from rank_pattern /
alpha_pattern (a key matches a module name or a dotted suffix of it) else r / lora_alpha; the
tensors are base_model.model.<module>.lora_A.weight (r, in) and .lora_B.weight (out, r).

- extract: q3r's adapter of (tuned - base) equals the best rank-r factors of each Q, K, V block
  and matrix by numpy's SVD, and a fused qkv module is packed exactly (A stacked, B
  block-diagonal, alpha such that s is the blocks' scale);
- merge: an adapter written here (suffix target_modules, a rank_pattern, an alpha_pattern,
  rsLoRA) merged by q3r equals W0 + s B A, and the merged model's logits equal those of the base
  with PEFT-style LoRA layers in the forward;
- modules_to_save (PEFT's fully trained modules, e.g. a fresh classifier head): an adapter
  written here with a 3-class head under its own name (base_model.model.head.weight / .bias) and
  q3r's class split in the header metadata, merged onto the 5-class base, gives a 3-class model
  whose head is the saved one, whose metadata records the split, and whose logits equal the
  reference with that head and the LoRA layers;
- bad adapters: a clear message naming the file and key, a non-zero exit, no output.
"""
import json
import math
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Checks, require, run_q3r  # noqa: E402

require("test_adapter_torch", "numpy", "torch")
import numpy as np
import torch

import safetensors_np as st  # noqa: E402
from torch_reference import ViT  # noqa: E402

check = Checks()
CFG = dict(image_size=8, channels=1, patch=4, width=12, depth=2, heads=3, mlp_hidden=16, classes=5)
META = {"model.family": "vit", "model.name": "tiny", "model.dropout": "0", "data.name": "fashion-mnist",
        "data.mean": "0.5", "data.std": "0.25", **{f"model.{k}": str(v) for k, v in CFG.items()}}
PREFIX = "base_model.model."


def weights(model):
    return {k: v.detach().numpy().astype(np.float32).copy() for k, v in model.state_dict().items()}


def write_model(path, w):
    st.write(path, w, META)


def peft_rank_alpha(cfg, module):
    """PEFT's lookup: the first pattern key matching (.*\\.)?(key)$, else r / lora_alpha."""
    r, a = cfg["r"], cfg["lora_alpha"]
    for key, v in (cfg.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            r = v
            break
    for key, v in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            a = v
            break
    return r, a


def scale(cfg, r, a):
    return a / math.sqrt(r) if cfg.get("use_rslora") else a / r


def read_adapter(d):
    with open(os.path.join(d, "adapter_config.json")) as f:
        cfg = json.load(f)
    t, _ = st.read(os.path.join(d, "adapter_model.safetensors"))
    mods = {}
    for k, v in t.items():
        m = re.fullmatch(re.escape(PREFIX) + r"(.*)\.lora_([AB])\.weight", k)
        check(m is not None, f"adapter tensor name {k} is PEFT's")
        if m:
            mods.setdefault(m.group(1), {})[m.group(2)] = v.astype(np.float64)
    return cfg, mods


def write_adapter(d, cfg, tensors, metadata=None):
    """an adapter directory as PEFT's save_pretrained writes it"""
    st.write(os.path.join(d, "adapter_model.safetensors"), tensors, metadata)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)


def add_lora(model, lora):
    """PEFT's LoRA forward on model's modules: y = x W^T + b + s (x A^T) B^T"""
    for mod, (A, B, s) in lora.items():
        lin = model.get_submodule(mod)
        At, Bt = torch.from_numpy(A), torch.from_numpy(B)
        lin.forward = (lambda lin_, At_, Bt_, s_: lambda inp: torch.nn.functional.linear(inp, lin_.weight, lin_.bias)
                       + s_ * (inp @ At_.T) @ Bt_.T)(lin, At, Bt, s)


def best_rank(D, r):
    U, S, VT = np.linalg.svd(D.astype(np.float64), full_matrices=False)
    return (U[:, :r] * S[:r]) @ VT[:r]


def main():
    torch.manual_seed(3)
    base = ViT(**CFG)
    w0 = weights(base)
    D = CFG["width"]
    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory() as tmp:
        bpath, tpath = os.path.join(tmp, "base.safetensors"), os.path.join(tmp, "tuned.safetensors")
        write_model(bpath, w0)
        # a fine-tune: every block matrix moved by a random update (full rank, decaying spectrum)
        w1 = {k: v.copy() for k, v in w0.items()}
        for k, v in w1.items():
            if k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2:
                U = rng.standard_normal((v.shape[0], v.shape[0]))
                V = rng.standard_normal((v.shape[1], v.shape[1]))
                k_ = min(v.shape)
                spec = 0.1 * 0.5 ** np.arange(k_)
                w1[k] = (v + (U[:, :k_] * spec) @ V[:, :k_].T / 4).astype(np.float32)
        write_model(tpath, w1)

        # ---- extract -------------------------------------------------------------------------
        out = os.path.join(tmp, "extracted")
        R, ALPHA = 2, 4.0
        p = run_q3r(["adapter", "extract", bpath, tpath, out, "--rank", str(R), "--alpha", str(ALPHA),
                     "--targets", "all", "--threads", "1"], expect_ok=True)
        check(p.returncode == 0, "adapter extract runs")
        cfg, mods = read_adapter(out)
        check(cfg["peft_type"] == "LORA" and cfg["bias"] == "none" and cfg["fan_in_fan_out"] is False,
              f"config: {cfg}")
        want = {f"blocks.{l}.{m}" for l in range(CFG["depth"]) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
        check(set(mods) == want and set(cfg["target_modules"]) == want, f"modules {sorted(mods)}")
        worst = 0.0
        for mod, f in mods.items():
            r, a = peft_rank_alpha(cfg, mod)
            s = scale(cfg, r, a)
            A, B = f["A"], f["B"]
            delta = (w1[mod + ".weight"].astype(np.float64) - w0[mod + ".weight"])
            if mod.endswith("qkv"):
                check(r == 3 * R and A.shape == (3 * R, D) and B.shape == (3 * D, 3 * R), f"{mod}: rank {r}")
                check(abs(s - ALPHA / R) < 1e-12, f"{mod}: packed scale {s} is the blocks' {ALPHA / R}")
                for j in range(3):
                    off = np.delete(B[j * D:(j + 1) * D], np.s_[j * R:(j + 1) * R], axis=1)
                    check(np.all(off == 0), f"{mod}: B is block-diagonal (block {j})")
                    got = s * B[j * D:(j + 1) * D, j * R:(j + 1) * R] @ A[j * R:(j + 1) * R]
                    ref = best_rank(delta[j * D:(j + 1) * D], R)
                    worst = max(worst, np.abs(got - ref).max() / np.abs(ref).max())
            else:
                check(r == R and A.shape[0] == R and B.shape[1] == R, f"{mod}: rank {r}")
                ref = best_rank(delta, R)
                worst = max(worst, np.abs(s * B @ A - ref).max() / np.abs(ref).max())
        check(worst < 1e-5, f"extract: s B A against numpy's best rank-{R} update: max rel err {worst:.3g}")
        print(f"extract vs numpy SVD: max rel err {worst:.3g}")

        # ---- merge an adapter written here, PEFT's way ----------------------------------------
        ad = os.path.join(tmp, "reference_adapter")
        os.makedirs(ad)
        cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["qkv", "fc1"],
               "rank_pattern": {"blocks.1.mlp.fc1": 2}, "alpha_pattern": {"blocks\\.0+\\.attn\\.q[kv+]+": 3},
               "use_rslora": True, "bias": "none", "fan_in_fan_out": False, "lora_dropout": 0.1,
               "modules_to_save": None, "init_lora_weights": True, "inference_mode": False, "use_dora": False,
               "base_model_name_or_path": "tiny", "task_type": None, "layers_to_transform": None,
               "layers_pattern": None, "revision": None, "megatron_config": None, "megatron_core": "megatron.core",
               "loftq_config": {}}
        tensors = {}
        lora = {}
        for l in range(CFG["depth"]):
            for mod, (rows, cols) in ((f"blocks.{l}.attn.qkv", (3 * D, D)), (f"blocks.{l}.mlp.fc1", (CFG["mlp_hidden"], D))):
                r, a = peft_rank_alpha(cfg, mod)
                A = rng.standard_normal((r, cols)).astype(np.float32) / 4
                B = rng.standard_normal((rows, r)).astype(np.float32) / 4
                tensors[f"{PREFIX}{mod}.lora_A.weight"] = A
                tensors[f"{PREFIX}{mod}.lora_B.weight"] = B
                lora[mod] = (A, B, scale(cfg, r, a))
        write_adapter(ad, cfg, tensors)
        merged = os.path.join(tmp, "merged.safetensors")
        p = run_q3r(["adapter", "merge", bpath, ad, merged, "--threads", "1"], expect_ok=True)
        check(p.returncode == 0, "adapter merge runs")
        wm, mmeta = st.read(merged)
        worst = 0.0
        for k, v in w0.items():
            mod = k[: -len(".weight")]
            if mod in lora:
                A, B, s = lora[mod]
                ref = v.astype(np.float64) + s * B.astype(np.float64) @ A.astype(np.float64)
                worst = max(worst, np.abs(wm[k] - ref).max() / np.abs(ref).max())
            else:
                check(np.array_equal(wm[k], v), f"merge left {k} alone")
        check(worst < 1e-6, f"merge: W0 + s B A, max rel err {worst:.3g}")
        check(mmeta.get("model.name") == "tiny" and "adapter.merged" in mmeta, f"merged metadata {mmeta}")

        # the merged model's logits against the base with PEFT-style LoRA layers in the forward
        x = torch.randn(4, CFG["channels"], CFG["image_size"], CFG["image_size"])
        ref = ViT(**CFG)
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in w0.items()})
        add_lora(ref, lora)
        mm = ViT(**CFG)
        mm.load_state_dict({k: torch.from_numpy(v) for k, v in wm.items()})
        with torch.no_grad():
            a_, b_ = ref(x), mm(x)
        e = (a_ - b_).abs().max().item() / a_.abs().max().item()
        check(e < 1e-5, f"merged logits against the LoRA forward: rel err {e:.3g}")

        # ---- modules_to_save: a fresh 3-class head beside the LoRA factors ----------------------
        ad2 = os.path.join(tmp, "reference_adapter_head")
        os.makedirs(ad2)
        cfg2 = dict(cfg, modules_to_save=["head"])
        head_w = rng.standard_normal((3, D)).astype(np.float32)
        head_b = rng.standard_normal(3).astype(np.float32)
        t2 = dict(tensors, **{f"{PREFIX}head.weight": head_w, f"{PREFIX}head.bias": head_b})
        write_adapter(ad2, cfg2, t2, {"format": "pt", "q3r.data.classes": "2-4"})
        merged2 = os.path.join(tmp, "merged_head.safetensors")
        p = run_q3r(["adapter", "merge", bpath, ad2, merged2, "--threads", "1"], expect_ok=True)
        check(p.returncode == 0, "adapter merge with modules_to_save runs")
        wm2, mmeta2 = st.read(merged2)
        check(wm2["head.weight"].shape == (3, D) and np.array_equal(wm2["head.weight"], head_w)
              and np.array_equal(wm2["head.bias"], head_b), "modules_to_save: the merged head is the saved one")
        check(mmeta2.get("data.classes") == "2-4" and mmeta2.get("model.classes") == "3",
              f"modules_to_save: metadata classes {mmeta2.get('data.classes')}, model.classes {mmeta2.get('model.classes')}")
        check(all(np.array_equal(wm2[k], wm[k]) for k in wm if not k.startswith("head.")),
              "modules_to_save: every other tensor as the plain merge")
        ref3 = ViT(**dict(CFG, classes=3))
        ref3.load_state_dict({k: torch.from_numpy(v) for k, v in dict(w0, **{"head.weight": head_w, "head.bias": head_b}).items()})
        add_lora(ref3, lora)
        mm3 = ViT(**dict(CFG, classes=3))
        mm3.load_state_dict({k: torch.from_numpy(v) for k, v in wm2.items()})
        with torch.no_grad():
            a_, b_ = ref3(x), mm3(x)
        e = (a_ - b_).abs().max().item() / a_.abs().max().item()
        check(e < 1e-5, f"modules_to_save: merged logits against the reference: rel err {e:.3g}")

        # ---- bad adapters ---------------------------------------------------------------------
        def bad(mutate, want, what, files=None):
            d = os.path.join(tmp, "bad")
            os.makedirs(d, exist_ok=True)
            c = json.loads(json.dumps(cfg))
            t = dict(tensors)
            mutate(c, t)
            write_adapter(d, c, t)
            o = os.path.join(tmp, "bad_out.safetensors")
            p = run_q3r(["adapter", "merge", bpath, d, o])
            check(p.returncode != 0 and want in p.stderr and not os.path.exists(o),
                  f"{what}: exit {p.returncode}, stderr {p.stderr.strip()}")

        bad(lambda c, t: c.pop("r"), "'r'", "no r")
        bad(lambda c, t: c.update(foo=1), "'foo'", "unknown key")
        bad(lambda c, t: c.update(peft_type="IA3"), "IA3", "other peft_type")
        bad(lambda c, t: c.update(use_dora=True), "use_dora", "DoRA")
        bad(lambda c, t: c.update(r=5), "rank", "ranks disagree with the tensors")
        bad(lambda c, t: c.update(target_modules=["fc1"]), "target_modules", "a module outside target_modules")
        bad(lambda c, t: t.update({f"{PREFIX}norm.weight": np.ones(D, np.float32)}), "modules_to_save",
            "a whole tensor of a module not in modules_to_save")
        bad(lambda c, t: (c.update(modules_to_save=["norm"]), t.update({f"{PREFIX}norm.weight": np.ones(D + 1, np.float32)})),
            "norm.weight", "a saved tensor of another shape")
        bad(lambda c, t: c.update(modules_to_save="head"), "modules_to_save", "modules_to_save not a list")
        # ranks past INT_MAX or fractional are refused (fuzz/corpus/adapter/regress-rank-past-int: 1e10
        # was converted to int, undefined behaviour)
        bad(lambda c, t: c.update(r=1e10), "'r'", "r past INT_MAX")
        bad(lambda c, t: c.update(rank_pattern={"blocks.1.mlp.fc1": 2.5}), "rank_pattern", "a fractional rank")
        # regexes glibc's regcomp cannot take: an interval it expands for a minute
        # (fuzz/corpus/adapter/regress-regex-interval), nesting that overflows its stack
        bad(lambda c, t: c.update(rank_pattern={"(x{1,100}){1,100}{1,100}": 2}), "interval", "a regex interval")
        bad(lambda c, t: c.update(alpha_pattern={"(" * 20000 + "fc1" + ")" * 20000: 2}), "longer than",
            "20000 nested parentheses")
        bad(lambda c, t: c.update(target_modules="(qkv|fc1){2}"), "target_modules", "an interval in target_modules")
        # '+' copies what it repeats: nested or stacked ones double the pattern each
        # (fuzz/corpus/adapter/regress-regex-plus: 40 took all memory); '+' in brackets or escaped is literal
        bad(lambda c, t: c.update(rank_pattern={"(((x)+)+)" + "+" * 7: 2}), "repetitions", "nine '+' repetitions")

        def no_module(c, t):
            t[f"{PREFIX}blocks.7.attn.qkv.lora_A.weight"] = np.zeros((4, D), np.float32)
            t[f"{PREFIX}blocks.7.attn.qkv.lora_B.weight"] = np.zeros((3 * D, 4), np.float32)
        bad(no_module, "blocks.7.attn.qkv", "a module that names nothing in the base")

        def wrong_shape(c, t):
            t[f"{PREFIX}blocks.0.mlp.fc1.lora_A.weight"] = np.zeros((4, D + 1), np.float32)
        bad(wrong_shape, "blocks.0.mlp.fc1", "a module of another shape")
        p = run_q3r(["adapter", "extract", bpath, tpath, os.path.join(tmp, "x"), "--rank", "13"])
        check(p.returncode != 0 and "rank 13" in p.stderr, f"rank above the matrix: {p.stderr.strip()}")
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
