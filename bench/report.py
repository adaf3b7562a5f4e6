#!/usr/bin/env python3
"""Tables and plots of bench/compare: reads its results directory, writes SVG plots into a
directory and the tables into a markdown file between `<!-- BEGIN compare -->` and
`<!-- END compare -->`. Every number comes from the results it reads."""
import glob, json, os, re, sys
from statistics import mean

results, plots, doc, machine, seconds, quick = sys.argv[1:7]
os.makedirs(plots, exist_ok=True)

def load(path):
    with open(path) as f:
        return json.load(f)

replays = [load(p) for p in sorted(glob.glob(f"{results}/replay-*.json"))]
def sims(trace):
    out = {}
    for p in glob.glob(f"{results}/simulate-{trace}-*.json"):
        b = int(re.search(r"-(\d+)\.json$", p).group(1))
        out[b] = load(p)
    return out
sim_bench, sim_default = sims("bench"), sims("default")

def mb(b):
    return f"{b / 1e6:,.1f} MB"

def gb(b):
    return f"{b / 1e9:.2f} GB"

def pct(b, cap):
    return f"{100 * b / cap:.1f} %"

bench_header = json.loads(open(f"{results}/bench.trace").readline())
cap = bench_header["capacity_bytes"]
default_cap = json.loads(open(f"{results}/default.trace").readline())["capacity_bytes"]

def sim_outcome(sims, b, prefix):
    for o in sims[b]["outcomes"]:
        if o["policy"].startswith(prefix):
            return o
    raise KeyError(prefix)

out = []
w = out.append
w(f"Machine: {machine}. One run of `sudo bench/compare{' --quick' if quick else ''}`: {int(seconds) // 60} min {int(seconds) % 60} s.")
w("")
days = bench_header["params"]["days"]
w(f"**Bench trace** (replayed on real engines): the default generator's parameters for {days} days, every byte count × 0.25 "
  f"(`dockgc trace generate --days {days} --scale 0.25`): {len(open(f'{results}/bench.trace').read().splitlines()) - 1} events, "
  f"disk {mb(cap)}, other bytes {mb(bench_header['other_bytes'])}; one simulated day = {replays[0]['day_seconds']:.0f} s. Bytes below are on that "
  "1/4-size disk. Budget = dockgc's `disk.low` (with `disk.high` 5 points above, the default gap, at most 95 %) = docuum's threshold plus the trace's other bytes.")
