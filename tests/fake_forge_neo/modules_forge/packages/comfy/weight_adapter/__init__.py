# modules_forge/packages/comfy/weight_adapter/__init__.py (Forge Neo 6e1e0d5; ComfyUI v0.3.77): only the LoRA
# adapter is faked (the others — LoHa, LoKr, OFT, BOFT, GLoRA — LayerDiffuse does not use)
from . import base  # noqa: F401  (backend/patcher/lora.py:102 reads weight_adapter.base.pad_tensor_to_shape)
from .base import WeightAdapterBase  # weight_adapter/__init__.py:5
from .lora import LoRAAdapter  # weight_adapter/__init__.py:10

adapters = [LoRAAdapter]  # weight_adapter/__init__.py:14
adapter_maps = {"LoRA": LoRAAdapter}  # weight_adapter/__init__.py:24

__all__ = ["LoRAAdapter", "WeightAdapterBase", "adapter_maps", "adapters"]
