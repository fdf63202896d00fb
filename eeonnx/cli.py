"""The eeonnx command line (click).

Every deliberate refusal is an EEError: one line on stderr, exit code 2
(1 for a failed verification), no traceback unless --debug.
"""
from __future__ import annotations

import json
import os
import sys
import time

import click

from eeonnx.errors import EEError


def _dims(values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for v in values:
        name, sep, size = v.partition("=")
        if not sep or not size.strip().isdigit():
            raise click.BadParameter(f"'{v}': expected NAME=SIZE, e.g. batch=1", param_hint="--dim")
        out[name.strip()] = int(size)
    return out


def _providers(provider: str) -> list[str]:
    """ORT providers for --provider; an explicit request that cannot be met is an error."""
    from eeonnx.errors import ProviderError
    from eeonnx.server import runtime

    if provider == "cuda" and not runtime.cuda_usable():
        import onnxruntime as ort

        raise ProviderError(f"--provider cuda: CUDA is not usable here (onnxruntime {ort.__version__} offers "
                            f"{', '.join(ort.get_available_providers())}; a CUDA session failed to start); "
                            "use --provider cpu")
    return runtime.providers_for(None, None if provider == "auto" else provider)


def _transform_options(f):
    """--transforms and --allow-rounding, shared by compile and check."""
    f = click.option("--allow-rounding", is_flag=True,
                     help="Also transform fp16/bf16 tensors continuously (re-rounds their values).")(f)
    return click.option("--transforms", "transforms_mode", type=click.Choice(["permutation", "max"]),
                        default="max", show_default=True,
                        help="max (the default): give each secret class the largest exact group the graph "
                             "allows (positive diagonal through ReLU-like ops, orthogonal maps on residual "
                             "streams, per-head and rotary-pair maps in attention, any invertible map through "
                             "linear ones), folded in float64 and cast once. It defeats value matching, not an attacker "
                             "holding the original weights (`eeonnx audit --original` measures both). "
                             "permutation: permutations only "
                             "(the same values, moved; bit-exact, what fp16/int weights get anyway).")(f)


class _Group(click.Group):
    """Turns EEErrors into one-line messages with their exit code, and EEWarnings
    into ``warning: ...`` lines on stderr; ``--debug`` works before or after the
    subcommand."""

    def parse_args(self, ctx, args):
        if "--debug" in args[1:]:  # `eeonnx run ... --debug` means the group's flag
            args = ["--debug"] + [a for a in args if a != "--debug"]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        import warnings

        from eeonnx.errors import EEWarning

        debug = ctx.params.get("debug") or "--debug" in sys.argv

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, EEWarning):
                click.echo(f"warning: {message}", err=True)
            else:
                previous(message, category, filename, lineno, file, line)

        previous = warnings.showwarning
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", EEWarning)
                warnings.showwarning = show
                return super().invoke(ctx)
        except EEError as e:
            if debug:
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eeonnx")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """Equivariant Encryption for ONNX models.

    Folds secret permutations into a model's weights so an untrusted server
    runs the unchanged graph on encrypted inputs, at the plain model's speed.

    \b
    Typical session:
      eeonnx check   model.onnx                 # what would be encrypted
      eeonnx compile model.onnx -o out/         # write the artifacts
      eeonnx verify  model.onnx out/            # golden run on ONNX Runtime
      eeonnx run     out/ --input x=x.npy       # encrypted inference
      eeonnx generate out/ --prompt-ids 1,2,3   # language models, KV cache on the server
      eeonnx bench   model.onnx out/            # plain vs server latency
      eeonnx audit   out/ --original model.onnx # what a server with public weights recovers
      eeonnx plan    model.onnx                 # client cost vs measured leakage per cut
      eeonnx serve   out/server                 # the server half over HTTP (on the server machine)
    Ship out/server/model.onnx; keep out/client/ (it holds the key).
    """
    del debug


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--out", required=True, type=click.Path(path_type=str),
              help="Artifact directory to write (server/ and client/).")
@click.option("--key", type=click.Path(path_type=str),
              help="Reuse this key.json (same key + same model = same artifact).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
              help="Fix a symbolic input dim, e.g. --dim batch=1 (repeatable).")
@click.option("--allow-clear", multiple=True, metavar="NAME",
              help="Accept that this input/output travels unencrypted (repeatable).")
@click.option("--split", "split_mode", type=click.Choice(["auto", "none"]), default="auto", show_default=True,
              help="auto: run weak first/last layers on the client so every tensor on the wire "
                   "has --min-key-bits; none: keep the boundary at the model's inputs/outputs.")
@click.option("--min-key-bits", default=128.0, show_default=True,
              help="Least key strength (log2 of the permutations) of any content tensor on the wire.")
@click.option("--split-at", multiple=True, metavar="[in:|out:]NAME",
              help="Cut at this tensor by hand: in: the client computes it, out: the server returns it.")
@click.option("--allow-weak", multiple=True, metavar="NAME",
              help="Accept a wire tensor below --min-key-bits (repeatable).")
@click.option("--tokenizer", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="A Hugging Face tokenizer.json: also write client/tokenizer.json with encrypted ids.")
@click.option("--server-state/--client-state", default=True, show_default=True,
              help="Keep a KV cache (past -> present pairs found in the graph) on the server, "
                   "or pass it through encode/decode like any other tensor.")
@_transform_options
@click.option("--max-leak", type=float, metavar="X",
              help="Place the client split at the cheapest cut whose measured leakage (see `eeonnx plan`) "
                   "is at most X; --min-key-bits stays a floor.")
@click.option("--images", "plan_images", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="With --max-leak: calibration images (PNG/JPEG folder) instead of the bundled samples.")
@click.option("--text", "plan_text", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="With --max-leak: calibration text files (tokenized with --tokenizer).")
@click.option("--keep-names", is_flag=True,
              help="Debugging aid: keep the original tensor/node names in server/model.onnx. They tell the "
                   "server which model it runs (e.g. bert.encoder.layer.0...); by default they are opaque "
                   "(x0, w3, n7) and client/manifest.json's server_names holds the map.")
@click.option("--strict", is_flag=True, help="Fail instead of pinning any weight axis to the identity.")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT (atomically).")
@click.option("--verify/--no-verify", "do_verify", default=False, help="Run a golden check after writing.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def compile_cmd(model, out, key, dims, allow_clear, split_mode, min_key_bits, split_at, allow_weak,
                tokenizer, server_state, transforms_mode, allow_rounding, max_leak, plan_images, plan_text,
                keep_names, strict, force, do_verify, quiet):
    """Compile MODEL into an encrypted server model plus client files.

    \b
    Example:
      eeonnx compile models/cnn.onnx -o out/cnn
      eeonnx compile models/mlp.onnx -o out/mlp --transforms permutation   # permutations only
      eeonnx compile models/cnn.onnx -o out/cnn --max-leak 0.15   # cut placed by measured leakage
    writes
      out/cnn/server/model.onnx      ship this to the untrusted server
      out/cnn/client/encode.onnx     inputs  -> server inputs
      out/cnn/client/decode.onnx     server outputs -> outputs
      out/cnn/client/key.json        the secret (mode 0600)
      out/cnn/client/manifest.json   I/O mapping, layouts, coverage
    The whole client/ directory is the secret (its files are written 0600, the
    directory 0700): encode/decode hold the secret transforms, not only key.json.
    """
    from eeonnx.compiler import report
    from eeonnx.compiler.api import compile as compile_model
    from eeonnx.client.verify import verify

    t0 = time.perf_counter()
    comp = compile_model(model, out, key=key, dims=_dims(dims), strict=strict, force=force,
                         allow_clear=allow_clear, split=split_mode, min_key_bits=min_key_bits,
                         split_at=split_at, allow_weak=allow_weak, tokenizer=tokenizer,
                         server_state=server_state, transforms=transforms_mode,
                         allow_rounding=allow_rounding, max_leak=max_leak, images=plan_images,
                         text=plan_text, keep_names=keep_names, quiet=quiet or not sys.stderr.isatty())
    if not quiet:
        click.echo(report.compile_summary(comp, out, time.perf_counter() - t0))
    if do_verify:
        errs = verify(model, out, dims=_dims(dims))
        _print_errors(errs, 1e-4)  # verify's default tol


def _print_errors(checks: dict, tol: float) -> None:
    """One line per output: its error, the plain model's noise floor, the verdict."""
    from eeonnx.errors import VerifyError

    bad = []
    for name, c in checks.items():
        click.echo(f"  {name}: max rel err {c.err:.2e} {'ok' if c.ok else 'MISMATCH'} "
                   f"(noise floor {c.floor:.1e}, allowed {c.allowed:.1e})")
        if not c.ok:
            bad.append(f"{name} ({c.err:.1e} > {c.allowed:.1e})")
    if bad:
        raise VerifyError(f"decoded outputs differ from the original beyond --tol {tol:g} and 4x the "
                          f"plain model's own noise: {', '.join(bad)}")


