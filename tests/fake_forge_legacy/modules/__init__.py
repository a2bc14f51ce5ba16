"""The WebUI's modules/ package. A file only reForge has (stealth_infotext.py) is in ../reforge_only/modules and
joins this package's path when the switch says reForge, so that on `previous` it is missing, as it is there."""
import os

import fake_host

if fake_host.is_reforge():
    __path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reforge_only",
                                 "modules"))
