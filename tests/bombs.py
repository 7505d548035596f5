"""Decompression bombs: small files that decode to 9000 x 9000 = 81 MP, in every format OpenCV reads."""

import io
import struct
import zlib

from PIL import Image

SIDE = 9000


def _pillow(mode: str, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (SIDE, SIDE)).save(buffer, fmt, **options)
    return buffer.getvalue()


def bmp_rle8() -> bytes:
    """An 8-bit RLE BMP whose pixel data is one end-of-bitmap code: a few hundred bytes."""
    palette = b"\x00\x00\x00\x00" * 256
    data = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, SIDE, SIDE, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def radiance_hdr() -> bytes:
    """A run-length-encoded Radiance RGBE picture (each scanline four channels of 127-pixel runs)."""
    runs = bytes([128 + 127, 0]) * (SIDE // 127) + bytes([128 + SIDE % 127, 0])
    scanline = bytes([2, 2, SIDE >> 8, SIDE & 0xFF]) + runs * 4
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {SIDE} +X {SIDE}\n".encode() + scanline * SIDE


def netpbm(magic: bytes, tail: int = 1 << 20) -> bytes:
    """A PGM/PPM header declaring 81 MP and its first MiB of pixels (the raw rest would be 81-243 MB)."""
    return magic + f"\n{SIDE} {SIDE}\n255\n".encode() + bytes(tail)


def png_deflate() -> bytes:
    """An 8-bit gray PNG, written by hand with zlib level 9 (all rows filter 0, zero pixels)."""
    raw = zlib.compress((b"\x00" + bytes(SIDE)) * SIDE, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def all_bombs() -> dict[str, bytes]:
    """Format name as the server reports it -> file bytes."""
    return {
        "PNG": png_deflate(),
        "JPEG": _pillow("L", "JPEG", quality=10),
        "WEBP": _pillow("L", "WEBP", lossless=True, method=0),
        "TIFF": _pillow("1", "TIFF", compression="tiff_deflate"),
        "GIF": _pillow("1", "GIF"),
        "BMP": bmp_rle8(),
        "PPM": netpbm(b"P6"),
        "PGM": netpbm(b"P5"),
        "HDR": radiance_hdr(),
    }
