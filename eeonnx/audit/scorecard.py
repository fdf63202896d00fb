"""Run every attack that applies to an artifact and score it: the audit scorecard.

Order of events per attack: the auditor prepares the attacker's knowledge (a
copy of ``server/`` alone; public models; the encrypted stream or wire tensors
that the client produces and the server would receive), the attack runs on
that and returns, and only then does the auditor read the ground truth
(:mod:`eeonnx.audit.truth`) to score it.

JSON fields (``eeonnx audit --json``)::

    artifact, artifact_id, permutation_entropy_bits (log2 of the number of
    permutations: NOT a security measure), seconds,
    attacks: [{name, threat_model, applies, reason (when not), recovered (dict),
               headline, seconds, target, verdict ("broken" | "holds" |
               "not run")}],
    exposures: [{kind, detail, items}]

``recovered`` per attack: known_weights / finetune: classes, classes_recovered,
vocabulary, weights_rebuilt; known_weights_linear / finetune_linear (the
linear-fit attack, :mod:`eeonnx.audit.linear_fit`): errors (class -> best
||M - T||_F / ||T||_F), classes_recovered / classes_scored (every class,
permutations too, recovered when its error < threshold),
continuous_recovered / continuous_scored (the classes above the
permutations), weights_rebuilt (secret weight bytes with every secret axis
recovered), axes_unscored, threshold, complete; frequency: curve [{tokens, recovered, baseline,
ids_recovered, distinct_ids, seconds}]; token_wire: nn_match, baseline,
cluster_purity, purity_baseline, positions, tokens_from; image_wire:
correlation, baseline, excess, per_image, wire; linkability: matched.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np

from eeonnx.audit import frequency, images, known_weights, metrics, structure
from eeonnx.audit.view import AuditError, ServerView, load_weights

TARGETS = {
    "known_weights": ("classes recovered < 1%", lambda r: (r.get("classes_recovered") or 0) < 0.01),
    "finetune": ("classes recovered < 1%", lambda r: (r.get("classes_recovered") or 0) < 0.01),
    "known_weights_linear": ("classes recovered (map error < 0.1) < 1%",
                             lambda r: (r.get("classes_recovered") or 0) < 0.01),
    "finetune_linear": ("classes recovered (map error < 0.1) < 1%",
                        lambda r: (r.get("classes_recovered") or 0) < 0.01),
    "frequency": ("occurrences recovered <= constant-guess baseline + 5 points at every length",
                  lambda r: all(p["recovered"] <= p["baseline"] + 0.05 for p in r["curve"])),
    "token_wire": ("nearest-neighbour token match <= chance + 5 points",
                   lambda r: r["nn_match"] <= r["baseline"] + 0.05),
    "image_wire": ("wire PC1 correlation <= unrelated-image baseline + 0.1", lambda r: r["excess"] <= 0.1),
    "linkability": ("< 10% of tensors found in the other artifact", lambda r: r["matched"] < 0.1),
}


class _Progress:
    def __init__(self, stream):
        self.stream = stream

    def __call__(self, msg: str) -> None:
        if self.stream is not None:
            self.stream.write(f"audit: {msg}\n")
            self.stream.flush()


def attacker_copy(out_dir: str, scratch: str) -> str:
    """A directory holding only ``server/`` of the artifact: the attacker's view."""
    dst = os.path.join(scratch, "attacker")
    src = os.path.join(out_dir, "server")
    os.makedirs(os.path.join(dst, "server"))
    for f in os.listdir(src):
        s, d = os.path.join(src, f), os.path.join(dst, "server", f)
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    return dst


