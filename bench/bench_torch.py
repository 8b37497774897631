"""What the torch baselines of the training-step benches (bench_vit_torch.py, bench_gpt_torch.py)
share: the OPENBLAS_CORETYPE rule, and the timed training step.

OPENBLAS_CORETYPE is set the way q3r_startup does for the q3r benches: on a CPU with the
AVX-512 set OpenBLAS's SkylakeX kernels need, and the variable unset, we set it to SkylakeX and
re-execute (OpenBLAS reads it only when it loads). (q3r also checks which core OpenBLAS picked;
torch does not expose that, so here the CPU flags alone decide.)"""
import os
import resource
import sys
import time


def fix_openblas_core():
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":")[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return
    if all(x in flags for x in ("avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl")):
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
        os.execv(sys.executable, [sys.executable] + sys.argv)


def best_step_times(model, opt, loss_of, steps):
    """The best forward+backward+clip and whole-step (with opt.step) seconds over `steps` steps
    after one warm-up step, and the last step's loss; loss_of(model) computes the loss."""
    import torch
    best_fb, best_step = 1e30, 1e30
    for s in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = loss_of(model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if s:  # the first is warm-up
            best_fb, best_step = min(best_fb, t1 - t0), min(best_step, t2 - t0)
    return best_fb, best_step, loss


def peak_mib():
    """The process's peak resident memory in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
