"""plan: place the client boundary by measured leakage (``eeonnx plan``, ``compile --max-leak``).

For every candidate cut (:func:`eeonnx.compiler.passes.split.candidate_cuts`: each convex
client prefix formed from a single-tensor cut, entropy floor applied) this measures

- cost: the client's share of FLOPs and of weight bytes, bytes on the wire per request;
- leakage, with the audit's metrics (:mod:`eeonnx.audit.metrics`) on what the server would
  receive for calibration samples: the wire tensors computed by the original model, taken
  through the compile's permutations (the server's view; both metrics are invariant to a
  permutation of channels, so this is what an artifact of any key shows):
  * image models: first principal component of each spatial wire tensor vs the input's
    luminance, against unrelated pictures (``image_wire_leakage``; the unrelated set is
    ``sample_images(seed=1234)``, as ``eeonnx audit`` draws it); a token-sequence wire ``[T, D]`` whose T (or T - 1, a leading
    summary token dropped) is a square is read as a ``[D, s, s]`` grid;
  * token models: nearest-neighbour token-match rate and k-means purity of the per-position
    wire vectors across contexts (``token_wire_leakage``); token ids on the wire are a
    substitution cipher, measured the same way on a random embedding of each id.
  ``leak`` is the worst wire tensor's excess over its chance baseline (correlation minus
  unrelated-image correlation; match rate minus random-neighbour rate).

Attacker's knowledge for these numbers: the wire tensors of one request (what the server
receives and returns), nothing else; for images the attacker only looks at them (PCA).

Calibration samples: ``images`` (a folder of PNG/JPEG) or the audit's procedural pictures
(:func:`eeonnx.audit.images.sample_images`, seed 0); for token models ``text`` files with a
``tokenizer`` (tokenizer.json), else a Zipf-distributed synthetic id stream (seeded), stated in
the result. Invariant: leaves the compilation unchanged; writes nothing.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from eeonnx.compiler.passes import split as S
from eeonnx.compiler.passes.fold import axis_perms
from eeonnx.errors import EEError

#: A placement whose client runs at least this share of the FLOPs is running the model
#: on the client, not a split: compile --max-leak refuses it.
CLIENT_SHARE_LIMIT = 0.99
N_IMAGES = 8
CONTEXTS, SEQ = 48, 16  # as `eeonnx audit` draws its token contexts


class PlanError(EEError):
    """No placement can be measured or none meets the requested leakage."""


@dataclass
class Calibration:
    kind: str  # "image" or "token"
    source: str
    feeds: list[dict] = field(default_factory=list)  # one feed dict per sample
    images: list = field(default_factory=list)  # image models: [C, H, W] per sample
    unrelated: list = field(default_factory=list)  # image models: the baseline's unrelated pictures
    token_input: str = ""
    tokens: np.ndarray | None = None  # token models: plain ids, [samples, seq]


# -- calibration --------------------------------------------------------------------
def _image_input(model: ir.Model):
    for v in model.graph.inputs:
        if v.dtype is not None and v.dtype.is_floating_point() and v.shape is not None and len(v.shape) == 4:
            dims = list(v.shape)
            for ch in (1, 3):
                if dims[ch] in (1, 3) and all(isinstance(d, int) for d in dims[1:]):
                    return v, ch
    return None, None


def _token_input(comp, model: ir.Model):
    an = comp.analysis
    for v in model.graph.inputs:
        if v.dtype is not None and not v.dtype.is_floating_point() and an.has_slot(v):
            term = an.slot(v).root().term
            if term is not None and term.size is not None and term.size > S.STRUCTURE_ROWS:
                return v, term.size
    return None, None


def _concrete(v: ir.Value, batch=1, seq=SEQ) -> list[int]:
    out = []
    for k, d in enumerate(v.shape or []):
        out.append(d if isinstance(d, int) else (batch if k == 0 else seq))
    return out


def calibrate(comp, images: str | None = None, text=(), tokenizer: str | None = None,
              n_images: int = N_IMAGES, contexts: int = CONTEXTS, seq: int = SEQ) -> Calibration:
    model = comp.model
    image, ch = _image_input(model)
    token, vocab = _token_input(comp, model)
    if image is not None and token is None:
        from eeonnx.audit.images import load_images, sample_images

        dims = _concrete(image)
        hw = tuple(dims[2:]) if ch == 1 else tuple(dims[1:3])
        if images:
            pics = load_images(images, hw)
            if len(pics) < 2:
                raise PlanError(f"--images {images}: need at least two PNG/JPEG files (found {len(pics)})")
            source = f"{len(pics)} images from {images}"
        else:
            pics = sample_images(n_images, hw, seed=0)
            source = f"{len(pics)} procedural sample images (eeonnx.audit.images.sample_images, seed 0)"
        # the baseline: unrelated pictures, drawn as `eeonnx audit` draws them
        cal = Calibration("image", source, unrelated=sample_images(len(pics), hw, seed=1234))
        for pic in pics:
            x = pic.mean(0, keepdims=True) if dims[ch] == 1 else pic
            x = x if ch == 1 else np.transpose(x, (1, 2, 0))
            feeds = _other_inputs(comp, {image.name: x[None].astype(_np_dtype(image))}, 1, hw[0])
            cal.feeds.append(feeds)
            cal.images.append(pic)
        return cal
    if token is not None:
        ids, source = _token_stream(vocab, text, tokenizer, contexts, seq)
        cal = Calibration("token", source, token_input=token.name, tokens=ids)
        for row in ids:
            cal.feeds.append(_other_inputs(comp, {token.name: row[None].astype(_np_dtype(token))}, 1, len(row)))
        return cal
    raise PlanError("plan needs a model with an image input (float [N, C, H, W], C = 1 or 3) or "
                    "token ids (an integer input that indexes a table)")


def _np_dtype(v: ir.Value):
    return v.dtype.numpy()


def _other_inputs(comp, feeds: dict, batch: int, seq: int) -> dict:
    """Feeds for the inputs other than the content one: an empty cache for server state,
    Hugging Face conventions (the one place names are read, shared with generation), zeros
    for anything else of fixed shape."""
    from eeonnx.client.generate import _default_input

    state = {s.input: s for s in comp.state}
    for v in comp.model.graph.inputs:
        if v.name in feeds:
            continue
        dtype = _np_dtype(v)
        if v.name in state:
            shape = state[v.name].empty_shape()
            feeds[v.name] = np.zeros([d if isinstance(d, int) else batch for d in shape], dtype=dtype)
            continue
        try:
            feeds[v.name] = _default_input(v.name, dtype, 0, seq, batch)
        except ValueError:
            feeds[v.name] = np.zeros(_concrete(v, batch, seq), dtype=dtype)
    return feeds


def _token_stream(vocab: int, text, tokenizer, contexts: int, seq: int) -> tuple[np.ndarray, str]:
    if text:
        if not tokenizer:
            raise PlanError("--text needs --tokenizer (a tokenizer.json) to turn the text into ids")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer)
        tok.no_truncation()
        tok.no_padding()
        ids = []
        for path in text:
            with open(path, encoding="utf-8") as f:
                for para in f.read().split("\n\n"):
                    if para.strip():
                        ids += tok.encode(para, add_special_tokens=False).ids
        ids = [i for i in ids if i < vocab]
        if len(ids) < contexts * seq:
            contexts = max(2, len(ids) // seq)
        if len(ids) < 2 * seq:
            raise PlanError(f"--text: {len(ids)} tokens, need at least {2 * seq}")
        rows = np.array(ids[: contexts * seq]).reshape(contexts, seq)
        return rows, f"{contexts} x {seq} tokens of {', '.join(os.path.basename(p) for p in text)}"
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    ranks = rng.permutation(vocab)
    rows = ranks[rng.choice(vocab, size=(contexts, seq), p=p)]
    return rows, f"{contexts} x {seq} synthetic Zipf-distributed token ids (seed 0; no text given)"


# -- measurement -----------------------------------------------------------------------------
def _run(comp, names: list[str], cal: Calibration) -> list[dict]:
    """Values of the named tensors (original model, unfolded) for every calibration sample."""
    from eeonnx.server import runtime

    model = comp.model
    proto = ir.serde.serialize_model(model)
    by_name = {v.name: v for v in model.graph.inputs}
    by_name.update({o.name: o for n in model.graph for o in n.outputs})
    have = {o.name for o in proto.graph.output}
    for n in names:
        if n not in have and n not in {i.name for i in proto.graph.input}:
            proto.graph.output.append(ir.serde.serialize_value(by_name[n]))
    sess = runtime.session(proto.SerializeToString(), ["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    wanted_inputs = {i.name for i in sess.get_inputs()}
    results = []
    for feeds in cal.feeds:
        vals = dict(zip(out_names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted_inputs})))
        vals.update(feeds)
        results.append({n: vals[n] for n in names if n in vals})
    return results


def _server_view(comp, value: ir.Value, array: np.ndarray) -> np.ndarray:
    """What the server holds for this tensor: taken along each secret axis by the key."""
    terms = comp.analysis.known(value)
    if terms is None or len(terms) != array.ndim:
        return array
    for axis, p in enumerate(axis_perms(terms, comp.perms)):
        if p is not None and p.size == array.shape[axis]:
            array = np.take(array, p, axis=axis)
    if comp.analysis.has_slot(value):
        vt = comp.analysis.values.secret_term(comp.analysis.slot(value))
        if vt is not None:
            p = axis_perms([vt], comp.perms)[0]
            if p is not None:
                array = np.argsort(p)[array]
    return array


def _image_forms(a: np.ndarray, ch_axis: int) -> list[np.ndarray]:
    """Every way the server could read one sample's wire (batch dropped) as a picture
    [C, H, W]; empty when it has no spatial form. The attacker keeps the best reading.

    Channels-first models: the last two axes are the picture and every leading axis is a
    channel (a grouped reshape [g, c, H, W] is still g*c channels); channels-last: the two
    axes before the last. A matrix [A, B] is a grid of patches along either axis whose
    length (or length - 1: a summary token dropped) is a square."""
    forms = []
    if a.ndim >= 3 and ch_axis == 1 and min(a.shape[-2:]) > 1:
        forms.append(a.reshape(-1, *a.shape[-2:]))
    if a.ndim == 3 and ch_axis == 3 and min(a.shape[:2]) > 1:
        forms.append(np.transpose(a, (2, 0, 1)))
    if a.ndim == 2:
        for m in (a, a.T):
            t = m.shape[0]
            for drop in (0, 1):
                s = math.isqrt(max(t - drop, 0))
                if s > 1 and s * s == t - drop:
                    forms.append(m[drop:].T.reshape(m.shape[1], s, s))
    return forms


def _image_metric(wires, cal: Calibration, ch_axis: int):
    from eeonnx.audit.metrics import image_wire_leakage, wire_pc1

    if any(w.shape[0] != 1 for w in wires):
        return None
    readings = [_image_forms(w[0], ch_axis) for w in wires]
    best = None
    for k in range(min(len(r) for r in readings)):
        # each wire's PC1 once: as a one-channel wire it is its own PC1 (up to sign and
        # scale, which the absolute Pearson correlation ignores), so the metric is unchanged
        r = image_wire_leakage([wire_pc1(forms[k])[None] for forms in readings], cal.images, cal.unrelated)
        if best is None or r["excess"] > best["excess"]:
            best = {"correlation": r["correlation"], "baseline": r["baseline"], "excess": r["excess"]}
    return best


def _token_metric(wires, cal: Calibration, is_ids: bool):
    from eeonnx.audit.metrics import token_wire_leakage

    seq = cal.tokens.shape[1]
    vecs = []
    for w in wires:
        if w.ndim < 2 or w.shape[:2] != (1, seq):
            return None
        vecs.append(w[0].reshape(seq, -1).astype(np.float64))
    x = np.concatenate(vecs)
    if is_ids:  # a substitution cipher: equal ids are equal vectors
        table = np.random.default_rng(1).standard_normal((int(x.max()) + 1, 32))
        x = table[x[:, 0].astype(np.int64)]
    ctx = np.repeat(np.arange(len(wires)), seq)
    r = token_wire_leakage(x, cal.tokens.reshape(-1), ctx, seed=0)
    return {"nn_match": r["nn_match"], "cluster_purity": r["cluster_purity"], "baseline": r["baseline"],
            "excess": r["nn_match"] - r["baseline"]}


@dataclass
class Row:
    """One cut on one side: "in" rows measure what enters the server (the client runs a
    prefix), "out" rows what leaves it (the client runs a suffix)."""

    side: str
    spec: str
    wire: list[str]
    client_flops_share: float
    client_weight_share: float
    wire_bytes: int
    leak: float  # 0.0 with leak_tensor None: no wire tensor here has a form the metric reads
    leak_tensor: str | None
    metrics: dict

    @property
    def measured(self) -> bool:
        return self.leak_tensor is not None

    def to_json(self) -> dict:
        return {"side": self.side, "cut": self.spec or "(entropy floor only)", "split_at": self.spec,
                "wire": self.wire, "client_flops_share": round(self.client_flops_share, 4),
                "client_weight_share": round(self.client_weight_share, 4), "wire_bytes": self.wire_bytes,
                "leak": round(self.leak, 4) if self.measured else None, "leak_tensor": self.leak_tensor,
                "metrics": {k: {m: round(x, 4) for m, x in v.items()} for k, v in self.metrics.items()}}


def measure(comp, min_bits: float = 128.0, **kw) -> tuple[list[Row], Calibration]:
    """Rows for every candidate cut, per side, cheapest client first (see the module docstring)."""
    try:  # many small eigh/k-means calls: BLAS threads only contend
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return _measure(comp, min_bits, **kw)
    with threadpool_limits(1):
        return _measure(comp, min_bits, **kw)


def _measure(comp, min_bits: float = 128.0, *, images=None, text=(), tokenizer=None,
             allow_weak=(), progress=None) -> tuple[list[Row], Calibration]:
    cal = calibrate(comp, images, text, tokenizer)
    cuts = S.candidate_cuts(comp, comp.model, min_bits, tuple(allow_weak))
    if not cuts:
        raise PlanError(f"no convex split meets the entropy floor of {min_bits:g} bits")
    model = comp.model
    by_name = {v.name: v for v in list(model.graph.inputs)}
    by_name.update({o.name: o for n in model.graph for o in n.outputs})
    state = {s.input for s in comp.state} | {s.output for s in comp.state}
    needed = sorted({n for c in cuts for n in c.plan.wire_in + c.plan.wire_out if n not in state})
    runs = _run(comp, needed, cal)
    _, ch = _image_input(model)
    cache: dict[str, dict | None] = {}

    def metric(name):
        if name not in cache:
            v = by_name[name]
            wires = [_server_view(comp, v, np.asarray(r[name])) for r in runs]
            is_ids = not np.issubdtype(wires[0].dtype, np.floating)
            if cal.kind == "image":
                cache[name] = None if is_ids else _image_metric(wires, cal, ch)
            else:
                if is_ids and wires[0].ndim == 2:
                    wires = [w[..., None] for w in wires]
                cache[name] = _token_metric(wires, cal, is_ids)
        return cache[name]

    rows = []
    for i, cut in enumerate(cuts):
        p = cut.plan
        names = [n for n in p.wire_in + p.wire_out if n not in state]
        wire_bytes = int(sum(np.asarray(runs[0][n]).nbytes for n in names if n in runs[0]))
        for side in ([cut.side] if cut.side else ["in", "out"]):
            wire = cut.wire(side)
            mets = {n: m for n in wire if (m := metric(n)) is not None}
            worst = max(mets, key=lambda n: mets[n]["excess"]) if mets else None
            rows.append(Row(side, cut.spec, wire,
                            p.flops_client / p.flops_total if p.flops_total else 0.0,
                            p.bytes_client / p.bytes_total if p.bytes_total else 0.0, wire_bytes,
                            max(0.0, mets[worst]["excess"]) if worst else 0.0, worst, mets))
        if progress:
            progress(i + 1, len(cuts))
    rows.sort(key=lambda r: (r.side, r.spec != "", r.client_flops_share, r.client_weight_share))
    return rows, cal


@dataclass
class Placement:
    """The chosen cuts (one per side) and the split they form together."""

    specs: list[str]
    rows: list[Row]
    plan: S.SplitPlan
    max_leak: float

    @property
    def leak(self) -> float:
        return max(r.leak for r in self.rows)

    def summary(self, cal: Calibration) -> dict:
        p = self.plan
        return {"max_leak": self.max_leak, "split_at": self.specs,
                "measured_leak": round(self.leak, 4),
                "sides": {r.side: r.to_json() for r in self.rows},
                "client_flops_share": round(p.flops_client / p.flops_total, 4) if p.flops_total else 0.0,
                "client_weight_share": round(p.bytes_client / p.bytes_total, 4) if p.bytes_total else 0.0,
                "calibration": cal.source, "kind": cal.kind,
                "attacker": "the wire tensors of each request (what the server receives and returns)"}


def _pick(rows: list[Row], side: str, max_leak: float) -> Row | None:
    ok = [r for r in rows if r.side == side and r.leak <= max_leak]
    return min(ok, key=lambda r: (r.client_flops_share, r.client_weight_share), default=None)


def choose(comp, rows: list[Row], max_leak: float, min_bits: float = 128.0, allow_weak=()) -> Placement:
    """The cheapest cut per side whose measured leak is at most ``max_leak``, combined into
    one split. A cut whose wire tensors have no form the metric reads (a pooled vector for
    the picture metric) counts as leak 0 for that metric, and is shown as such."""
    rows = [r for r in rows if r.client_flops_share < CLIENT_SHARE_LIMIT]
    picked = {side: _pick(rows, side, max_leak) for side in ("in", "out")}
    for side, row in picked.items():
        if row is None:
            best = min((r for r in rows if r.side == side), key=lambda r: r.leak, default=None)
            least = (f"the least leaky, {best.spec or '(entropy floor only)'}, leaks {best.leak:.3f} with "
                     f"{best.client_flops_share:.0%} of the FLOPs on the client" if best else
                     f"every cut puts {CLIENT_SHARE_LIMIT:.0%} or more of the FLOPs on the client")
            where = "entering" if side == "in" else "leaving"
            raise PlanError(f"no cut short of running the model on the client brings the measured leakage of "
                            f"what is {where} the server to {max_leak:g} ({least}); see `eeonnx plan`")
    specs = [r.spec for r in picked.values() if r.spec]
    try:
        plan = S.plan_split(comp, comp.model, "auto", min_bits, tuple(specs), tuple(allow_weak))
    except EEError as e:
        raise PlanError(f"the cheapest cuts meeting {max_leak:g} ({', '.join(specs)}) leave nothing on the server: "
                        f"no cut short of running the model on the client reaches it ({e})") from None
    if plan.flops_total and plan.flops_client >= CLIENT_SHARE_LIMIT * plan.flops_total:
        raise PlanError(f"the cheapest cuts meeting {max_leak:g} ({', '.join(specs)}) put "
                        f"{plan.flops_client / plan.flops_total:.0%} of the FLOPs on the client: no cut short of "
                        "running the model on the client reaches it; see `eeonnx plan`")
    return Placement(specs, list(picked.values()), plan, max_leak)


# -- output -------------------------------------------------------------------------
def table(rows: list[Row], cal: Calibration) -> str:
    a_name, b_name = ("corr", "base") if cal.kind == "image" else ("nn", "purity")
    head = f"  {'cut':<44} {'FLOPs':>6} {'weights':>7} {'wire KB':>8} {a_name:>6} {b_name:>6} {'leak':>6}"
    lines = [f"calibration: {cal.source}",
             "leak = worst wire tensor's excess over its chance baseline "
             + ("(PC1 of the wire vs the input's luminance, minus the same vs unrelated images)"
                if cal.kind == "image" else "(nearest-neighbour token match across contexts, minus chance)"),
             "attacker: the wire tensors of each request only; FLOPs/weights: client share; "
             "n/a: no wire tensor of a form the metric reads (e.g. a pooled vector), counted as 0"]
    for side, title in (("in", "what enters the server (client runs a prefix)"),
                        ("out", "what leaves the server (client runs a suffix)")):
        lines += ["", title, head]
        for r in (r for r in rows if r.side == side):
            m = r.metrics.get(r.leak_tensor, {}) if r.leak_tensor else {}
            a, b = (m.get("correlation"), m.get("baseline")) if cal.kind == "image" else \
                (m.get("nn_match"), m.get("cluster_purity"))
            cut = r.spec.split(":", 1)[1] if r.spec else "(entropy floor only)"
            cut = cut if len(cut) <= 44 else "..." + cut[-41:]
            f = lambda x: "   -  " if x is None else f"{x:6.3f}"  # noqa: E731
            leak = f(r.leak) if r.measured else "   n/a"
            lines.append(f"  {cut:<44} {r.client_flops_share:6.1%} {r.client_weight_share:7.1%} "
                         f"{r.wire_bytes / 1024:8.1f} {f(a)} {f(b)} {leak}")
    return "\n".join(lines)


def plot(rows: list[Row], cal: Calibration, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for side, style in (("in", "o-"), ("out", "s--")):
        pts = [(r.client_flops_share * 100, r.leak) for r in rows if r.side == side and r.measured]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, label="entering the server (prefix on client)" if side == "in"
                    else "leaving the server (suffix on client)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("client share of FLOPs (%)")
    ax.set_ylabel("leak: " + ("image correlation - baseline" if cal.kind == "image" else "NN token match - chance"))
    ax.set_title(title or "cost vs measured leakage per cut")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
