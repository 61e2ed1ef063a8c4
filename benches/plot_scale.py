#!/usr/bin/env python3
"""Draws the scale curves (benches/scale.rs's JSON) as one SVG: a panel per
curve, a line per backend, log scales on both axes. Standard library only.

    python3 benches/plot_scale.py [target/scale/scale.json] [docs/scale.svg]
"""

import json
import math
import sys
from xml.sax.saxutils import escape

COLOURS = {"memory": "#1b9e77", "file": "#d95f02", "redis": "#7570b3", "etcd": "#e7298a"}
PANEL_W, PANEL_H = 330, 250
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 14, 30, 42
COLUMNS = 3
X_LABELS = {
    "cycle vs held locks": "locks held by the same manager",
    "handoff vs waiters": "waiters queued (p50 of the handoffs)",
    "cycle vs managers": "managers connected (the others busy)",
    "list() vs stale locks": "stale locks (a .lock and a .gate each)",
    "cleanup_stale() vs stale locks": "stale locks (a .lock and a .gate each)",
}


def duration(ns):
    """A readable label for a time in nanoseconds."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:g} {unit}"
    return f"{ns:g} ns"


def count(x):
    return f"{x:,}"


def decades(low, high):
    """Powers of ten covering [low, high]."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    if first == last:
        last += 1
    return [10.0**e for e in range(first, last + 1)]


def panel(curve, points, left, top):
    """SVG elements of one panel at (left, top)."""
    xs = [p["x"] for p in points]
    ys = [p["value_ns"] for p in points]
    xticks, yticks = decades(min(xs), max(xs)), decades(min(ys), max(ys))
    x0, x1 = math.log10(xticks[0]), math.log10(xticks[-1])
    y0, y1 = math.log10(yticks[0]), math.log10(yticks[-1])
    plot_w = PANEL_W - MARGIN_L - MARGIN_R
    plot_h = PANEL_H - MARGIN_T - MARGIN_B

    def sx(x):
        return left + MARGIN_L + (math.log10(x) - x0) / (x1 - x0) * plot_w

    def sy(y):
        return top + MARGIN_T + plot_h - (math.log10(y) - y0) / (y1 - y0) * plot_h

    out = [
        f'<text x="{left + PANEL_W / 2}" y="{top + 18}" text-anchor="middle" font-weight="bold">{escape(curve)}</text>',
        f'<rect x="{left + MARGIN_L}" y="{top + MARGIN_T}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for x in xticks:
        out.append(f'<line x1="{sx(x):.1f}" y1="{top + MARGIN_T}" x2="{sx(x):.1f}" y2="{top + MARGIN_T + plot_h}" stroke="#eee"/>')
        out.append(f'<text x="{sx(x):.1f}" y="{top + MARGIN_T + plot_h + 14}" text-anchor="middle">{count(int(x))}</text>')
    for y in yticks:
        out.append(f'<line x1="{left + MARGIN_L}" y1="{sy(y):.1f}" x2="{left + MARGIN_L + plot_w}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left + MARGIN_L - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{duration(y)}</text>')
    out.append(
        f'<text x="{left + MARGIN_L + plot_w / 2}" y="{top + PANEL_H - 8}" text-anchor="middle">{escape(X_LABELS.get(curve, "x"))}</text>'
    )
    for backend, colour in COLOURS.items():
        line = sorted((p["x"], p["value_ns"]) for p in points if p["backend"] == backend)
        if not line:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in line)
    return out


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "target/scale/scale.json"
    target = sys.argv[2] if len(sys.argv) > 2 else "docs/scale.svg"
    with open(source, encoding="utf-8") as f:
        data = json.load(f)
    curves = list(dict.fromkeys(p["curve"] for p in data["points"]))
    slots = len(curves) + 1  # the last slot holds the legend
    rows = math.ceil(slots / COLUMNS)
    width, height = COLUMNS * PANEL_W, rows * PANEL_H + 24
    body = []
    for i, curve in enumerate(curves):
        points = [p for p in data["points"] if p["curve"] == curve]
        body += panel(curve, points, (i % COLUMNS) * PANEL_W, (i // COLUMNS) * PANEL_H)
    left, top = (len(curves) % COLUMNS) * PANEL_W + MARGIN_L, (len(curves) // COLUMNS) * PANEL_H + MARGIN_T
    backends = [b for b in COLOURS if any(p["backend"] == b for p in data["points"])]
    for i, backend in enumerate(backends):
        y = top + 20 + i * 22
        body.append(f'<line x1="{left}" y1="{y}" x2="{left + 28}" y2="{y}" stroke="{COLOURS[backend]}" stroke-width="3"/>')
        body.append(f'<text x="{left + 36}" y="{y + 4}">{backend}</text>')
    body.append(f'<text x="{left}" y="{top + 20 + len(backends) * 22 + 10}" fill="#555">log scales on both axes</text>')
    caption = f"lockman scale curves, {data.get('date', '')}, commit {data.get('commit', '')}; {data.get('machine', '')}"
    body.append(f'<text x="8" y="{height - 8}" fill="#555">{escape(caption)}</text>')
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        *body,
        "</svg>",
    ]
    with open(target, "w", encoding="utf-8") as f:
        f.write("\n".join(svg) + "\n")
    print(f"wrote {target} ({len(curves)} panels, {len(data['points'])} points)")


if __name__ == "__main__":
    main()
