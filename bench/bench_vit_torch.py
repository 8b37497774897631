"""PyTorch baseline for bench_vit: the same ViT (timm layout, see tests/test_vit_torch.py),
forward + backward + AdamW step at the same batch, for 1 and 2 threads.

    /usr/bin/python3 bench/bench_vit_torch.py [--preset vit-bench] [--batch 128] [--steps 5]
                                              [--threads 1,2] [--json]

OPENBLAS_CORETYPE as bench_torch.py sets it."""
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import best_step_times, fix_openblas_core, peak_mib  # noqa: E402

fix_openblas_core()

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from test_vit_torch import ViT  # noqa: E402


PRESETS = {
    "vit-bench": dict(image_size=32, channels=1, patch=4, width=192, depth=4, heads=3, mlp_hidden=768, classes=10),
    "vit-fmnist": dict(image_size=28, channels=1, patch=7, width=128, depth=6, heads=4, mlp_hidden=512, classes=10),
    "vit-tiny": dict(image_size=32, channels=3, patch=4, width=192, depth=12, heads=3, mlp_hidden=768, classes=10),
}


def main():
    import argparse
    import json
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="vit-bench", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=str, default="1,2")
    ap.add_argument("--json", action="store_true", help="one JSON line per thread count")
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    model = ViT(**cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    size, ch = cfg["image_size"], cfg["channels"]
    x = torch.randn(args.batch, ch, size, size)
    y = torch.randint(0, cfg["classes"], (args.batch,))
    if not args.json:
        print(f"bench_vit_torch: torch {torch.__version__}, {args.preset}, batch {args.batch}, "
              f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    for th in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(th)
        best_fb, best_step, loss = best_step_times(
            model, opt, lambda m: F.cross_entropy(m(x), y, label_smoothing=0.1), args.steps)
        peak = peak_mib()
        if args.json:
            print(json.dumps({"bench": "vit_torch", "preset": args.preset, "threads": th, "batch": args.batch,
                              "ms_fwd_bwd": best_fb * 1e3, "ms_per_step": best_step * 1e3, "peak_mib": peak}))
        else:
            print(f"threads {th}: fwd+bwd {best_fb * 1e3:.1f} ms, fwd+bwd+clip+AdamW {best_step * 1e3:.1f} "
                  f"ms/step (best of {args.steps}), loss {loss.item():.4f}, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