def audit(out_dir: str, original=None, base=None, texts=None, images_dir=None, link=None,
          budget: float = 60.0, progress=None) -> dict:
    t_start = time.monotonic()
    say = _Progress(progress)
    out_dir = os.fspath(out_dir)
    mpath = os.path.join(out_dir, "client", "manifest.json")
    if not os.path.exists(mpath):
        raise AuditError(f"{out_dir}: no client/manifest.json: the audit needs the whole artifact "
                         "(the auditor scores with the key; the attacks never see it)")
    for p in texts or ():
        if not os.path.exists(p):
            raise AuditError(f"{p}: --text file or directory not found")
    if images_dir and not os.path.isdir(images_dir):
        raise AuditError(f"{images_dir}: --images must be a directory of PNG/JPEG files")
    with open(mpath, encoding="utf-8") as f:
        manifest = json.load(f)
    result = {"artifact": out_dir, "artifact_id": manifest.get("artifact_id"),
              "permutation_entropy_bits": manifest.get("key_bits"), "attacks": [], "exposures": []}
    with tempfile.TemporaryDirectory() as scratch:
        view = ServerView(attacker_copy(out_dir, scratch))
        truth = None

        def get_truth():
            nonlocal truth
            if truth is None:
                from eeonnx.audit.truth import GroundTruth

                truth = GroundTruth(out_dir)
            return truth

        # 1. known weights
        entry = _entry("known_weights", "server model + the public original weights (--original)")
        if original:
            say(f"known-weights attack against {original}")
            rec = known_weights.attack(view.float_weights(), load_weights(original), budget=budget)
            entry["seconds"] = rec["seconds"]
            from eeonnx.audit.score import score_alignment

            entry["recovered"] = score_alignment(rec, get_truth(), view.weights)
            entry["recovered"]["unmatched_tensors"] = len(rec["unmatched"])
            _verdict(entry, _alignment_headline(entry["recovered"]))
        else:
            entry.update(applies=False, reason="no --original given")
        result["attacks"].append(entry)

        # 2. fine-tune alignment
        entry = _entry("finetune", "server model + a public base model it was fine-tuned from (--base)")
        if base:
            from eeonnx.audit import finetune
            from eeonnx.audit.score import score_alignment

            say(f"fine-tune alignment against {base}")
            t0 = time.monotonic()
            rec = finetune.attack(view.float_weights(), load_weights(base), budget=budget)
            entry["seconds"] = time.monotonic() - t0
            entry["recovered"] = score_alignment(rec, get_truth(), view.weights)
            _verdict(entry, _alignment_headline(entry["recovered"]))
        else:
            entry.update(applies=False, reason="no --base given")
        result["attacks"].append(entry)

        # 2b. linear fit (least squares / Procrustes) against the original, then the base
        for name, ref, flag in (("known_weights_linear", original, "--original"), ("finetune_linear", base, "--base")):
            knows = "the public original weights" if flag == "--original" else "a public base it was fine-tuned from"
            entry = _entry(name, f"server model + {knows} ({flag}); per tensor axis, a least-squares / orthogonal "
                                 "Procrustes fit, maps found on one tensor tried on the others (no graph linkage)")
            if ref:
                from eeonnx.audit import linear_fit
                from eeonnx.audit.score import score_linear

                say(f"linear fit (least squares / Procrustes) against {ref}")
                rec = linear_fit.attack(view.float_weights(), load_weights(ref), budget=budget)
                entry["seconds"] = rec["seconds"]
                r = score_linear(rec, get_truth(), view.weights)
                r["complete"] = rec["complete"]
                entry["recovered"] = r
                _verdict(entry, _linear_headline(r))
            else:
                entry.update(applies=False, reason=f"no {flag} given")
            result["attacks"].append(entry)

        # 3. frequency analysis of the encrypted id stream
        result["attacks"].append(_frequency(out_dir, manifest, texts, budget, say))

        # 4. wire clustering for token models whose embedding runs on the client
        result["attacks"].append(_token_wire(out_dir, manifest, texts, say))

        # 5. image wire leakage
        result["attacks"].append(_image_wire(out_dir, manifest, images_dir, say))

        # linkability of two artifacts
        entry = _entry("linkability", "two server models of one model under different keys (--link)")
        if link:
            say(f"linking with {link}")
            t0 = time.monotonic()
            other = ServerView(attacker_copy(link, os.path.join(scratch, "other")))
            entry["recovered"] = structure.linkability(view, other)
            entry["seconds"] = time.monotonic() - t0
            _verdict(entry, f"{entry['recovered']['matched']:.0%} of tensors found in the other artifact")
        else:
            entry.update(applies=False, reason="no --link given")
        result["attacks"].append(entry)

        # 6. structural exposures
        say("structural exposures")
        ex = structure.metadata_exposures(view) + structure.tied_exposures(view)
        ex += structure.small_class_exposures(manifest.get("classes", []))
        if os.path.exists(os.path.join(out_dir, "client", "rekey.json")):
            ex += structure.order_exposures(view, get_truth())
        result["exposures"] = ex
    result["seconds"] = time.monotonic() - t_start
    return _plain(result)