@main.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--spec", is_flag=True, help="Print the layout of every initializer axis.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Fix a symbolic input dim.")
@_transform_options
def check(model, as_json, spec, dims, transforms_mode, allow_rounding):
    """Report, without writing anything, what compile would do with MODEL.

    Per op type: supported, pins (which node fixes which weight axis to the
    identity, and why) or unsupported. --spec prints the PermutationSpec:
    initializer -> layout per axis, where P is public, cN[n] a secret class of
    size n, kron(...) a merged axis and cat(...) blocks side by side; then
    the group of every class (the largest exact one; --transforms permutation:
    permutations only).

    \b
    Example:
      eeonnx check models/cnn.onnx --spec
      eeonnx check models/mlp.onnx --spec --transforms permutation
    Exit code 2 when some op is not supported.
    """
    from eeonnx.compiler import report
    from eeonnx.compiler.api import check as analyze

    comp = analyze(model, dims=_dims(dims), transforms=transforms_mode, allow_rounding=allow_rounding)
    rep = report.check_report(comp)
    if spec:
        rep["spec"] = comp.spec()
        rep["groups"] = {c.name: c.group for c in comp.classes.values()}
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        click.echo(report.check_text(rep))
        if spec:
            click.echo("\nlayout spec (initializer -> per-axis layout):")
            click.echo(report.spec_text(rep["spec"]))
            click.echo("\nclass groups:")
            click.echo(report.groups_detail(comp))
    if not rep["compilable"]:
        sys.exit(2)


