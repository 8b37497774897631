"""safetensors interoperability: a file written here (an independent numpy writer) is read
by C, and C's rewrite of it (tests/tool_optim.c `copy`) is read back here by an independent
parser that also checks the layout rules (8-byte padded header, contiguous data in header
order). Exit 77 (skip) without numpy."""
import json, os, struct, subprocess, sys, tempfile

try:
    import numpy as np
except ImportError:
    sys.exit(77)

DT = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "U8": "u1"}


def st_write(path, tensors, meta, reverse_data=False, pad=True):
    header, blobs, off = {"__metadata__": meta}, {}, 0
    order = list(tensors)[::-1] if reverse_data else list(tensors)
    for k in order:  # data laid out in `order`, header lists tensors in dict order
        b = np.ascontiguousarray(tensors[k][1]).astype(DT[tensors[k][0]]).tobytes()
        blobs[k] = (off, b)
        off += len(b)
    for k, (dt, a) in tensors.items():
        s, b = blobs[k]
        header[k] = {"dtype": dt, "shape": list(np.shape(a)), "data_offsets": [s, s + len(b)]}
    h = json.dumps(header, ensure_ascii=False).encode("utf-8")
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs[k][1] for k in order))


def st_read(path):
    b = open(path, "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    assert (8 + n) % 8 == 0, "header not padded to 8 bytes"
    h = json.loads(b[8:8 + n].decode("utf-8"))
    meta = h.pop("__metadata__", None)
    data = b[8 + n:]
    pos, out = 0, {}
    for k, v in h.items():  # C writes data in header order, contiguous
        s, e = v["data_offsets"]
        assert s == pos, f"{k}: data not contiguous in header order"
        pos = e
        a = np.frombuffer(data[s:e], dtype=DT[v["dtype"]]).reshape(v["shape"])
        out[k] = (v["dtype"], a)
    assert pos == len(data), "trailing data"
    return out, meta


def main():
    tool = os.path.join(os.environ.get("Q3R_BINARY_DIR", "build"), "tool_optim")
    if not os.access(tool, os.X_OK):
        print(f"missing {tool}")
        return 1
    rng = np.random.default_rng(3)
    tensors = {
        "blocks.0.attn.qkv.weight": ("F32", rng.standard_normal((6, 4)).astype(np.float32)),
        "f64.4d": ("F64", rng.standard_normal((2, 3, 1, 2))),
        "i64": ("I64", np.array([-(2 ** 63), -1, 0, 2 ** 63 - 1], dtype=np.int64)),
        "u8": ("U8", np.arange(256, dtype=np.uint8)),
        "scalar": ("F32", np.array(3.5, dtype=np.float32)),
        "empty": ("F64", np.zeros((0, 3))),
        "ünïcode name": ("U8", np.array([7], dtype=np.uint8)),
    }
    meta = {"model": "vit", "config": "{\"depth\": 12}", "é": "ü\n\t\"x\""}
    fails = 0
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ({}, {"reverse_data": True}, {"pad": False}):
            inp, outp = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
            st_write(inp, tensors, meta, **variant)
            r = subprocess.run([tool, "copy", inp, outp], capture_output=True, text=True)
            if r.returncode != 0:
                print(variant, r.stderr)
                fails += 1
                continue
            got, gmeta = st_read(outp)
            if list(got) != list(tensors):
                print(variant, "names/order differ:", list(got)); fails += 1
            for k, (dt, a) in tensors.items():
                if k not in got:
                    continue
                gdt, ga = got[k]
                if gdt != dt or ga.shape != np.shape(a) or ga.tobytes() != np.asarray(a).astype(DT[dt]).tobytes():
                    print(variant, f"tensor {k} differs: {gdt} {ga.shape}"); fails += 1
            want_meta = dict(meta, copied="yes")
            if gmeta != want_meta:
                print(variant, "metadata differs:", gmeta); fails += 1
        # A corrupt file from here (overlap) must be refused by C with a message.
        bad = os.path.join(tmp, "bad.safetensors")
        h = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
        open(bad, "wb").write(struct.pack("<Q", len(h)) + h + bytes(12))
        r = subprocess.run([tool, "copy", bad, os.path.join(tmp, "x.safetensors")], capture_output=True, text=True)
        if r.returncode == 0 or "overlaps" not in r.stderr:
            print("overlap not refused:", r.returncode, r.stderr); fails += 1
    print("test_io_torch:", "FAILED" if fails else "ok")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