def _entry(name, threat):
    return {"name": name, "threat_model": threat, "applies": True, "recovered": None,
            "headline": "", "seconds": 0.0, "target": TARGETS[name][0], "verdict": "not run"}


def _verdict(entry, headline):
    entry["headline"] = headline
    entry["verdict"] = "holds" if TARGETS[entry["name"]][1](entry["recovered"]) else "broken"


def _alignment_headline(r):
    parts = [f"{r['classes_recovered']:.0%} of {r['classes_scored']} secret classes" if r["classes_scored"] else
             "no class scored"]
    if r.get("vocabulary") is not None:
        parts.append(f"{r['vocabulary']:.0%} of {r['vocabulary_size']} vocabulary ids")
    if r.get("weights_rebuilt") is not None:
        parts.append(f"{r['weights_rebuilt']:.0%} of permuted weight bytes rebuilt")
    return ", ".join(parts)


def _linear_headline(r):
    if not r["classes_scored"]:
        return "no class scored"
    parts = []
    if r["continuous_scored"]:
        parts.append(f"{r['continuous_recovered']:.0%} of {r['continuous_scored']} continuous classes")
    parts.append(f"{r['classes_recovered']:.0%} of all {r['classes_scored']} classes (map error < {r['threshold']:g})")
    if r.get("weights_rebuilt") is not None:
        parts.append(f"{r['weights_rebuilt']:.0%} of secret weight bytes with every secret axis recovered")
    if not r.get("complete", True):
        parts.append("budget ran out")
    return ", ".join(parts)


def _token_input(manifest):
    for c in manifest.get("inputs", []):
        if "value_size" in c and not c.get("clear"):
            return c
    return None


def _frequency(out_dir, manifest, texts, budget, say):
    entry = _entry("frequency", "the encrypted token-id stream + public reference text of the same kind")
    tok_in = _token_input(manifest)
    tok_path = os.path.join(out_dir, "client", "tokenizer.json")
    if tok_in is None:
        entry.update(applies=False, reason="no encrypted token-id input crosses the wire")
        return entry
    if not os.path.exists(tok_path):
        entry.update(applies=False, reason="no client tokenizer (compile with --tokenizer) to produce the stream")
        return entry
    try:
        import tokenizers
    except ImportError:
        entry.update(applies=False, reason="needs the 'tokenizers' package")
        return entry
    from eeonnx.audit import texts as T
    from eeonnx.client.client import Client

    docs = T.read_documents(texts) if texts else T.default_documents()
    private, reference = T.split_documents(docs)
    # the client side: its encrypted tokenizer gives the ids the server receives
    tok = tokenizers.Tokenizer.from_file(tok_path)
    tok.no_truncation()
    tok.no_padding()
    cipher = np.concatenate([e.ids for e in tok.encode_batch(private, add_special_tokens=False)] or [[]])
    ref_cipher = np.concatenate([e.ids for e in tok.encode_batch(reference, add_special_tokens=False)] or [[]])
    id_map = Client(out_dir).id_map()  # plain -> encrypted
    to_plain = np.argsort(id_map)
    plain = to_plain[cipher.astype(np.int64)]
    # the attacker tokenizes the public reference with the public tokenizer: plain ids
    reference_ids = to_plain[ref_cipher.astype(np.int64)]
    vocab = int(tok_in["value_size"])
    say(f"frequency attack: {len(cipher)} private tokens, {len(reference_ids)} reference tokens, vocabulary {vocab}")
    curve = []
    t0 = time.monotonic()
    for n, guess, dt in frequency.attack(cipher, reference_ids, vocab, budget=budget):
        seen = np.unique(cipher[:n])
        curve.append({"tokens": int(n),
                      "recovered": metrics.occurrence_accuracy(guess, cipher[:n], plain[:n]),
                      "baseline": metrics.constant_guess_baseline(plain[:n]),
                      "ids_recovered": float((guess[seen] == to_plain[seen]).mean()),
                      "distinct_ids": int(len(seen)), "seconds": dt})
        say(f"  {n} tokens: {curve[-1]['recovered']:.1%} of occurrences ({dt:.1f} s)")
    entry["seconds"] = time.monotonic() - t0
    entry["recovered"] = {"curve": curve, "private_tokens": int(len(cipher)), "reference_tokens": int(len(reference_ids)),
                          "text": "given --text" if texts else "Python documentation and stdlib docstrings (local)"}
    last = curve[-1]
    _verdict(entry, ", ".join(f"{p['recovered']:.0%} at {p['tokens']}" for p in curve)
             + f" tokens (best constant guess {last['baseline']:.0%})")
    return entry


