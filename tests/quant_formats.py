"""The quantised weight formats FLUX.1 checkpoints come in, for the fakes of Forge main and Neo: GGUF (Q8_0 and the
K-quants) and bitsandbytes NF4. The bytes are the real formats: GGUF files are written and read with the `gguf`
package (gguf-py, which Forge vendors as packages_3rdparty/gguf and Neo as modules_forge/packages/gguf), and their
blocks decoded with its reference dequantisers; NF4 is bitsandbytes' 4-bit NormalFloat code (functional.py
get_4bit_type("nf4")) over blocks of 64 with an absmax per block.

`gguf_quant_class(qtype)` stands in for the hosts' quant classes (Forge main packages_3rdparty/gguf/quants.py:83-253,
Neo modules_forge/packages/gguf/quants.py:107-300) with the interface their operations and LoRA loader call: bake,
dequantize_pytorch, quantize_pytorch / quantize_blocks_pytorch. Where the host's class has no
quantize_blocks_pytorch (every K-quant: quants.py:175-178 raises NotImplementedError with "Low bit LoRA for this
data type is not implemented yet ..."), the stand-in raises the same."""
from __future__ import annotations

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

# the types whose class in the hosts' quants.py implements quantize_blocks_pytorch (Forge main: Q4_0 :326,
# Q5_0 :470, Q8_0 :614; Neo the same three: :390, :563, :731)
REQUANTISABLE = {T.Q4_0, T.Q5_0, T.Q8_0}
NOT_IMPLEMENTED = ('Low bit LoRA for this data type is not implemented yet. Please select "Automatic (fp16 LoRA)" in '
                   '"Diffusion in Low Bits" (on the top line of this page) to use this LoRA.')  # quants.py:178


def gguf_quant_class(qtype: T):
    """A class with the hosts' quant-class interface for `qtype`, decoding with gguf-py's reference code. Baking
    (quants.py:142-155) views the data as (n_blocks, type_size) bytes; the hosts then re-pack the scales for speed,
    which changes no value, so the stand-in keeps gguf's own byte layout."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]

    class Quant:
        @classmethod
        def bake(cls, parameter):  # quants.py:142
            if parameter.baked:
                return
            rows = parameter.data.reshape((-1, parameter.data.shape[-1])).view(torch.uint8)
            parameter.data = rows.reshape((rows.numel() // type_size, type_size)).contiguous()
            parameter.baked = True

        @classmethod
        def dequantize_pytorch(cls, x):  # quants.py:161
            if not x.baked:
                raise ValueError("GGUF Tensor is not baked!")
            blocks = gguf_quants.dequantize(x.data.cpu().numpy(), qtype)
            return torch.from_numpy(np.ascontiguousarray(blocks)).to(x.computation_dtype).view(x.shape)

        @classmethod
        def quantize_pytorch(cls, data, parent):  # quants.py:132
            if not parent.baked:
                raise ValueError("GGUF Tensor is not baked!")
            blocks = data.reshape(-1, block_size)
            parent.data = cls.quantize_blocks_pytorch(blocks, block_size, type_size, parent).contiguous()
            return parent

        @classmethod
        def quantize_blocks_pytorch(cls, blocks, block_size_, type_size_, parent):  # quants.py:175 / Q8_0 :614
            if qtype not in REQUANTISABLE:
                raise NotImplementedError(NOT_IMPLEMENTED)
            q = gguf_quants.quantize(blocks.detach().float().cpu().numpy(), qtype)
            return torch.from_numpy(np.ascontiguousarray(q)).view(torch.uint8)

    Quant.__name__ = Quant.__qualname__ = qtype.name
    return Quant


def k_quant_bytes(rows: int, cols: int, qtype: T, scale: float, seed: int) -> np.ndarray:
    """Random Q4_K / Q5_K / Q6_K-free blocks, valid in the format: (rows, cols / 256 * type_size) uint8. gguf-py
    cannot quantise K-quants, so the blocks are made directly: every sub-block scale and min 32 (6-bit fields packed
    as quants.py Q4_K.get_scale_min unpacks them), d and dmin chosen so the values lie in [-scale, scale], the
    quants uniform. Decoded with gguf_quants.dequantize."""
    if qtype not in (T.Q4_K, T.Q5_K):
        raise ValueError(qtype)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert cols % block_size == 0
    n = rows * cols // block_size
    rng = np.random.default_rng(seed)
    levels = 15 if qtype == T.Q4_K else 31
    d = np.full((n, 1), scale / (32 * levels / 2), dtype=np.float16).view(np.uint8)  # value = d*32*q - dmin*32
    dmin = np.full((n, 1), scale / 32, dtype=np.float16).view(np.uint8)
    # 12 scale bytes: sc/m 0..3 in the low 6 bits of bytes 0..3 / 4..7; sc/m 4..7: low 4 bits in bytes 8..11, high
    # 2 bits in the top of bytes 0..3 / 4..7. 32 = 0b10_0000: low nibble 0, high bits 0b10.
    scales = np.tile(np.array([0xA0] * 8 + [0x00] * 4, dtype=np.uint8), (n, 1))
    qs = rng.integers(0, 256, size=(n, block_size // 2), dtype=np.uint8)
    parts = [d, dmin, scales]
    if qtype == T.Q5_K:
        parts.append(rng.integers(0, 256, size=(n, block_size // 8), dtype=np.uint8))  # the 5th bits
    parts.append(qs)
    blocks = np.concatenate(parts, axis=1)
    assert blocks.shape[1] == type_size
    return blocks.reshape(rows, cols // block_size * type_size)


def quantised_bytes(weight: np.ndarray, qtype: T, seed: int = 0) -> np.ndarray:
    """weight (float32, rows x cols) as `qtype` blocks; K-quants are made random at the weight's scale."""
    if qtype in (T.Q4_K, T.Q5_K):
        return k_quant_bytes(weight.shape[0], weight.shape[1], qtype, float(np.abs(weight).max()), seed)
    return gguf_quants.quantize(weight.astype(np.float32), qtype)


def write_gguf(path, tensors: dict) -> None:
    """tensors: name -> (float32 array, GGMLQuantizationType); F32 / F16 stored as such, others quantised."""
    writer = gguf.GGUFWriter(str(path), "flux")
    for i, (name, (array, qtype)) in enumerate(tensors.items()):
        if qtype == T.F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif qtype == T.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            data = quantised_bytes(array, qtype, seed=i)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# bitsandbytes functional.py get_4bit_type("nf4"): the 16 NormalFloat levels
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])
NF4_BLOCKSIZE = 64


def nf4_quantize(weight: torch.Tensor, blocksize: int = NF4_BLOCKSIZE):
    """-> (packed uint8 [numel / 2, 1], absmax per block): the nearest NF4 level of each value / its block's absmax,
    two 4-bit codes per byte (first value in the high nibble, as bitsandbytes packs them)."""
    flat = weight.detach().float().reshape(-1, blocksize)
    absmax = flat.abs().amax(dim=1).clamp_min(1e-12)
    codes = (flat / absmax[:, None]).unsqueeze(-1).sub(NF4_LEVELS).abs().argmin(dim=-1).to(torch.uint8).reshape(-1)
    packed = (codes[0::2] << 4) | codes[1::2]
    return packed.reshape(-1, 1), absmax


def nf4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE):
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1).long()
    values = NF4_LEVELS[codes].reshape(-1, blocksize) * absmax[:, None]
    return values.reshape(tuple(shape))