@main.command("verify")
@click.argument("model", type=click.Path(exists=True, path_type=str))
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--trials", default=3, show_default=True, help="Random feeds to try.")
@click.option("--tol", default=1e-4, show_default=True,
              help="Max relative error per output (raised to 4x the plain model's own float noise "
                   "where that is larger, e.g. fp16).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
              help="Size of a symbolic dim in the random feeds (default 2).")
def verify_cmd(model, out, trials, tol, dims):
    """Check decode(server(encode(x))) == MODEL(x) on ONNX Runtime.

    Runs the original and the encrypted pipeline on random inputs of the
    declared shapes; prints the max relative error per output; exit 1 on a
    mismatch.

    \b
    Example:
      eeonnx verify models/cnn.onnx out/cnn --trials 5
    """
    from eeonnx.client.verify import verify

    errs = verify(model, out, trials=trials, dims=_dims(dims), tol=tol)
    _print_errors(errs, tol)
    click.echo(f"ok: {len(errs)} output(s) match within max({tol:g}, 4x the plain model's noise floor)")


def _server_for(client, out: str, provider: str, server_url: str | None):
    """The in-process Server on OUT/server/model.onnx, or a RemoteServer at --server URL."""
    if server_url:
        from eeonnx.client.remote import RemoteServer

        return RemoteServer(server_url, client.artifact_id)
    from eeonnx import Server

    return Server(os.path.join(out, "server", "model.onnx"), _providers(provider))


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", required=True,
              help="An original input and the .npy file holding it (repeatable).")
@click.option("--save", type=click.Path(file_okay=False, path_type=str),
              help="Write each decoded output to DIR/NAME.npy.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the server model runs.")
@click.option("--allow-over-budget", is_flag=True, help="Encode past the key's hard token limit.")
@click.option("--server", "server_url", metavar="URL",
              help="Run the server half on an `eeonnx serve` at URL (e.g. http://10.0.0.5:8000) instead of here.")
