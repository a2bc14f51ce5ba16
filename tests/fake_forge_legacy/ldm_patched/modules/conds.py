"""ldm_patched/modules/conds.py CONDRegular (:13 bfee03d8, :10 3b56b268): a tensor condition such as c_concat."""


class CONDRegular:
    def __init__(self, cond):
        self.cond = cond
