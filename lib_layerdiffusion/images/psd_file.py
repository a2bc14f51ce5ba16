"""Layered Photoshop (.psd) files, written with psd-tools: the same layer stack as the OpenRaster file
(layered_file.py), for Photoshop, Affinity, Photopea and the other PSD readers.

psd-tools is optional (install.py installs it when the setting is on): it is imported only inside the functions
that need it, never when this module is imported, so a Forge without it still loads the extension.

The document is 8-bit RGB with a transparency channel. Each layer is a pixel layer at the canvas origin, bottom to
top as given, with its name (Unicode, as Photoshop stores it), visibility and opacity. The merged image psd-tools
renders from the visible layers (over a transparent backdrop) is stored too, for readers that only show that.
The generation's infotext goes into the file's XMP metadata (image resource 1060) as dc:description, the field
Photoshop shows as "Description" in File → File Info.
"""
from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

from .atomic_file import write_atomically
from .layered_file import _XML_INVALID, Layer, _canvas_size

# What install.py installs. 1.26.0 is the version tested here; it needs Python 3.11 (Forge Neo's); on Python 3.10
# (Forge main's usual one) pip picks 1.24.0, the newest release for it, which has the same writing API.
REQUIREMENT = "psd-tools>=1.24,<1.27"
INSTALL_HINT = (f'install it into Forge\'s Python (pip install "{REQUIREMENT}"), or restart Forge with the setting '
                f'on so that LayerDiffuse\'s install.py installs it')

_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xml": "http://www.w3.org/XML/1998/namespace",
}
CREATOR_TOOL = "LayerDiffuse for Stable Diffusion WebUI Forge"
_MAX_NAME = 255  # Photoshop's limit on a layer name (psd-tools refuses longer ones)


def available() -> bool:
    """Whether psd-tools can be imported (without importing it)."""
    return importlib.util.find_spec("psd_tools") is not None


def xmp_packet(infotext: Optional[str]) -> bytes:
    """An XMP packet naming the creator tool and carrying `infotext` as dc:description (x-default)."""
    for prefix, uri in _NS.items():
        if prefix != "xml":
            ET.register_namespace(prefix, uri)
    root = ET.Element(f"{{{_NS['x']}}}xmpmeta")
    rdf = ET.SubElement(root, f"{{{_NS['rdf']}}}RDF")
    description = ET.SubElement(rdf, f"{{{_NS['rdf']}}}Description", {f"{{{_NS['rdf']}}}about": ""})
    ET.SubElement(description, f"{{{_NS['xmp']}}}CreatorTool").text = CREATOR_TOOL
    if infotext:
        alt = ET.SubElement(ET.SubElement(description, f"{{{_NS['dc']}}}description"), f"{{{_NS['rdf']}}}Alt")
        item = ET.SubElement(alt, f"{{{_NS['rdf']}}}li", {f"{{{_NS['xml']}}}lang": "x-default"})
        item.text = _XML_INVALID.sub("", infotext)
    body = ET.tostring(root, encoding="unicode")
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + body +
            '\n<?xpacket end="w"?>').encode("utf-8")


def infotext_from_xmp(packet: bytes) -> Optional[str]:
    """The dc:description (x-default, else the first) of an XMP packet, or None."""
    text = packet.decode("utf-8", errors="replace")
    start, end = text.find("<x:xmpmeta"), text.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return None
    root = ET.fromstring(text[start:end + len("</x:xmpmeta>")])
    items = root.findall(".//dc:description/rdf:Alt/rdf:li", _NS)
    for item in items:
        if item.get(f"{{{_NS['xml']}}}lang") == "x-default":
            return item.text or ""
    return (items[0].text or "") if items else None


def write_psd(path, layers: Sequence[Layer], size: Optional[tuple[int, int]] = None,
              infotext: Optional[str] = None) -> str:
    """Write `layers` (bottom to top) as a layered PSD at `path`, atomically; returns the path.

    `size` is the canvas (width, height); by default the largest layer width and height. Raises ImportError
    (with a message saying how to get it) when psd-tools is not installed."""
    layers = list(layers)
    if not layers:
        raise ValueError("[LayerDiffuse] A PSD file needs at least one layer.")
    for layer in layers:
        if not isinstance(layer, Layer):
            raise TypeError(f"[LayerDiffuse] write_psd takes Layer objects, got {type(layer).__name__}.")
    size = _canvas_size(layers, size)
    try:
        from psd_tools import PSDImage
        from psd_tools.constants import Resource, Tag
        from psd_tools.psd.image_resources import ImageResource
    except ImportError as error:
        raise ImportError(f"[LayerDiffuse] Writing .psd files needs psd-tools: {INSTALL_HINT}.") from error

    document = PSDImage.new("RGBA", size, color=(0, 0, 0, 0))
    document.background_color = None  # the merged image over a transparent backdrop, as the layers are
    for layer in layers:
        image = layer.image if layer.image.mode in ("RGB", "RGBA") else layer.image.convert(
            "RGBA" if "A" in layer.image.getbands() or "transparency" in layer.image.info else "RGB")
        pixel_layer = document.create_pixel_layer(image, opacity=int(round(layer.opacity * 255)))
        # set through the property: it stores the Unicode name and a Mac Roman fallback, which the
        # constructor's name argument does not
        pixel_layer.name = _XML_INVALID.sub("", layer.name)[:_MAX_NAME]
        pixel_layer.visible = layer.visible
    # "Mtrn": the merged image keeps its transparency (Photoshop writes this block for transparent documents);
    # without it readers of the merged image get an opaque one
    document.tagged_blocks.set_data(Tag.SAVING_MERGED_TRANSPARENCY)
    document.image_resources[Resource.XMP_METADATA] = ImageResource(
        key=Resource.XMP_METADATA, data=xmp_packet(infotext))
    return write_atomically(path, document.save)


def read_psd_infotext(path) -> Optional[str]:
    """The infotext stored in a PSD's XMP metadata by write_psd, or None."""
    from psd_tools import PSDImage
    from psd_tools.constants import Resource
    packet = PSDImage.open(path).image_resources.get_data(Resource.XMP_METADATA)
    return infotext_from_xmp(bytes(packet)) if packet else None
