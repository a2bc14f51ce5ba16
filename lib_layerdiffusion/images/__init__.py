"""Image handling: conditioning inputs, outputs and previews, img2img transparency, layered files, upscaling."""
