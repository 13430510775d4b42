"""Decode the first frame of compressed pixel data before acknowledging (``dicom.decode_first_frame``).

The header checks (:func:`node.dicom.checks.codestream_problem`) see only the start of the
codestream and its end marker, so bytes damaged in the middle of a well-framed stream pass
them. Decoding a frame with the decoder preprocessing uses is the only check that reads
every byte. What it catches depends on the decoder (measured on phantoms, random bytes
overwriting 1 to 2000 bytes in the middle of the stream):

- JPEG-LS, CharLS (pyjpegls): every case; it refuses a scan that does not end exactly at the
  end of the data.
- JPEG lossless, libjpeg (pylibjpeg): a quarter (misplaced markers, bad Huffman codes).
- RLE, pydicom: about one case in ten (segment lengths that do not add up).
- JPEG 2000, OpenJPEG (through Pillow, pydicom's first choice, or pylibjpeg): none (it is built
  to survive damaged code blocks); only a broken codestream structure.

It costs a whole decode (a few hundred milliseconds for a full-size mammogram on one core,
several times the rest of the receive path: see bench.ingest), so it runs only for the
families the configuration names. A decoder that is not installed means no check, not a
refusal: the node's preprocessing would fail the same way on every image of that syntax.
"""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, JPEGLSLossless, JPEGLSNearLossless

from node.dicom.checks import STATUS_DATASET_MISMATCH, Problem

# Transfer syntax families, as named in dicom.decode_first_frame.
FAMILIES: dict[str, frozenset[str]] = {
    "jpeg": frozenset({"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}),
    "jpeg-ls": frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}),
    "jpeg2000": frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}),
    "rle": frozenset({"1.2.840.10008.1.2.5"}),
}

# The plugin preprocessing prefers (models.preprocess.intensity): CharLS for JPEG-LS. Used alone,
# without falling back to another plugin, so a strict decoder's refusal is not overruled by a
# lenient one that decodes damaged data into wrong pixels.
_PREFERRED = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}


def family(transfer_syntax: str) -> str | None:
    """The family name of a compressed transfer syntax, None for a native one."""
    for name, uids in FAMILIES.items():
        if transfer_syntax in uids:
            return name
    return None


def decoding_plugin(transfer_syntax: str) -> str | None:
    """The plugin that decodes at receive: the preferred one, else "" (pydicom's order); None
    when no decoder for the syntax is installed."""
    try:
        available = get_decoder(UID(transfer_syntax)).available_plugins
    except (NotImplementedError, ValueError):
        return None
    if not available:
        return None
    preferred = _PREFERRED.get(UID(transfer_syntax), "")
    return preferred if preferred in available else ""


def _short(exc: BaseException) -> str:
    """The decoder's own message: pydicom wraps it as 'Unable to decode ... plugins:\\n  name: why'."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text[:160]


def first_frame_problem(path: Path, transfer_syntax: str, families: Collection[str],
                        rows: int, columns: int) -> Problem | None:
    """Decode frame 1 of the Part 10 file at ``path`` when its transfer syntax's family is in
    ``families``; a decoder error (or a frame of another size) is A900, like the header checks.

    pydicom reads only that frame's fragments from the file, so a multi-frame image is not
    loaded whole; the decoded frame (Rows x Columns values) is dropped at once.
    """
    name = family(transfer_syntax)
    if name is None or name not in families:
        return None
    plugin = decoding_plugin(transfer_syntax)
    if plugin is None:
        return None
    try:
        frame = pixel_array(path, index=0, decoding_plugin=plugin)
    except Exception as exc:  # every decoder raises its own kinds on damaged data
        return STATUS_DATASET_MISMATCH, f"compressed pixel data: frame 1 does not decode ({_short(exc)})"
    shape = tuple(frame.shape)
    del frame
    if shape[:2] != (rows, columns):
        return (STATUS_DATASET_MISMATCH,
                f"compressed pixel data: frame 1 decodes to {shape}, data set says {rows}x{columns}")
    return None
