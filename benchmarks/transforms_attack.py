"""Known-weights attacks on ``--transforms max`` artifacts: how much each group resists.

    PYTHONPATH=. python benchmarks/transforms_attack.py [MODEL.onnx ...] [--json]

A quick measurement until ``eeonnx audit`` carries these attacks. Attacker:
knows the ORIGINAL weights exactly (a public base model) and holds the
server model; wants each weight axis's secret index map. Per initializer
axis (scored with the key: share of server positions mapped to the right
original index):

  A1 sorted slice: match each server hyperplane W'[.., i, ..] to the original
     hyperplane with the same sorted values (1e-6 relative): what breaks a
     permutation with no search.
  A2 normalised sorted slice: the same after dividing every sorted hyperplane
     by its L2 norm, nearest match: defeats a per-index positive scale when
     the hyperplane's other axes are permutations only.
  A3 least squares (the Procrustes-style counter-attack on a linear map): the
     attacker is GIVEN the other axes' maps (as if recovered elsewhere, e.g.
     by A1 on a permutation-only class) and solves W_a M = W'_a for the axis
     map M; "recovered" = relative error of M under 1e-3.

Positions are grouped by the strongest group among the classes at that
position (an axis may be blocks of different classes: a fused QKV). Numbers
are measurements on random-weight fixtures, not security claims beyond
that attacker.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["models/mlp.onnx", "models/cnn.onnx", "models/fixtures/bert.ts.onnx",
           "models/fixtures/gpt2_kv.dynamo.onnx", "models/fixtures/llama_kv.ts.onnx",
           "models/fixtures/vit.dynamo.onnx"]


def _hyperplanes(a: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).astype(np.float64)


def _match(server: np.ndarray, original: np.ndarray, exact: bool) -> np.ndarray:
    """Index of the matching original hyperplane per server one (-1: none within tolerance)."""
    s, o = np.sort(server, axis=1), np.sort(original, axis=1)
    if not exact:
        s = s / (np.linalg.norm(s, axis=1, keepdims=True) + 1e-30)
        o = o / (np.linalg.norm(o, axis=1, keepdims=True) + 1e-30)
    out = np.empty(len(s), dtype=np.int64)
    tol = 1e-6 * (np.abs(o).max() + 1e-30)
    for i, row in enumerate(s):
        d = np.abs(o - row).max(axis=1)
        j = int(np.argmin(d))
        out[i] = j if (not exact or d[j] <= tol) else -1
    return out


def _position_ranks(term, rank_of) -> np.ndarray:
    """Per plain index of the axis: the largest group rank of the classes at that index."""
    from eeonnx.compiler import layout as L

    t = L.resolve(term)
    if isinstance(t, L.Public):
        return np.full(t.size, -1)
    if isinstance(t, L.Var):
        return np.full(t.size, rank_of(t))
    if isinstance(t, L.Cat):
        return np.concatenate([_position_ranks(x, rank_of) for x in t.parts])
    out = np.full(1, -1)
    for f in t.factors:
        out = np.maximum(out[:, None], _position_ranks(f, rank_of)[None, :]).reshape(-1)
    return out


def attack_model(path: Path, workdir: Path) -> dict:
    import eeonnx
    from eeonnx.compiler import groups as G
    from eeonnx.compiler import layout as L

    out = workdir / path.stem
    comp = eeonnx.compile(path, out, transforms="max", force=True)
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    server = {t.name: numpy_helper.to_array(t) for t in onnx.load(out / "server" / "model.onnx").graph.initializer}
    rank = {g.name: g.rank for g in G.GROUPS}
    rows: dict[str, dict[str, list]] = {}
    for name, value in comp.model.graph.initializers.items():
        terms = comp.analysis.known(value)
        if name not in orig or name not in server or terms is None or value in comp.analysis.uniform_shared:
            continue
        W, Ws = orig[name], server[name]
        if W.ndim < 2 or W.size < 64:
            continue
        fwd = G.value_factor(comp, value)
        inv = G.value_factor(comp, value, inverse=True)
        for a, t in enumerate(terms):
            classes = [v for v in L.free_vars(t) if v.uid in comp.classes]
            if not classes or t.size is None:
                continue

            def rank_of(v):
                if v.uid not in comp.classes:
                    return -1
                return rank[comp.classes[v.uid].group] if fwd(v) is not None else 0

            p = L.materialize(t, comp.perms)
            at = _position_ranks(t, rank_of)[p]  # per server position
            m1 = _match(_hyperplanes(Ws, a), _hyperplanes(W, a), True)
            m2 = _match(_hyperplanes(Ws, a), _hyperplanes(W, a), False)
            for g in G.GROUPS:
                sel = at == g.rank
                if sel.any():
                    r = rows.setdefault(g.name, {"A1": [], "A2": [], "A3": [], "n": 0})
                    r["A1"].append(float(np.mean(m1[sel] == p[sel])))
                    r["A2"].append(float(np.mean(m2[sel] == p[sel])))
                    r["n"] += int(sel.sum())
            group = G.GROUPS[max(0, int(at.max()))].name
            # A3: undo every other axis with the key (the attacker is handed those), then least squares
            y = Ws.astype(np.float64)
            for b, tb in enumerate(terms):
                if b == a:
                    continue
                y = np.take(y, np.argsort(L.materialize(tb, comp.perms)), axis=b)
                y = G.apply_axis(y, b, tb, inv)
            x = np.moveaxis(W.astype(np.float64), a, -1).reshape(-1, t.size)
            y = np.moveaxis(y, a, -1).reshape(-1, t.size)
            if x.shape[0] < t.size or np.linalg.matrix_rank(x) < t.size:
                continue  # under-determined: least squares cannot pin M down
            m_est = np.linalg.lstsq(x, y, rcond=None)[0]
            m_true = G.apply_axis(np.eye(t.size), 1, t, fwd)[:, p]
            rows[group]["A3"].append(float(np.linalg.norm(m_est - m_true) / np.linalg.norm(m_true) < 1e-3))
    manifest = json.loads((out / "client" / "manifest.json").read_text())
    summary = {g: {k: (round(float(np.mean(v)), 3) if v else None) for k, v in r.items() if k != "n"}
               | {"axes": len(r["A1"]), "positions": r["n"]} for g, r in sorted(rows.items())}
    return {"model": str(path), "weight_bytes_share": manifest["coverage"]["groups"], "attacks": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=DEFAULT)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.models:
            path = Path(m) if Path(m).is_absolute() else ROOT / m
            res = attack_model(path, Path(tmp))
            results.append(res)
            if not a.json:
                print(f"{m}: weight bytes per group {res['weight_bytes_share']}")
                for g, r in res["attacks"].items():
                    print(f"  {g:<12} axes {r['axes']:>3} positions {r['positions']:>5}  A1 sorted-slice {r['A1']}  "
                          f"A2 normalised {r['A2']}  A3 least-squares (other axes given) {r['A3']}")
    if a.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
