"""``eeonnx audit --report DIR``: a Markdown scorecard with plots.

Writes DIR/audit.md, DIR/audit.json, DIR/frequency.png (recovered share vs
tokens observed, with the constant-guess baseline) and DIR/wire.png (inputs
next to what the server sees) when those attacks ran. Needs matplotlib.
"""
from __future__ import annotations

import os

from eeonnx.audit import images
from eeonnx.audit.scorecard import to_json


def write_report(result: dict, folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    lines = [f"# eeonnx audit: {result['artifact']}", "",
             f"Artifact id `{result['artifact_id']}`; audit took {result['seconds']:.1f} s.", "",
             f"Permutation entropy: {result['permutation_entropy_bits']:.0f} bits. This counts permutations; "
             "it is not a security measure. The attacks below are.", "",
             "| attack | attacker's knowledge | recovered | time | target | verdict |",
             "|---|---|---|---|---|---|"]
    for a in result["attacks"]:
        if not a["applies"] or a["recovered"] is None:
            lines.append(f"| {a['name']} | {a['threat_model']} | not run: {a.get('reason', '')} | | | |")
            continue
        lines.append(f"| {a['name']} | {a['threat_model']} | {a['headline']} | {a['seconds']:.1f} s | "
                     f"{a['target']} | **{a['verdict']}** |")
    lines += ["", "## Structural exposures", ""]
    lines += [f"- **{e['kind']}**: {e['detail']}" for e in result["exposures"]] or ["none found"]
    by_name = {a["name"]: a for a in result["attacks"]}
    freq = by_name.get("frequency")
    if freq and freq["recovered"]:
        curve = freq["recovered"]["curve"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([p["tokens"] for p in curve], [100 * p["recovered"] for p in curve], "o-", label="frequency attack")
        ax.plot([p["tokens"] for p in curve], [100 * p["baseline"] for p in curve], "s--", label="best constant guess")
        ax.set_xscale("log")
        ax.set_xlabel("encrypted tokens observed")
        ax.set_ylabel("token occurrences recovered (%)")
        ax.set_ylim(0, 100)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(folder, "frequency.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
        lines += ["", "## Frequency analysis", "", "![recovery vs tokens](frequency.png)", "",
                  "| tokens | occurrences recovered | distinct ids recovered | best constant guess |",
                  "|---|---|---|---|"]
        lines += [f"| {p['tokens']} | {p['recovered']:.1%} | {p['ids_recovered']:.1%} of {p['distinct_ids']} | "
                  f"{p['baseline']:.1%} |" for p in curve]
    img = by_name.get("image_wire")
    if img and img.get("_render"):
        pics, wires = img["_render"]
        path = os.path.join(folder, "wire.png")
        images.write_png(path, pics, wires)
        written.append(path)
        lines += ["", "## What the server sees", "", "![wire](wire.png)", "",
                  f"Left: the input; right: the first principal component over the channels of "
                  f"'{img['recovered']['wire']}', the tensor the server receives."]
    md = os.path.join(folder, "audit.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    js = os.path.join(folder, "audit.json")
    with open(js, "w", encoding="utf-8") as f:
        f.write(to_json(result) + "\n")
    return [md, js] + written
