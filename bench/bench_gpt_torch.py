"""PyTorch baseline for bench_gpt: nanoGPT's GPT (tests/torch_reference.GPT, tied head),
forward + backward + clip + AdamW at the same batch and context.

    /usr/bin/python3 bench/bench_gpt_torch.py [--preset gpt-tiny] [--batch 32] [--context 128]
                                              [--steps 5] [--threads 1,2] [--json]

OPENBLAS_CORETYPE as bench_torch.py sets it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import best_step_times, fix_openblas_core, peak_mib  # noqa: E402

fix_openblas_core()

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch_reference import GPT  # noqa: E402

PRESETS = {
    "gpt-tiny": dict(width=128, depth=4, heads=4, context=128, mlp_hidden=512),
    "gpt-small": dict(width=256, depth=6, heads=8, context=256, mlp_hidden=1024),
}


def main():
    import argparse
    import json
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="gpt-tiny", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=0, help="0: the preset's")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=str, default="1,2")
    ap.add_argument("--json", action="store_true", help="one JSON line per thread count")
    args = ap.parse_args()
    cfg = dict(PRESETS[args.preset])
    if args.context:
        cfg["context"] = args.context
    torch.manual_seed(0)
    model = GPT(**cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randint(0, 256, (args.batch, cfg["context"]))
    y = torch.roll(x, -1, dims=1)
    if not args.json:
        print(f"bench_gpt_torch: torch {torch.__version__}, {args.preset}, batch {args.batch}, "
              f"context {cfg['context']}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    for th in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(th)
        best_fb, best_step, loss = best_step_times(
            model, opt, lambda m: F.cross_entropy(m(x).reshape(-1, 256), y.reshape(-1)), args.steps)
        peak = peak_mib()
        tokens = args.batch * cfg["context"]
        if args.json:
            print(json.dumps({"bench": "gpt_torch", "preset": args.preset, "threads": th, "batch": args.batch,
                              "context": cfg["context"], "ms_fwd_bwd": best_fb * 1e3,
                              "ms_per_step": best_step * 1e3, "tok_per_s": tokens / best_step,
                              "peak_mib": peak}))
        else:
            print(f"threads {th}: fwd+bwd {best_fb * 1e3:.1f} ms, fwd+bwd+clip+AdamW {best_step * 1e3:.1f} "
                  f"ms/step ({tokens / best_step:.0f} tok/s, best of {args.steps}), loss {loss.item():.4f}, "
                  f"peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
