"""Mirrors modules/scripts.py: the Script base class, AlwaysVisible and PostprocessImageArgs."""
AlwaysVisible = object()


class Script:
    infotext_fields = None
    paste_field_names = None


class PostprocessImageArgs:  # modules/scripts.py PostprocessImageArgs
    def __init__(self, image, index):
        self.image = image
        self.index = index
