"""The WebUI's modules/ package. Its parts LayerDiffuse uses (paths, shared, script_callbacks, images, scripts)
are the same A1111 code in both Forge generations, so the fakes of tests/fake_forge/modules are reused."""
import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "fake_forge", "modules"))
