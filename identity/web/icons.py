"""Draw the app icons (standard library only): ``python -m identity.web.icons`` rewrites them in static/.

A container on a quay, white and amber on the brand blue. ``icon-*.png`` have rounded corners for
launchers that show the icon as is; ``icon-maskable-512.png`` fills the square and keeps the drawing
inside the central safe zone (a circle of 40 % radius, W3C Web App Manifest "maskable" purpose), so a
launcher may crop it to any shape. The PNGs are RGBA, 8 bits, written with zlib (PNG spec §11-12).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

STATIC = Path(__file__).parent / "static"
BLUE = (11, 61, 145, 255)
WHITE = (255, 255, 255, 255)
AMBER = (255, 191, 0, 255)
CLEAR = (0, 0, 0, 0)
Colour = tuple[int, int, int, int]


def _drawing(u: float, v: float) -> Colour | None:
    """The picture in unit coordinates, None where the background shows."""
    if 0.14 <= u <= 0.86 and 0.70 <= v <= 0.79:
        return AMBER  # the quay
    if 0.20 <= u <= 0.80 and 0.28 <= v <= 0.64:
        inner = 0.25 <= u <= 0.75 and 0.33 <= v <= 0.59
        if inner and int((u - 0.25) / 0.0625) % 2 == 1:
            return BLUE  # the corrugation of the container's side
        return WHITE
    return None


def _rounded(u: float, v: float, r: float = 0.18) -> bool:
    cu, cv = min(max(u, r), 1 - r), min(max(v, r), 1 - r)
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def any_icon(u: float, v: float) -> Colour:
    if not _rounded(u, v):
        return CLEAR
    return _drawing(u, v) or BLUE


def maskable_icon(u: float, v: float) -> Colour:
    scale = 0.78  # the drawing inside the safe zone
    return _drawing(0.5 + (u - 0.5) / scale, 0.5 + (v - 0.5) / scale) or BLUE


def raster(size: int, paint: Callable[[float, float], Colour], samples: int = 2) -> bytes:
    rows = []
    step = 1 / (size * samples)
    for y in range(size):
        row = bytearray(b"\x00")  # filter type 0 (None)
        for x in range(size):
            acc = [0, 0, 0, 0]
            for sy in range(samples):
                for sx in range(samples):
                    c = paint((x * samples + sx + 0.5) * step, (y * samples + sy + 0.5) * step)
                    acc[0] += c[0] * c[3]
                    acc[1] += c[1] * c[3]
                    acc[2] += c[2] * c[3]
                    acc[3] += c[3]
            n = samples * samples
            alpha = acc[3] // n
            if acc[3]:
                row += bytes((acc[0] // acc[3], acc[1] // acc[3], acc[2] // acc[3], alpha))
            else:
                row += b"\x00\x00\x00\x00"
        rows.append(bytes(row))
    return png(size, size, b"".join(rows))


def png(width: int, height: int, scanlines: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    idat = zlib.compress(scanlines, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100"><rect width="100" height="100" rx="18" \
fill="#0b3d91"/><rect x="20" y="28" width="60" height="36" fill="#fff"/><path d="M31.25 33h6.25v26h-6.25zM43.75 \
33h6.25v26h-6.25zM56.25 33h6.25v26h-6.25zM68.75 33h6.25v26h-6.25z" fill="#0b3d91"/><rect x="14" y="70" width="72" \
height="9" fill="#ffbf00"/></svg>
"""


def main() -> None:
    (STATIC / "icon.svg").write_text(SVG, encoding="utf-8")
    (STATIC / "icon-192.png").write_bytes(raster(192, any_icon))
    (STATIC / "icon-512.png").write_bytes(raster(512, any_icon))
    (STATIC / "icon-maskable-512.png").write_bytes(raster(512, maskable_icon))


if __name__ == "__main__":
    main()
