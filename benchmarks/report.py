"""Bench JSON files -> a markdown table, ratios first: python benchmarks/report.py a.json b.json"""

from __future__ import annotations

import json
import sys


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(path: str) -> str:
    data = json.load(open(path))
    m = data["meta"]
    memory = "bandwidth_bytes_per_s" in m
    lines = [f"### {path.split('/')[-1]}: {m['device']}, jax {m['jax']}, torch {m['torch']}, "
             f"precision {m['precision']}, torch TF32 {'on' if m['torch_tf32'] else 'off'}, "
             f"fused upsampling as {m.get('transposed_conv', 'phases')}{', remat' if m.get('remat') else ''}, "
             f"{m['date']}" + (f", GLIBC_TUNABLES={m['glibc_tunables'] or '(none)'}" if "glibc_tunables" in m else ""),
             "",
             f"Ceiling (jax matmul, same precision): {m['ceiling_flops'] / 1e12:.2f} TFLOP/s. "
             + " ".join(f"Compile cold/warm (cache) at {k.split('_')[-1]}: {v[0]:.1f} s / {v[1]:.1f} s."
                        for k, v in m.items() if k.startswith("compile_cold_warm"))
             + (f" Memory ceiling (an elementwise pass): {m['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s."
                if memory else ""),
             "",
             "| R | seeds | speedup (torch step / ours) | ours seed-steps/s | torch seed-steps/s | ours compile s "
             "| ours % of ceiling | ours peak GiB | torch peak GiB |"
             + (" ours GB moved per step | ours % of memory ceiling |" if memory else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if memory else "")]
    for r in data["rows"]:
        gib = 2.0**30
        lines.append(
            f"| {r['resolution']} | {r['seeds']}{' (max-fit try)' if r.get('max_fit_try') else ''} "
            f"| {fmt(r.get('speedup'), '.2f')} "
            f"| {r.get('ours', fmt(r.get('ours_seed_steps_per_s'), '.2f'))} "
            f"| {r.get('torch', fmt(r.get('torch_seed_steps_per_s'), '.2f'))} "
            f"| {fmt(r.get('ours_compile_s'), '.1f')} "
            f"| {fmt(r.get('ours_flops_fraction') and 100 * r['ours_flops_fraction'], '.1f')} "
            f"| {fmt(r.get('ours_peak_bytes') and r['ours_peak_bytes'] / gib, '.1f')} "
            f"| {fmt(r.get('torch_peak_bytes') and r['torch_peak_bytes'] / gib, '.1f')} |"
            + (f" {fmt(r.get('ours_bytes_per_step') and r['ours_bytes_per_step'] / 1e9, '.1f')} "
               f"| {fmt(r.get('ours_bandwidth_fraction') and 100 * r['ours_bandwidth_fraction'], '.1f')} |"
               if memory else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(p) for p in sys.argv[1:]))