def run(out, inputs, save, provider, allow_over_budget, server_url):
    """Encrypted inference from the client's side: encode, run the server model, decode.

    \b
    Example:
      python -c "import numpy as np; np.save('out/x.npy', np.random.rand(1,3,32,32))"
      eeonnx run out/cnn --input image=out/x.npy --save out/results/
      eeonnx run out/cnn --input image=out/x.npy --server http://127.0.0.1:8000
    A float64 array (what np.random.rand gives) is rounded to the model's float32
    with a warning; a wrong shape, or floats where token ids are expected, is an error.
    """
    import numpy as np

    from eeonnx import Client

    feeds = {}
    for item in inputs:
        name, sep, path = item.partition("=")
        if not sep:
            raise click.BadParameter(f"'{item}': expected NAME=FILE.npy", param_hint="--input")
        try:
            feeds[name] = np.load(path)
        except (OSError, ValueError) as e:
            raise click.BadParameter(f"cannot read {path}: {e}", param_hint="--input") from None
    client = Client(out, allow_over_budget=allow_over_budget)
    unknown = sorted(set(feeds) - set(client.input_names))
    missing = sorted(set(client.input_names) - set(feeds))
    if unknown or missing:
        raise click.UsageError(f"model inputs are {client.input_names}; missing {missing}, unknown {unknown}")
    server = _server_for(client, out, provider, server_url)
    t0 = time.perf_counter()
    results = client.infer(server, feeds)
    ms = (time.perf_counter() - t0) * 1000
    for name, value in results.items():
        click.echo(f"{name}: shape {list(value.shape)} {value.dtype}  "
                   f"{np.array2string(value.reshape(-1)[:6], precision=4)}{' ...' if value.size > 6 else ''}")
        if save:
            os.makedirs(save, exist_ok=True)
            np.save(os.path.join(save, f"{name}.npy"), value)
    click.echo(f"(encode + server on {server.device} + decode: {ms:.1f} ms)", err=True)


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--prompt-ids", metavar="ID,ID,...", help="Prompt as plain token ids, e.g. 1,2,3.")
@click.option("--prompt", "prompt_text", metavar="TEXT",
              help="Prompt as text (needs OUT/client/tokenizer.json from compile --tokenizer).")
@click.option("--max-new-tokens", default=20, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, help="Sample among the k best (0 = all).")
@click.option("--seed", type=int, help="Seed for sampling.")
@click.option("--eos-id", "eos_ids", multiple=True, type=int, help="Stop at this token id (repeatable).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--allow-over-budget", is_flag=True, help="Encode past the key's hard token limit.")
@click.option("--server", "server_url", metavar="URL",
              help="Generate against an `eeonnx serve` at URL: the KV cache stays on that server.")
