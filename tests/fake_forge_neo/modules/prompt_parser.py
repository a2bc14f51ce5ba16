"""Mirrors modules/prompt_parser.py DictWithShape (Forge Neo 6e1e0d5): the SDXL text conditioning
({'crossattn', 'vector'}) as the sampler hands it to backend/sampling/condition.py."""
import torch


class DictWithShape(dict):  # prompt_parser.py:283
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape

    def advanced_indexing(self, item):  # prompt_parser.py:298
        result = {}
        for k in self.keys():
            if isinstance(self[k], torch.Tensor):
                result[k] = self[k][item]
        return DictWithShape(result)
