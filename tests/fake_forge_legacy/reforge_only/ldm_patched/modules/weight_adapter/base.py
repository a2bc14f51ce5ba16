"""ldm_patched/modules/weight_adapter/base.py WeightAdapterBase (3b56b268 :9)."""


class WeightAdapterBase:
    name: str
    loaded_keys: set
    weights: list

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, intermediate_dtype=None,
                         original_weight=None):
        raise NotImplementedError