w("")
w("### Replays on real engines")
w("")
w("| policy | budget | run | misses | re-loaded | disk full | peak | mean | images deleted | others deleted | max lag | waited for the policy | docuum restarts | wall |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
def restarts(r):
    n, paused = r["bench"]["restarts"], r.get("paused_seconds", 0)
    return f"{n} (clock stopped {paused:.0f} s)" if paused else str(n)

def settled(r):
    if "settle_seconds" not in r or r["bench"]["policy"] not in ("dockgc", "docuum"):
        return "—"
    t = r.get("settle_timeouts", 0)
    return f"{r['settle_seconds']:.0f} s" + (f", {t} timeouts" if t else "")

order = {"dockgc": 0, "docuum": 1, "prune-all": 2, "dangling": 3}
replays.sort(key=lambda r: (order.get(r["bench"]["policy"], 9), r["bench"]["budget_percent"], r["outcome"]["policy"]))
for r in replays:
    o, bnch = r["outcome"], r["bench"]
    nightly = bnch["policy"] in ("prune-all", "dangling")
    budget = "—" if nightly else f"{bnch['budget_percent']:.0f} %"
    w(f"| {o['policy']} | {budget} | {bnch.get('run', '')} | {o['misses']} | {mb(o['bytes_reloaded'])} | {o['disk_full']} | "
      f"{pct(o['peak_bytes'], cap)} | {pct(o['mean_bytes'], cap)} | {o['images_deleted']} | {o['others_deleted']} | "
      f"{r['max_lag_seconds']:.1f} s | {settled(r)} | {restarts(r)} | {r['wall_seconds']:.0f} s |")
w("")

def runs(policy, budget=None):
    return [r for r in replays if r["bench"]["policy"] == policy and (budget is None or r["bench"]["budget_percent"] == budget)]

budgets = sorted({int(r["bench"]["budget_percent"]) for r in replays if r["bench"]["policy"] in ("dockgc", "docuum")})
w("### `dockgc simulate` against the replays (same trace, same budget)")
w("")
w("| policy | budget | simulated misses | replayed misses (runs) | gap | simulated re-loaded | replayed re-loaded (runs) | gap |")
w("|---|---:|---:|---|---:|---:|---|---:|")
for b in budgets:
    for policy, prefix in (("dockgc", "dockgc"), ("docuum", "docuum")):
        rs = runs(policy, b)
        if not rs or b not in sim_bench:
            continue
        s = sim_outcome(sim_bench, b, prefix)
        m = mean(r["outcome"]["misses"] for r in rs)
        y = mean(r["outcome"]["bytes_reloaded"] for r in rs)
        gap_m = f"{100 * (m - s['misses']) / max(s['misses'], 1):+.0f} %"
        gap_y = f"{100 * (y - s['bytes_reloaded']) / max(s['bytes_reloaded'], 1):+.0f} %"
        w(f"| {policy} | {b} % | {s['misses']} | {', '.join(str(r['outcome']['misses']) for r in rs)} | {gap_m} | "
          f"{mb(s['bytes_reloaded'])} | {', '.join(mb(r['outcome']['bytes_reloaded']) for r in rs)} | {gap_y} |")
w("")

w("### Goals (replays, mean of the runs)")
w("")
def at_peak(policy, peak):
    # The policy's re-loads at a given peak, interpolated between its sweep points (mean of
    # the runs at each budget); None outside its sweep.
    pts = sorted((mean(r["outcome"]["peak_bytes"] for r in runs(policy, b)),
                  mean(r["outcome"]["bytes_reloaded"] for r in runs(policy, b)))
                 for b in budgets if runs(policy, b))
    for (p0, y0), (p1, y1) in zip(pts, pts[1:]):
        if p0 <= peak <= p1:
            return y0 + (y1 - y0) * (peak - p0) / max(p1 - p0, 1)
    return None

w("| budget | dockgc re-loaded | docuum re-loaded | ratio (goal ≤ 0.7) | dockgc / docuum peak | docuum at dockgc's peak (interpolated) | ratio at equal peak | docuum modelled (simulate) | ratio to it | nightly prune -af re-loaded | ratio (goal ≤ 0.2) | offline reference (simulated) | dockgc gap to it |")
w("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
prune = runs("prune-all")
prune_y = mean(r["outcome"]["bytes_reloaded"] for r in prune) if prune else None
for b in budgets:
    d, u = runs("dockgc", b), runs("docuum", b)
    if not d or not u:
        continue
    dy = mean(r["outcome"]["bytes_reloaded"] for r in d)
    uy = mean(r["outcome"]["bytes_reloaded"] for r in u)
    dp = mean(r["outcome"]["peak_bytes"] for r in d)
    up = mean(r["outcome"]["peak_bytes"] for r in u)
    ue = at_peak("docuum", dp)
    off = sim_outcome(sim_bench, b, "offline")["bytes_reloaded"] if b in sim_bench else None
    model = sim_outcome(sim_bench, b, "docuum")["bytes_reloaded"] if b in sim_bench else None
    w(f"| {b} % | {mb(dy)} | {mb(uy)} | {dy / max(uy, 1):.2f} | {pct(dp, cap)} / {pct(up, cap)} | "
      f"{mb(ue) if ue is not None else 'outside its sweep'} | {f'{dy / max(ue, 1):.2f}' if ue is not None else '—'} | "
      f"{mb(model) if model is not None else '—'} | "
      f"{(dy / max(model, 1)) if model else float('nan'):.2f} | {mb(prune_y) if prune_y is not None else '—'} | "
      f"{(dy / max(prune_y, 1)) if prune_y else float('nan'):.2f} | "
      f"{mb(off) if off is not None else '—'} | {mb(dy - off) if off is not None else '—'} |")
w("")
full = {p: sum(r["outcome"]["disk_full"] for r in runs(p)) for p in order}
w("Disk-full failures over all replays: " + ", ".join(f"{p} {n}" for p, n in full.items() if runs(p)) + ".")
w("")

w("### `dockgc simulate` on the default trace (10 days, 2.5 GB, in memory)")
w("")
w("| budget | policy | misses | re-loaded | disk full | peak | mean | images deleted |")
w("|---:|---|---:|---:|---:|---:|---:|---:|")
for b in sorted(sim_default):
    for o in sim_default[b]["outcomes"]:
        w(f"| {b} % | {o['policy']} | {o['misses']} | {gb(o['bytes_reloaded'])} | {o['disk_full']} | "
          f"{pct(o['peak_bytes'], default_cap)} | {pct(o['mean_bytes'], default_cap)} | {o['images_deleted']} |")
w("")
if os.path.exists(f"{results}/gap-5.json") and os.path.exists(f"{results}/gap-15.json"):
    w("### The watermark gap: `dockgc simulate` on the default trace with the default watermarks and the old ones")
    w("")
    w("| watermarks | misses | re-loaded | disk full | peak | mean | images deleted |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for name, f in (("high 85 %, low 80 % (default)", "gap-5"), ("high 85 %, low 70 % (before)", "gap-15")):
        d = load(f"{results}/{f}.json")
        o = next(o for o in d["outcomes"] if o["policy"].startswith("dockgc"))
        w(f"| {name} | {o['misses']} | {gb(o['bytes_reloaded'])} | {o['disk_full']} | "
          f"{pct(o['peak_bytes'], default_cap)} | {pct(o['mean_bytes'], default_cap)} | {o['images_deleted']} |")
    w("")
w("![bytes re-loaded against peak usage](bench/reload-vs-peak.svg)")
w("")
w("![disk usage over time](bench/usage.svg)")

# ---- plots ----
W, H, L, B = 640, 360, 70, 40
COLORS = {"dockgc": "#1f77b4", "docuum": "#d62728", "prune-all": "#7f7f7f", "dangling": "#bcbd22", "offline": "#2ca02c", "lru": "#9467bd"}

def svg(path, title, xlabel, ylabel, series, xmax, ymax, xfmt, yfmt, lines=True):
    def X(x): return L + (W - L - 20) * x / xmax
    def Y(y): return H - B - (H - B - 30) * y / ymax
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 20 * ((len(series) + 1) // 2)}" font-family="sans-serif" font-size="11">',
         f'<rect width="100%" height="100%" fill="white"/>',
         f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - 20}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="30" x2="{L}" y2="{H - B}" stroke="black"/>',
         f'<text x="{(L + W) / 2}" y="{H - 8}" text-anchor="middle">{xlabel}</text>',
         f'<text x="14" y="{H / 2}" text-anchor="middle" transform="rotate(-90 14 {H / 2})">{ylabel}</text>']
    for i in range(6):
        x, y = xmax * i / 5, ymax * i / 5
        s.append(f'<text x="{X(x)}" y="{H - B + 14}" text-anchor="middle">{xfmt(x)}</text>')
        s.append(f'<text x="{L - 4}" y="{Y(y) + 4}" text-anchor="end">{yfmt(y)}</text>')
        s.append(f'<line x1="{L}" y1="{Y(y)}" x2="{W - 20}" y2="{Y(y)}" stroke="#eee"/>')
    for n, (name, color, pts, dashed) in enumerate(series):
        if lines and len(pts) > 1:
            d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
            dash = ' stroke-dasharray="4 3"' if dashed else ""
            s.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
        if not lines or len(pts) <= 40:
            for x, y in pts:
                s.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{color}"/>')
        lx, ly = L + 280 * (n % 2), H + 4 + 20 * (n // 2)
        s.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{color}"/><text x="{lx + 14}" y="{ly + 9}">{name}</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s))

series = []
for policy in ("dockgc", "docuum"):
    for run in sorted({r["bench"].get("run", 1) for r in runs(policy)}):
        pts = sorted((r["outcome"]["peak_bytes"] / cap * 100, r["outcome"]["bytes_reloaded"]) for r in runs(policy) if r["bench"].get("run", 1) == run)
        series.append((f"{policy} (replay, run {run})", COLORS[policy], pts, run != 1))
for name, prefix in (("offline reference (simulated)", "offline"), ("ideal LRU (simulated)", "ideal")):
    pts = sorted((sim_outcome(sim_bench, b, prefix)["peak_bytes"] / cap * 100, sim_outcome(sim_bench, b, prefix)["bytes_reloaded"]) for b in sim_bench)
    series.append((name, COLORS["offline" if prefix == "offline" else "lru"], pts, True))
for p in ("prune-all", "dangling"):
    pts = [(r["outcome"]["peak_bytes"] / cap * 100, r["outcome"]["bytes_reloaded"]) for r in runs(p)]
    if pts:
        series.append((f"nightly {p} (replay)", COLORS[p], pts, False))
ymax = max([y for _, _, pts, _ in series for _, y in pts] + [1]) * 1.1
svg(f"{plots}/reload-vs-peak.svg", "Bytes re-loaded against peak disk usage (bench trace)", "peak usage (% of disk)",
    "re-loaded", series, 100, ymax, lambda x: f"{x:.0f}%", lambda y: f"{y / 1e6:.0f}MB", lines=True)

series = []
for policy, budget in (("dockgc", 65), ("docuum", 65), ("prune-all", 65), ("dangling", 65)):
    rs = [r for r in runs(policy, budget) if r["bench"].get("run", 1) == 1]
    if rs:
        pts = [(t / 3600, b / cap * 100) for t, b in rs[0]["outcome"]["usage"]]
        series.append((rs[0]["outcome"]["policy"], COLORS[policy], pts, False))
xmax = max([x for _, _, pts, _ in series for x, _ in pts] + [1])
svg(f"{plots}/usage.svg", "Disk usage over the replay (budget 65 %, run 1)", "simulated hours", "used",
    series, xmax, 100, lambda x: f"{x:.0f}h", lambda y: f"{y:.0f}%")

text = open(doc).read()
begin, end = "<!-- BEGIN compare -->", "<!-- END compare -->"
if begin not in text:
    text += f"\n## Comparison against the peers (`bench/compare`)\n\n{begin}\n{end}\n"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(head + begin + "\n" + "\n".join(out) + "\n" + end + tail)
print(f"wrote {doc} and {plots}/*.svg", file=sys.stderr)
