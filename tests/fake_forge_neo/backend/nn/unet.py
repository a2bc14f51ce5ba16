"""A tiny stand-in for backend/nn/unet.py IntegratedUNet2DConditionModel (Forge Neo 6e1e0d5) with the real
parameter names where LayerDiffuse patches: the input conv `input_blocks.0.0`, attention layers at
`<block>.1.transformer_blocks.<i>.attn1/attn2` (CrossAttention as unet.py:128 defines it, called as
BasicTransformerBlock._forward calls it, unet.py:229 / :261) and the output conv `out.2`. Channels are shrunk
(8 wide, 2 heads); there are no ResBlocks, time embedding or skip connections. Every call's input (after
KModel.apply_model concatenated c_concat onto it) is kept in `received` so tests can see what reached it."""
import torch
import torch.nn.functional as F
from torch import nn


def attention_function(q, k, v, heads, mask=None):  # backend/attention.py (pytorch sdpa), (b, n, heads*dim)
    b, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.reshape(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, -1, inner)


class CrossAttention(nn.Module):  # unet.py:128
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):  # unet.py:140
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        if value is not None:
            v = self.to_v(value)
            del value
        else:
            v = self.to_v(context)
        out = attention_function(q, k, v, self.heads, mask)
        return self.to_out(out)


class GEGLU(nn.Module):  # unet.py:106
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * torch.nn.functional.gelu(gate)


class FeedForward(nn.Module):  # unet.py:116 (gated, as SD's blocks)
    def __init__(self, dim, mult=2):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):  # unet.py:153: the two attentions and the ff (no norms' patches)
    def __init__(self, dim, n_heads, d_head, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.n_heads = n_heads
        self.d_head = d_head

    def forward(self, x, context=None, transformer_options={}):  # unet.py:177 _forward
        extra_options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
        extra_options["n_heads"] = self.n_heads
        extra_options["dim_head"] = self.d_head
        n = self.norm1(x)
        n = self.attn1(n, context=None, value=None, transformer_options=extra_options)  # unet.py:229
        x = x + n
        n = self.norm2(x)
        n = self.attn2(n, context=context, value=None, transformer_options=extra_options)  # unet.py:261
        x = x + n
        return self.ff(self.norm3(x)) + x  # unet.py:270 (is_res)


class SpatialTransformer(nn.Module):  # unet.py:276: (B, C, H, W) → tokens → blocks → (B, C, H, W)
    def __init__(self, dim, depth, n_heads, d_head, context_dim):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(dim, n_heads, d_head, context_dim) for _ in range(depth))

    def forward(self, x, context=None, transformer_options={}):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for i, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = i
            tokens = block(tokens, context=context, transformer_options=transformer_options)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


SD15_BLOCKS = tuple(f"input_blocks.{i}" for i in (1, 2, 4, 5, 7, 8)) + ("middle_block",) + tuple(
    f"output_blocks.{i}" for i in range(3, 12))  # the SD1.5 UNet's 16 spatial transformers (depth 1)
SDXL_BLOCKS = ("input_blocks.4", "input_blocks.5", "middle_block")  # a few of SDXL's (real depths 2 / 10)


class IntegratedUNet2DConditionModel(nn.Module):  # unet.py:461, shrunk
    def __init__(self, blocks=SD15_BLOCKS, depth=1, in_channels=4, out_channels=4, model_channels=8, heads=2,
                 context_dim=12, adm_in_channels=None, dtype=torch.float32):
        super().__init__()
        dim_head = model_channels // heads
        self.num_classes = "sequential" if adm_in_channels else None
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(in_channels, model_channels, 3, padding=1)])])
        self.output_blocks = nn.ModuleList()
        self._order = []
        for name in blocks:
            container, _, index = name.partition(".")
            block = nn.ModuleList([nn.Identity(), SpatialTransformer(model_channels, depth, heads, dim_head,
                                                                     context_dim)])
            if container == "middle_block":
                self.middle_block = block
            else:
                target = getattr(self, container)
                while len(target) <= int(index):
                    target.append(nn.ModuleList([nn.Identity()]))
                target[int(index)] = block
            self._order.append(name)
        self.out = nn.Sequential(nn.Identity(), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))
        # backend/loader.py:379-383 sets these on every loaded UNet
        self.storage_dtype = self.computation_dtype = dtype
        self.load_device = self.offload_device = self.initial_device = torch.device("cpu")
        self.received = []

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)  # unet.py:657
        transformer_options["transformer_index"] = 0
        assert (y is not None) == (self.num_classes is not None)
        self.received.append(x.detach().clone())
        h = self.input_blocks[0][0](x)
        for name in self._order:
            container, _, index = name.partition(".")
            transformer_options["block"] = ("middle", 0) if container == "middle_block" else (
                container.split("_")[0], int(index))
            block = self.middle_block if container == "middle_block" else getattr(self, container)[int(index)]
            h = block[1](h, context=context, transformer_options=transformer_options)
        transformer_options["block"] = ("last", 0)
        return self.out(h).type(x.dtype)
