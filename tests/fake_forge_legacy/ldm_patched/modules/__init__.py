"""ldm_patched/modules/. What only reForge has here (weight_adapter/, and lora.py's calculate_weight, which
bfee03d8 keeps in model_patcher.py) is in ../../reforge_only/ldm_patched/modules and joins this package's path when
the switch says reForge."""
import os

import fake_host

if fake_host.is_reforge():
    __path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "reforge_only", "ldm_patched", "modules"))