def _client_token_input(out_dir, manifest):
    """The integer input that client layers use to index the largest table (a Gather
    on an initializer in encode.onnx), with ``value_size`` its row count; or None."""
    import onnx

    ints = [c for c in manifest.get("inputs", []) if c.get("clear") and "int" in c.get("dtype", "")
            and "client layers" in c.get("clear_reason", "")]
    if not ints:
        return None
    enc = onnx.load(os.path.join(out_dir, "client", "encode.onnx"))
    rows = {t.name: t.dims[0] for t in enc.graph.initializer if t.dims}
    best = None
    for c in ints:
        for n in enc.graph.node:
            if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == c["name"] and n.input[0] in rows:
                if best is None or rows[n.input[0]] > best["value_size"]:
                    best = {**c, "value_size": int(rows[n.input[0]])}
    return best


def _token_wire(out_dir, manifest, texts, say, contexts: int = 48, length: int = 16):
    """Token ids read by client layers: the server receives vectors per position.
    Contexts are windows of the private text; every other integer input is all
    ones (the same in every context), floats are not generated (not applicable)."""
    entry = _entry("token_wire", "the wire vectors of a token model whose embedding runs on the client")
    tok_in = _client_token_input(out_dir, manifest)
    tok_path = os.path.join(out_dir, "client", "tokenizer.json")
    if tok_in is None:
        entry.update(applies=False, reason="no token input is read by client layers (ids cross encrypted)")
        return entry
    from eeonnx.client.client import Client

    client = Client(out_dir)
    vocab = int(tok_in["value_size"])
    if os.path.exists(tok_path):
        import tokenizers

        from eeonnx.audit import texts as T

        tok = tokenizers.Tokenizer.from_file(tok_path)
        tok.no_truncation()
        tok.no_padding()
        docs = T.split_documents(T.read_documents(texts) if texts else T.default_documents())[0]
        ids = np.concatenate([e.ids for e in tok.encode_batch(docs[:50], add_special_tokens=False)])
        try:
            ids = np.argsort(client.id_map())[ids]
        except ValueError:
            pass  # the client layers take plain ids
        source = "text"
    else:  # no tokenizer: Zipf-distributed ids (a stand-in for text)
        rng = np.random.default_rng(0)
        zipf = 1.0 / np.arange(1, vocab + 1)
        ids = rng.permutation(vocab)[rng.choice(vocab, contexts * length, p=zipf / zipf.sum())]
        source = "synthetic Zipf ids"
    to_plain = np.arange(vocab)
    plain = to_plain[ids[: contexts * length]].reshape(-1, length)
    dtypes = client.input_dtypes()
    t0 = time.monotonic()
    vectors, tokens, ctx = [], [], []
    for c, row in enumerate(plain):
        feeds = {}
        for name in client.input_names:
            dt = dtypes[name]
            if name == tok_in["name"]:
                feeds[name] = row[None].astype(dt)
            elif np.issubdtype(dt, np.integer) or dt == np.bool_:
                feeds[name] = np.ones((1, length), dtype=dt)
            else:
                entry.update(applies=False, reason=f"float input '{name}' besides the tokens: not generated")
                return entry
        wire = [v for v in client.encode(feeds).values() if v.dtype.kind == "f" and v.ndim == 3
                and v.shape[:2] == (1, length)]
        if not wire:
            entry.update(applies=False, reason="no [batch, sequence, features] float tensor crosses the wire")
            return entry
        vectors.append(wire[0][0])
        tokens.append(row)
        ctx.append(np.full(length, c))
    say(f"token wire clustering on {len(plain)} contexts of {length} tokens")
    entry["recovered"] = metrics.token_wire_leakage(np.concatenate(vectors), np.concatenate(tokens),
                                                    np.concatenate(ctx))
    entry["recovered"]["tokens_from"] = source
    entry["seconds"] = time.monotonic() - t0
    r = entry["recovered"]
    _verdict(entry, f"nearest wire vector in another context has the same token {r['nn_match']:.0%} of the time "
             f"(chance {r['baseline']:.0%}); k-means purity {r['cluster_purity']:.0%} "
             f"(shuffled {r['purity_baseline']:.0%})")
    return entry


