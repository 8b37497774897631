"""A tiny numpy reader/writer for safetensors files (no dependency on the safetensors package).

Layout: an 8-byte little-endian u64 N, N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the raw little-endian tensor bytes; offsets are relative to the end of the header.

    tensors, metadata = read(path)        # dict name -> np.ndarray, dict or None
    write(path, tensors, metadata=None)   # tensors: dict name -> np.ndarray
    write(path, {"w": bf16_bits}, dtypes={"w": "BF16"})  # raw bits under another dtype name
"""
import json
import struct

import numpy as np

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8,
           "I32": np.int32, "F16": np.float16, "I16": np.int16, "I8": np.int8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} past the end of the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        dt = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * dt.itemsize or end > len(data):
            raise ValueError(f"{path}: tensor {name}: offsets {begin}..{end} do not fit {shape}")
        out[name] = np.frombuffer(data, dtype=dt, count=count, offset=begin).reshape(shape).copy()
    return out, meta


def write(path, tensors, metadata=None, dtypes=None):
    """dtypes: {name: safetensors dtype} for arrays whose bytes are another dtype's bits
    (numpy has no bfloat16: pass its bits as int16 or uint16 with "BF16")."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        b = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        dt = (dtypes or {}).get(name) or _NAMES[arr.dtype]
        if np.dtype(_DTYPES.get(dt, np.int16)).itemsize != arr.dtype.itemsize:
            raise ValueError(f"tensor {name}: {arr.dtype} bytes cannot be written as {dt}")
        header[name] = {"dtype": dt, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header).encode("utf-8")
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
