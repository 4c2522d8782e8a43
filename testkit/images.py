"""Real images for the tests that send them: PNG files made here, no fixtures on disk."""

import base64
import random
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """An RGB PNG of random pixels: it does not compress, so its size follows its area."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, 1))
        + _chunk(b"IEND", b"")
    )


def png_data_url(min_bytes: int) -> str:
    """A `data:image/png;base64,...` URL of a real PNG, at least `min_bytes` long."""
    side = int((min_bytes * 3 / 4 / 3) ** 0.5) + 16
    encoded = base64.b64encode(noise_png(side, side)).decode()
    return f"data:image/png;base64,{encoded}"