def generate(out, prompt_ids, prompt_text, max_new_tokens, temperature, top_k, seed, eos_ids, provider,
             allow_over_budget, server_url):
    """Encrypted text generation: the server sees encrypted ids, returns encrypted
    logits and keeps its (encrypted) KV cache; sampling happens here.

    \b
    Examples:
      eeonnx generate out/llama --prompt-ids 1,2,3 --max-new-tokens 12
      eeonnx generate out/gpt2 --prompt "Hello" --temperature 0.8 --top-k 40 --seed 0
      eeonnx generate out/llama --prompt-ids 1,2,3 --server http://127.0.0.1:8000
    """
    from eeonnx import Client

    client = Client(out, allow_over_budget=allow_over_budget)
    tokenizer = None
    if prompt_text is not None:
        tokenizer = client.plain_tokenizer()
        ids = tokenizer.encode(prompt_text)
    elif prompt_ids:
        try:
            ids = [int(t) for t in prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise click.BadParameter(f"'{prompt_ids}': expected comma-separated integers",
                                     param_hint="--prompt-ids") from None
    else:
        raise click.UsageError("give --prompt-ids or --prompt")
    server = _server_for(client, out, provider, server_url)
    t0, n = time.perf_counter(), 0
    generated, shown = [], ""
    for token in client.generate(server, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_k=top_k, seed=seed, eos_ids=eos_ids):
        n += 1
        if tokenizer is None:
            click.echo(f"{token} ", nl=False)
            continue
        # decode the whole continuation: word pieces and multi-byte characters join correctly
        generated.append(token)
        text = tokenizer.decode(generated)
        if not text.endswith("\ufffd"):  # wait for the rest of a split character
            click.echo(text[len(shown):] if text.startswith(shown) else "\n" + text, nl=False)
            shown = text
    click.echo()
    dt = time.perf_counter() - t0
    click.echo(f"({n} tokens in {dt:.2f} s, {n / dt:.1f} tokens/s, server on {server.device})", err=True)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--iters", default=50, show_default=True, help="Timed runs of each model (interleaved).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a symbolic dim (default 2).")
@click.option("--generate", "gen", is_flag=True, help="Also time prefill/decode tokens/s (language models).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def bench(model, out, provider, iters, dims, gen, as_json):
    """Latency of the plain MODEL vs the server model in OUT, same ORT settings.

    Interleaved runs after warm-up (the order alternates); median and p90 of
    each, the server/plain ratio (1.00 = no server overhead) with a 95%
    interval and a warning when that is too wide to trust, the end-to-end
    figure (encode + server + decode), the client's share of it and the bytes
    on the wire per request. Symbolic dims default to 2, a KV cache starts
    empty (as verify feeds it).

    \b
    Example:
      eeonnx bench models/cnn.onnx out/cnn --iters 200
    """
    from eeonnx.client.bench import bench_generate, bench_model

    _providers(provider)  # refuses cuda where it cannot run
    r = bench_model(model, out, provider=provider, iters=iters, dims=_dims(dims))
    if gen:
        r["generate"] = bench_generate(model, out, provider=provider)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"{model} on {r['provider']} ({r['iters']} interleaved runs)")
    click.echo(f"  plain : median {r['plain']['median_ms']:.3f} ms, p90 {r['plain']['p90_ms']:.3f} ms")
    click.echo(f"  server: median {r['server']['median_ms']:.3f} ms, p90 {r['server']['p90_ms']:.3f} ms")
    lo, hi = r["ratio_interval"]
    click.echo(f"  server/plain: {r['ratio_median']:.3f} (95% interval {lo:.3f}-{hi:.3f})")
    click.echo(f"  end to end (encode + server + decode): median {r['end_to_end']['median_ms']:.3f} ms, "
               f"{r['end_to_end_ratio']:.3f}x plain")
    click.echo(f"  client encode+decode: {r['client_ms']:.3f} ms ({r['client_share']:.1%} of plain)")
    w = r["wire_bytes"]
    click.echo(f"  on the wire per request: {w['request']:,} B sent, {w['response']:,} B returned")
    if not r["ratio_trusted"]:
        click.echo(f"  warning: the repeats spread too widely to trust the ratio (interval {hi - lo:.3f} wide); "
                   "use more --iters or a quieter machine", err=True)
    if gen:
        g = r["generate"]
        for k in ("plain", "encrypted"):
            click.echo(f"  {k:9}: prefill {g[k]['prefill_tokens_per_s']:.0f} tok/s, "
                       f"decode {g[k]['decode_tokens_per_s']:.0f} tok/s")
        click.echo(f"  encrypted/plain: prefill {g['ratio_prefill']:.3f}, decode {g['ratio_decode']:.3f}")


@main.command("rekey")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("-o", "--out2", "out2", required=True, type=click.Path(path_type=str),
              help="Directory for the re-keyed artifact (OUT stays as it was).")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT2 (atomically).")
def rekey_cmd(out, out2, force):
    """Give the artifact OUT a fresh key: re-fold its weights from client/rekey.json
    (no original model, no re-analysis) into OUT2, with a new key.json and artifact id.
    Every class gets a new permutation and, above the permutations, a new element of
    its group (re-folded in float64 and cast once: exact to float rounding, not
    bit-identical to a fresh compile).

    Rotation helps against a server (or node) that never saw OUT; a server
    that keeps both server models can link them (same weights, two orders).

    \b
    Example:
      eeonnx rekey out/cnn -o out/cnn-2
    """
    from eeonnx.compiler.rekey import rekey

    t0 = time.perf_counter()
    r = rekey(out, out2, force=force)
    click.echo(f"re-keyed {out} -> {r['out']} in {time.perf_counter() - t0:.2f} s: {r['classes']} classes, "
               f"{r['tensors']} tensors re-folded; key {r['old_key']} -> {r['new_key']}")


@main.command("budget")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--from-audit", "audit_json", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Set the budget from the frequency-attack curve in this `eeonnx audit --json` output.")
@click.option("--target", default=0.10, show_default=True, help="Recovered share at which the budget ends.")
@click.option("--hard-target", default=0.25, show_default=True, help="Recovered share at the hard limit.")
def budget_cmd(out, audit_json, target, hard_target):
    """Show (or set) how many tokens this key may carry: the budget (a warning past it)
    and the hard limit (refused past it), and how many it has carried.

    \b
    Examples:
      eeonnx budget out/bert
      eeonnx audit out/bert --text corpus.txt --json > audit.json
      eeonnx budget out/bert --from-audit audit.json --target 0.1
    """
    from eeonnx.client import budget as B

    with open(os.path.join(out, "client", "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    current = manifest.get("key_budget")
    if current is None:
        raise B.KeyBudgetError(f"{out}: this model takes no token ids; no key budget applies")
    if audit_json:
        with open(audit_json, encoding="utf-8") as f:
            curve = B.curve_from_audit(json.load(f))
        if not curve:
            raise B.KeyBudgetError(f"{audit_json}: no frequency-attack curve (tokens -> recovered) in it")
        current = {"input": current["input"],
                   **B.budget_from_curve(curve, f"measured by eeonnx audit ({os.path.basename(audit_json)})",
                                         target, hard_target)}
        B.set_budget(out, current)
    counter = B.TokenCounter(os.path.join(out, "client"), manifest.get("key_fingerprint", ""), current)
    click.echo(f"key {manifest.get('key_fingerprint')}: {counter.tokens} tokens carried; budget "
               f"{current['tokens']} (recovery {current['target']:.0%}), hard limit {current['hard_limit']} "
               f"(recovery {current['hard_target']:.0%})")
    click.echo(f"  source: {current['source']}")


@main.command("audit")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--original", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="The public original model: run the known-weights attack.")
@click.option("--base", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="A public base model OUT was fine-tuned from: run the fine-tune alignment.")
@click.option("--text", "texts", multiple=True, type=click.Path(exists=True, path_type=str),
              help="English text (file or folder, repeatable) for the frequency attack "
                   "(default: Python's documentation found locally).")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Folder of PNG/JPEG images for the image-wire attack (default: bundled synthetic pictures).")
@click.option("--link", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="A second artifact: can the server tell both come from one model?")
@click.option("--budget", default=60.0, show_default=True, help="Seconds each attack may take.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable scorecard (fields: see eeonnx/audit/scorecard.py).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=str),
              help="Write a Markdown report with plots (audit.md, audit.json, *.png) here.")
def audit_cmd(out, original, base, texts, images_dir, link, budget, as_json, report_dir):
    """Attack the artifact OUT as an untrusted server would, and score what was learned.

    Each attack gets exactly its attacker's knowledge (the server model; plus
    --original / --base weights; plus reference text), never the key or client
    files; the scores come from the key afterwards. The scorecard gives threat
    model, what was recovered, time, and a verdict against a stated target.

    \b
    Examples:
      eeonnx audit out/bert --original models/fixtures/bert.ts.onnx
      eeonnx audit out/cnn --images photos/ --report audit-cnn/
      eeonnx audit out/minilm --text corpus.txt --json > audit.json
    """
    import sys

    from eeonnx.audit.scorecard import audit, to_json, to_text

    progress = sys.stderr if sys.stderr.isatty() else None
    r = audit(out, original=original, base=base, texts=list(texts), images_dir=images_dir, link=link,
              budget=budget, progress=progress)
    if report_dir:
        from eeonnx.audit.report import write_report

        for path in write_report(r, report_dir):
            click.echo(f"wrote {path}", err=True)
    click.echo(to_json(r) if as_json else to_text(r))
@main.command("plan")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Calibration images (a folder of PNG/JPEG) instead of the bundled sample pictures.")
@click.option("--text", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Calibration text (repeatable; needs --tokenizer) instead of synthetic token ids.")
@click.option("--tokenizer", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="The model's tokenizer.json, to tokenize --text.")
@click.option("--min-key-bits", default=128.0, show_default=True, help="Entropy floor every cut keeps.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Fix a symbolic input dim.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable rows.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write a PNG of client cost vs measured leakage.")
def plan_cmd(model, images, text, tokenizer, min_key_bits, dims, as_json, plot_path):
    """Where to cut: for each candidate client split of MODEL, what the client pays
    (share of FLOPs and weights, bytes on the wire) and what the server learns
    (measured leakage of the wire tensors: image correlation with the input above
    unrelated images, or nearest-neighbour token match above chance).

    \b
    Examples:
      eeonnx plan models/cnn.onnx --plot cnn-plan.png
      eeonnx plan bert.onnx --text corpus.txt --tokenizer tokenizer.json --json
    Then: eeonnx compile MODEL -o OUT --max-leak X (or --split-at CUT).
    """
    from eeonnx.compiler import plan as P
    from eeonnx.compiler.api import check as analyze

    comp = analyze(model, dims=_dims(dims))
    if comp.unsupported:
        from eeonnx.errors import UnsupportedOpError

        node, why = comp.unsupported[0]
        raise UnsupportedOpError(node.name or "?", node.op_type, node.domain, why)
    rows, cal = P.measure(comp, min_key_bits, images=images, text=text, tokenizer=tokenizer)
    if plot_path:
        P.plot(rows, cal, plot_path, title=os.path.basename(model))
    if as_json:
        click.echo(json.dumps({"model": model, "calibration": cal.source, "kind": cal.kind,
                               "rows": [r.to_json() for r in rows]}, indent=2))
        return
    click.echo(P.table(rows, cal))
    if plot_path:
        click.echo(f"plot: {plot_path}")


@main.command("serve")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; transport security is the deployment's job).")
@click.option("--port", default=8000, show_default=True)
@click.option("--replicas", default=1, show_default=True, help="Model replicas (Ray Serve), each with its own sessions.")
@click.option("--max-models", default=4, show_default=True, help="Models loaded per replica (least recently used evicted).")
@click.option("--max-sessions", default=64, show_default=True, help="Generation sessions per replica (LRU evicted).")
@click.option("--session-ttl", default=600.0, show_default=True, help="Seconds an idle session keeps its KV cache.")
@click.option("--max-state-mb", default=2048, show_default=True, help="KV cache memory cap per replica (MiB).")
@click.option("--max-request-mb", default=64, show_default=True, help="Largest request body accepted (MiB).")
@click.option("--replica-cpus", default=1.0, show_default=True, help="CPUs Ray reserves per replica.")
@click.option("--address", metavar="ADDR", help="Join an existing Ray cluster (e.g. auto) instead of starting one.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def serve_cmd(paths, host, port, replicas, max_models, max_sessions, session_ttl, max_state_mb, max_request_mb,
              replica_cpus, address, provider):
    """Serve server models over HTTP (Open Inference Protocol v2) with Ray Serve.

    PATHS are server/ directories, directories of them, or server model files;
    each model is addressed by its artifact id. A directory holding client
    files (client/, any .json) is refused. Needs the serve extra:
    pip install 'eeonnx[serve]'.

    \b
    Examples:
      eeonnx serve out/cnn/server
      eeonnx serve /srv/models --host 0.0.0.0 --port 8000 --replicas 2
      eeonnx serve /shared/models --address auto      # on an existing Ray cluster
    """
    try:
        from eeonnx.server.serve.service import Options, serve_forever
    except ImportError as e:
        raise click.UsageError(f"eeonnx serve needs the serve extra (pip install 'eeonnx[serve]'): {e}")
    from eeonnx.server.runtime import providers_for

    opts = Options(replicas=replicas, max_models=max_models, max_sessions=max_sessions, session_ttl=session_ttl,
                   max_state_bytes=max_state_mb << 20, max_request_bytes=max_request_mb << 20,
                   replica_cpus=replica_cpus,
                   providers=None if provider == "auto" else providers_for(None, provider))
    serve_forever(paths, host=host, port=port, options=opts, address=address, echo=click.echo)


@main.command("export-triton")
@click.argument("artifact", type=click.Path(exists=True, path_type=str))
@click.option("--repo", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Triton model repository to write into.")
@click.option("--name", help="Model name in the repository (default: eeonnx-<artifact id>).")
@click.option("--force", is_flag=True, help="Replace an existing model directory.")
def export_triton(artifact, repo, name, force):
    """Write the server half as a Triton model repository entry.

    REPO/NAME/config.pbtxt (onnxruntime backend, typed inputs and outputs,
    sequence_batching with an implicit state per KV pair) and
    REPO/NAME/1/model.onnx. Only server files are written; the config is
    checked against Triton's ModelConfig protobuf when tritonclient is installed.

    \b
    Example:
      eeonnx export-triton out/llama --repo triton_models/
      docker run --rm -p8000:8000 -v $PWD/triton_models:/models nvcr.io/nvidia/tritonserver:<ver>-py3 \\
          tritonserver --model-repository=/models
    """
    from eeonnx.server.serve import triton

    target = triton.export(artifact, repo, name=name, force=force)
    checked = ("checked against Triton's ModelConfig" if triton.can_validate()
               else "not checked: install tritonclient[grpc] to validate")
    click.echo(f"wrote {target}/config.pbtxt and {target}/1/model.onnx ({checked})")


if __name__ == "__main__":
    main()