def _image_input(manifest):
    for c in manifest.get("inputs", []):
        shape = c.get("shape", [])
        if c.get("dtype") in ("float", "float16", "double") and len(shape) == 4 and shape[1] in (1, 3) \
                and all(isinstance(d, int) for d in shape[2:]):
            return c
    return None


def _image_wire(out_dir, manifest, images_dir, say, n: int = 8):
    entry = _entry("image_wire", "the wire tensors of an image model (what the server receives)")
    inp = _image_input(manifest)
    if inp is None:
        entry.update(applies=False, reason="no image input ([N, 1 or 3, H, W] float)")
        return entry
    from eeonnx.client.client import Client

    client = Client(out_dir)
    if len(client.input_names) != 1:
        entry.update(applies=False, reason="image models with more than one input are not audited yet")
        return entry
    c, h, w = inp["shape"][1:]
    pics = images.load_images(images_dir, (h, w)) if images_dir else images.sample_images(n, (h, w))
    pics = [p if c == 3 else p.mean(0, keepdims=True) for p in pics]
    unrelated = images.sample_images(n, (h, w), seed=1234)
    t0 = time.monotonic()
    wires = {}
    original = {v: k for k, v in manifest.get("server_names", {}).items()}  # the server's names are opaque
    for p in pics:
        feeds = client.encode({inp["name"]: p[None].astype(np.float32)})
        for name, v in feeds.items():
            if v.dtype.kind == "f" and v.ndim == 4:
                wires.setdefault(original.get(name, name), []).append(v[0])
    if not wires:
        entry.update(applies=False, reason="no spatial float tensor crosses the wire")
        return entry
    say(f"image wire leakage on {len(pics)} images, wires {', '.join(wires)}")
    per = {name: metrics.image_wire_leakage(ws, pics, unrelated) for name, ws in wires.items()}
    worst = max(per, key=lambda k: per[k]["excess"])
    entry["recovered"] = {**per[worst], "wire": worst, "wires": per}
    entry["seconds"] = time.monotonic() - t0
    entry["_render"] = (pics[:4], wires[worst][:4])
    _verdict(entry, f"wire '{worst}' PC1 correlates {per[worst]['correlation']:.2f} with the input's luminance "
             f"(unrelated images {per[worst]['baseline']:.2f})")
    return entry


def _plain(x):
    """JSON-ready: numpy scalars to Python, drop private render data."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items() if not k.startswith("_")} | (
            {"_render": x["_render"]} if "_render" in x else {})
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def to_json(result) -> str:
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not k.startswith("_")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return json.dumps(strip(result), indent=2)


def to_text(result) -> str:
    lines = [f"eeonnx audit of {result['artifact']} ({result['seconds']:.1f} s)",
             f"  permutation entropy {result['permutation_entropy_bits']:.0f} bits "
             "(a count of permutations, not a security measure; the attacks below are)"]
    for a in result["attacks"]:
        if not a["applies"] or a["recovered"] is None:
            lines.append(f"  - {a['name']:<13} not run: {a.get('reason', '')}")
            continue
        lines.append(f"  {'BROKEN' if a['verdict'] == 'broken' else 'holds':<6} {a['name']:<13} "
                     f"[{a['threat_model']}]")
        lines.append(f"         recovered: {a['headline']} in {a['seconds']:.1f} s (target: {a['target']})")
    lines.append(f"  structural exposures: {len(result['exposures']) or 'none found'}")
    for e in result["exposures"]:
        lines.append(f"    {e['kind']}: {e['detail']}")
    return "\n".join(lines)
