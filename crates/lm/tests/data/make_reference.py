# Writes reference.gguf with ggml-org's own Python package (pip install gguf==0.19.0), as an independent check of
# nasc-lm's reader: each quantised tensor `<type>` of random blocks sits beside `<type>.want`, gguf-py's
# dequantisation of it to F32. Run from this folder; the output is committed, so tests need no Python.
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

rng = np.random.default_rng(7)
# Byte offsets of the f16 scales in each block; random bytes there could be NaN or huge, so they get sane values.
F16_FIELDS = {T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q4_K: [0, 2], T.Q6_K: [208]}

w = gguf.GGUFWriter("reference.gguf", arch="reference")
w.add_string("reference.note", "random blocks and gguf-py's dequantisation of them")
w.add_array("reference.primes", [2, 3, 5, 7])
w.add_float64("reference.pi", 3.141592653589793)
for qtype, fields in F16_FIELDS.items():
    block_len, block_bytes = GGML_QUANT_SIZES[qtype]
    rows, blocks_per_row = 3, 2
    data = rng.integers(0, 256, size=(rows, blocks_per_row, block_bytes), dtype=np.uint8)
    for at in fields:
        scale = rng.uniform(-0.1, 0.1, size=(rows, blocks_per_row)).astype(np.float16)
        data[:, :, at : at + 2] = scale.view(np.uint8).reshape(rows, blocks_per_row, 2)
    data = data.reshape(rows, blocks_per_row * block_bytes)
    want = gguf.quants.dequantize(data, qtype).astype(np.float32)
    assert want.shape == (rows, blocks_per_row * block_len)
    w.add_tensor(qtype.name, data, raw_dtype=qtype)
    w.add_tensor(qtype.name + ".want", want)
halves = rng.standard_normal((2, 5)).astype(np.float32)
w.add_tensor("F16", halves.astype(np.float16))
w.add_tensor("F16.want", halves.astype(np.float16).astype(np.float32))
w.add_tensor("BF16", gguf.quants.quantize(halves, T.BF16), raw_dtype=T.BF16)
w.add_tensor("BF16.want", gguf.quants.dequantize(gguf.quants.quantize(halves, T.BF16), T.BF16).astype(np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
