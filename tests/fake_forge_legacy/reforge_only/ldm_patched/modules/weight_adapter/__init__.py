"""ldm_patched/modules/weight_adapter/__init__.py (3b56b268 only; bfee03d8 has no weight_adapter package)."""
from .base import WeightAdapterBase
from .lora import LoRAAdapter

__all__ = ["WeightAdapterBase", "LoRAAdapter"]
