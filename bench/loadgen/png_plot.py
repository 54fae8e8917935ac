"""A tiny PNG line plot (zlib + struct, no matplotlib): two series against a shared x-axis.

plot(path, xs, left, right) draws `left` = (label, ys) in blue against the left y-axis and
`right` = (label, ys) in red against the right y-axis, x on a log10 axis (when every x > 0),
with tick marks and a 3x5 pixel font for the tick labels and axis titles.
"""
import math
import struct
import zlib

# 3x5 glyphs: 15 bits, rows top to bottom. Only what the labels need.
FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "/": "001001010100100", " ": "000000000000000", "a": "000011101101011", "d": "001011101101011",
    "e": "010101111100011", "k": "100101110101101", "m": "000101111101101", "p": "000110101110100",
    "q": "000011101011001", "r": "000110101100100", "s": "000011110001110", "t": "010111010010011",
}
BLUE, RED, BLACK, GREY = (31, 90, 200), (200, 40, 40), (0, 0, 0), (215, 215, 215)


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x, y, c, r=0):
        for yy in range(y - r, y + r + 1):
            for xx in range(x - r, x + r + 1):
                if 0 <= xx < self.w and 0 <= yy < self.h:
                    i = (yy * self.w + xx) * 3
                    self.px[i:i + 3] = bytes(c)

    def line(self, x0, y0, x1, y1, c, r=0):
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for k in range(n + 1):
            self.dot(round(x0 + (x1 - x0) * k / n), round(y0 + (y1 - y0) * k / n), c, r)

    def text(self, x, y, s, c, scale=2, anchor="left"):
        width = len(s) * 4 * scale
        x = x - width if anchor == "right" else x - width // 2 if anchor == "center" else x
        for ch in s:
            bits = FONT.get(ch, FONT[" "])
            for i, b in enumerate(bits):
                if b == "1":
                    for dy in range(scale):
                        for dx in range(scale):
                            self.dot(x + (i % 3) * scale + dx, y + (i // 3) * scale + dy, c)
            x += 4 * scale

    def save(self, path):
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def nice_ticks(hi, n=5):
    """0 and multiples of a 1/2/5 step up to at least `hi`."""
    hi = hi if hi > 0 else 1.0
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(hi / step - 1e-9)) + 1)]


def fmt(v):
    if v >= 1000:
        return f"{v / 1000:.3g}k"
    return f"{v:.3g}" if v < 100 else str(int(round(v)))


def plot(path, xs, left, right, x_label="adapters", width=640, height=400):
    cv = Canvas(width, height)
    x0, x1, y0, y1 = 70, width - 70, 30, height - 50          # plot area (y0 top)
    log = all(x > 0 for x in xs)
    tx = [math.log10(x) if log else x for x in xs]
    lo, hi = min(tx), max(tx)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    px = [round(x0 + (t - lo) / (hi - lo) * (x1 - x0)) for t in tx]
    # x ticks: every decade on a log axis, else the xs themselves.
    ticks = [10 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) if lo - 1e-9 <= e <= hi + 1e-9] if log else xs
    for t in ticks:
        x = round(x0 + ((math.log10(t) if log else t) - lo) / (hi - lo) * (x1 - x0))
        cv.line(x, y0, x, y1, GREY)
        cv.line(x, y1, x, y1 + 5, BLACK)
        cv.text(x, y1 + 10, fmt(t), BLACK, anchor="center")
    cv.text((x0 + x1) // 2, height - 18, x_label, BLACK, anchor="center")
    for side, (label, ys), color in (("l", left, BLUE), ("r", right, RED)):
        yt = nice_ticks(max([y for y in ys if y is not None] or [1.0]))
        top = yt[-1] or 1.0
        ax = x0 if side == "l" else x1
        for t in yt:
            y = round(y1 - t / top * (y1 - y0))
            cv.line(ax - 5 if side == "l" else ax, y, ax if side == "l" else ax + 5, y, color)
            cv.text(ax - 8 if side == "l" else ax + 9, y - 5, fmt(t), color, anchor="right" if side == "l" else "left")
        cv.text(ax, 8, label, color, anchor="center")
        pts = [(x, round(y1 - y / top * (y1 - y0))) for x, y in zip(px, ys) if y is not None]
        for a, b in zip(pts, pts[1:]):
            cv.line(a[0], a[1], b[0], b[1], color, r=1)
        for x, y in pts:
            cv.dot(x, y, color, r=3)
    cv.line(x0, y1, x1, y1, BLACK)
    cv.line(x0, y0, x0, y1, BLUE)
    cv.line(x1, y0, x1, y1, RED)
    cv.save(path)
