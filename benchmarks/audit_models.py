"""Benchmark: `eeonnx audit` on the bundled models (and MiniLM when exported).

Compiles each model with the default options into OUT/<name>, then audits it
with the attacker's knowledge each attack states (--original: the public
original; the frequency attack on Python's local documentation; the CNN's
wire on the bundled synthetic pictures), and prints one Markdown table row
per attack. Long: minutes per model on two cores. Not a test.

    python benchmarks/audit_models.py --out /tmp/audit_bench [--minilm /tmp/minilm] [--budget 120]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import eeonnx  # noqa: E402
from eeonnx.audit.scorecard import audit, to_json  # noqa: E402

FIX = os.path.join(ROOT, "models", "fixtures")
MODELS = {
    "cnn": (os.path.join(ROOT, "models", "cnn.onnx"), None),
    "bert (tiny)": (os.path.join(FIX, "bert.ts.onnx"), os.path.join(FIX, "bert.tokenizer.json")),
    "llama (tiny)": (os.path.join(FIX, "llama.dynamo.onnx"), os.path.join(FIX, "gpt2.tokenizer.json")),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/audit_bench")
    ap.add_argument("--minilm", help="folder written by models/export_minilm.py")
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    models = dict(MODELS)
    if a.minilm:
        models["MiniLM-L6 (real weights)"] = (os.path.join(a.minilm, "minilm.ts.onnx"),
                                              os.path.join(a.minilm, "minilm.tokenizer.json"))
    rows, results = [], {}
    for name, (model, tok) in models.items():
        if a.only and not any(o in name for o in a.only):
            continue
        out = os.path.join(a.out, name.split()[0].lower())
        t0 = time.time()
        eeonnx.compile(model, out, tokenizer=tok, force=True)
        print(f"compiled {name} in {time.time() - t0:.1f} s", file=sys.stderr)
        r = audit(out, original=model, budget=a.budget, progress=sys.stderr)
        results[name] = json.loads(to_json(r))
        for at in r["attacks"]:
            if at["recovered"] is not None:
                rows.append(f"| {name} | {at['threat_model']} | {at['headline']} | {at['seconds']:.1f} s | "
                            f"{at['verdict']} |")
        rows.append(f"| {name} | structure only | " + "; ".join(e["detail"] for e in r["exposures"]) + " | | |")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "audit_models.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print("| model | attacker's knowledge | recovered | time | verdict |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
