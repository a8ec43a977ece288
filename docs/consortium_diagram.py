"""The consortium at a glance; regenerate docs/consortium.png with `.venv/bin/python docs/consortium_diagram.py`."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Ellipse, FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

OUT = Path(__file__).with_name("consortium.png")
INK, MUTED = "#1f2933", "#52606d"
SERVER = ("#e6eef6", "#2f4b6e")  # fill, edge
SITE = ("#eaf6ef", "#2e7d4f")
ADMIN = ("#fff3e0", "#b45f06")
UPDATE, MODEL, STATS = "#d9480f", "#1c6fc4", "#7048e8"
CHIPS = [  # (title, detail, fill, edge) inside every hospital
    ("Signed startup kit", "identity, TLS certificate, policies", "#ffffff", "#7b8794"),
    ("DP-SGD training", "its own privacy floor, ε budget", "#ffffff", "#7b8794"),
    ("CKKS secret key", "encrypts updates, decrypts model", "#fff8db", "#b08900"),
    ("Pre-flight statistics", "counts, means, histograms only", "#f3f0ff", "#7048e8"),
]
SERVER_LINES = [
    "adds the hospitals' CKKS ciphertexts, weighted",
    "holds no secret key: it cannot decrypt any update",
    "keeps the global model as ciphertext only",
    "compares the sites' pre-flight statistics",
    "schedules rounds; a lost site costs one timeout",
    "runs the cross-site evaluation and the report",
]
LEGEND = [
    (UPDATE, False, "encrypted model update"),
    (MODEL, False, "encrypted global model"),
    (STATS, True, "pre-flight statistics"),
    (ADMIN[1], False, "jobs from the admin"),
]


def text(ax, x, y, s, size=8.6, colour=INK, ha="left", va="center", **kw):
    ax.text(x, y, s, fontsize=size, color=colour, ha=ha, va=va, linespacing=1.15, **kw)


def box(ax, x, y, w, h, colours, *, lw=1.8, pad=1.0):
    style = f"round,pad=0,rounding_size={pad}"
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, fc=colours[0], ec=colours[1], lw=lw))


def arrow(ax, start, end, colour, *, dashed=False, lw=2.0):
    head = "-|>,head_length=0.55,head_width=0.28"
    ls = (0, (3.5, 2)) if dashed else "-"
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=head, mutation_scale=15, color=colour, lw=lw, ls=ls))


def cylinder(ax, x, y, w, h, colour):
    """A database drum: the hospital's DICOM/PACS store."""
    e = w * 0.3  # height of the elliptical ends
    ax.add_patch(Ellipse((x + w / 2, y + e / 2), w, e, fc="#ffffff", ec=colour, lw=1.3))
    ax.add_patch(Rectangle((x, y + e / 2), w, h - e, fc="#ffffff", ec="none"))
    for xx in (x, x + w):
        ax.plot([xx, xx], [y + e / 2, y + h - e / 2], color=colour, lw=1.3)
    ax.add_patch(Ellipse((x + w / 2, y + h - e / 2), w, e, fc="#ffffff", ec=colour, lw=1.3))


def hospital(ax, x, y, w, h, name):
    box(ax, x, y, w, h, SITE)
    text(ax, x + w / 2, y + h - 2.3, name, 12, SITE[1], ha="center", weight="bold")
    dx, dw = x + 1.3, 7.4  # the data store, left
    cylinder(ax, dx + 0.6, y + h / 2 - 3.6, dw - 1.2, 8.0, SITE[1])
    text(ax, dx + dw / 2, y + h / 2 + 0.6, "DICOM\nPACS", 7.6, SITE[1], ha="center", weight="bold")
    text(
        ax,
        dx + dw / 2,
        y + h / 2 - 5.6,
        "patient data\nnever leaves",
        8,
        SITE[1],
        ha="center",
        va="top",
        style="italic",
    )
    cx, cw, ch, gap = dx + dw + 0.6, w - dw - 2.7, 4.7, 0.9
    for i, (title, detail, fill, edge) in enumerate(CHIPS):
        cy = y + h - 5.0 - ch - i * (ch + gap)
        box(ax, cx, cy, cw, ch, (fill, edge), lw=1.0, pad=0.5)
        text(ax, cx + 0.9, cy + ch - 1.5, title, 8.8, weight="bold")
        text(ax, cx + 0.9, cy + 1.4, detail, 7.7, MUTED)


def main() -> Path:
    fig = plt.figure(figsize=(10, 7.3), dpi=200)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 100), ax.set_ylim(0, 73), ax.set_aspect("equal"), ax.axis("off")
    hw, hh, hy, hgap = 30.6, 29, 1.5, 2.1  # hospitals
    centres = [2 + i * (hw + hgap) + hw / 2 for i in range(3)]
    sx, sy, sw, sh = 2, 41.5, 96, 13.5  # server
    top = 61  # admin console and legend

    box(ax, 2, top, 43, 10.5, ADMIN)
    text(ax, 4, top + 8.1, "Admin console", 12, ADMIN[1], weight="bold")
    text(ax, 4, top + 5.1, "the consortium admin, with a signed admin startup kit")
    text(ax, 4, top + 2.4, "submit_job · list_jobs · download_job · abort_job", family="monospace")
    arrow(ax, (centres[0], top), (centres[0], sy + sh + 0.2), ADMIN[1], lw=2.2)
    text(ax, centres[0] + 1.2, (top + sy + sh) / 2, "jobs (FedAvg, DP, HE, pre-flight)", 8.4, ADMIN[1], weight="bold")

    box(ax, 55, top, 43, 10.5, ("#ffffff", "#cbd2d9"), lw=1.0)
    for i, (colour, dashed, label) in enumerate(LEGEND):
        xx, yy = 57 + (i // 2) * 21, top + 7.1 - (i % 2) * 3.9
        arrow(ax, (xx, yy), (xx + 4.2, yy), colour, dashed=dashed, lw=1.8)
        text(ax, xx + 5.4, yy, label, 8.4)

    box(ax, sx, sy, sw, sh, SERVER, lw=2.0)
    text(ax, sx + 2, sy + sh - 2.6, "FLARE server", 13, SERVER[1], weight="bold")
    note = "sees ciphertexts and aggregate statistics, never an image or a key"
    text(ax, sx + 24, sy + sh - 2.6, note, 9, SERVER[1], style="italic")
    for i, line in enumerate(SERVER_LINES):
        text(ax, sx + 2.4 + (i // 3) * 48, sy + sh - 6.3 - (i % 3) * 2.7, "•  " + line, 9)

    for i, name in enumerate(["Hospital A", "Hospital B", "Hospital C"]):  # each linked to the server over mTLS
        hospital(ax, 2 + i * (hw + hgap), hy, hw, hh, name)
        c, up, down = centres[i], hy + hh + 0.2, sy - 0.2
        arrow(ax, (c - 3.2, up), (c - 3.2, down), UPDATE)
        arrow(ax, (c, up), (c, down), STATS, dashed=True)
        arrow(ax, (c + 3.2, down), (c + 3.2, up), MODEL)
    tls = ["mutual TLS on every link:\nserver, hospitals, admin", "each proves who it is with\nits signed startup kit"]
    for i, line in enumerate(tls):
        x = (centres[i] + centres[i + 1]) / 2
        text(ax, x, (hy + hh + sy) / 2, line, 8.6, MUTED, ha="center", style="italic", multialignment="center")
    fig.savefig(OUT, dpi=200, facecolor="white")
    plt.close(fig)
    return OUT


if __name__ == "__main__":
    print(f"wrote {main()}")
