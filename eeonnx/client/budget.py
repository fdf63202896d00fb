"""Key budgets: how many token ids one key may carry before frequency analysis recovers too much.

Token ids under a permutation of the vocabulary are a substitution cipher:
a server that sees enough encrypted ids recovers a growing share of them
by frequency analysis (unigram rank + bigram hill climbing against public
text). The share grows with the number of tokens observed, so one key gets
a budget:

- ``tokens``: past this many ids, recovery is expected to exceed ``target``
  (the client warns once, :class:`KeyBudgetWarning`);
- ``hard_limit``: past this many, recovery is expected to exceed
  ``hard_target``; the client refuses (:class:`KeyBudgetError`) unless the
  caller overrides (``Client(out, allow_over_budget=True)``, CLI
  ``--allow-over-budget``). Rotate with ``eeonnx rekey``.

Both come from a recovery curve ``[(tokens, recovered share), ...]``: the
audit's measured curve for this artifact when ``eeonnx budget OUT
--from-audit FILE`` is given one, else :data:`DEFAULT_CURVE` (its source is
stated in the manifest). Interpolation is linear in log(tokens); beyond the
last point the last share is assumed (an optimistic bound, said so).

The count is persisted in ``client/budget.json`` (0600) next to the key,
keyed by the key's fingerprint (a re-keyed artifact starts at zero).
"""
from __future__ import annotations

import json
import math
import os
import threading
import warnings

from eeonnx.errors import EEError

BUDGET_FILE = "budget.json"

#: Measured by the audit issue (issue 9) on eeonnx artifacts of all-MiniLM-L6-v2
#: (30,522-id vocabulary) with real English text: the attacker sees only the
#: encrypted id stream and holds public reference text (unigram rank + bigram hill
#: climbing); constant-guess baseline 5% of occurrences.
DEFAULT_CURVE = [(1_000, 0.095), (10_000, 0.24), (100_000, 0.515), (1_000_000, 0.62)]
DEFAULT_SOURCE = ("default curve, not measured on this artifact: issue 9's frequency attack on "
                  "all-MiniLM-L6-v2 artifacts with English text (9.5% of token occurrences recovered "
                  "after 1k tokens, 24% after 10k, 50-53% after 100k, 62% after 1M; attacker: encrypted "
                  "id stream + public reference text). Run `eeonnx audit` and `eeonnx budget --from-audit`")
DEFAULT_TARGET = 0.10
DEFAULT_HARD_TARGET = 0.25


class KeyBudgetError(EEError):
    """This key carried more tokens than its hard limit; rotate it (eeonnx rekey) or override."""


class KeyBudgetWarning(UserWarning):
    """This key carried more tokens than its budget."""


def tokens_at(curve, share: float) -> int:
    """Tokens observed at which ``curve`` reaches ``share`` (log-linear interpolation).

    Below the first point the first share is taken to hold from 1 token on (so a curve whose
    first point already exceeds ``share`` gives its first token count scaled down log-linearly
    from 1 token at share 0); past the last point: the last point's count if its share is
    still below ``share`` (the curve says nothing further) ."""
    pts = sorted((int(t), float(r)) for t, r in curve)
    if not pts:
        raise ValueError("empty recovery curve")
    prev_t, prev_r = 1, 0.0
    for t, r in pts:
        if r >= share:
            if r == prev_r:
                return int(t)
            f = (share - prev_r) / (r - prev_r)
            return max(1, int(round(math.exp(math.log(prev_t) + f * (math.log(t) - math.log(prev_t))))))
        prev_t, prev_r = t, r
    return pts[-1][0]


def budget_from_curve(curve, source: str, target: float = DEFAULT_TARGET,
                      hard_target: float = DEFAULT_HARD_TARGET) -> dict:
    """The manifest's ``key_budget`` entry for a recovery curve."""
    if not 0 < target <= hard_target:
        raise ValueError("need 0 < target <= hard target")
    pts = sorted((int(t), float(r)) for t, r in curve)
    return {"tokens": tokens_at(pts, target), "hard_limit": max(tokens_at(pts, hard_target), tokens_at(pts, target)),
            "target": target, "hard_target": hard_target,
            "curve": [[t, round(r, 4)] for t, r in pts], "source": source}


def default_budget() -> dict:
    return budget_from_curve(DEFAULT_CURVE, DEFAULT_SOURCE)


def curve_from_audit(data) -> list[tuple[int, float]]:
    """Find a frequency-attack recovery curve in an audit JSON: a list of objects with
    ``tokens`` and a recovered share (``recovered``, ``occurrence_accuracy`` or ``accuracy``)."""
    found: list = []

    def walk(x):
        if found:
            return
        if isinstance(x, list) and x and all(isinstance(e, dict) and "tokens" in e for e in x):
            for key in ("recovered", "occurrence_accuracy", "accuracy"):
                if all(key in e for e in x):
                    found.extend((int(e["tokens"]), float(e[key])) for e in x)
                    return
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(data)
    return found


class TokenCounter:
    """Tokens carried by one key, persisted in client/budget.json (0600)."""

    def __init__(self, client_dir: str, fingerprint: str, budget: dict | None):
        self.path = os.path.join(client_dir, BUDGET_FILE)
        self.fingerprint = fingerprint
        self.budget = budget
        self.tokens = 0
        self._lock = threading.Lock()  # one Client may encode from many threads (remote sessions)
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("key_fingerprint") == fingerprint:
                self.tokens = int(data.get("tokens", 0))
        except (OSError, ValueError):
            pass

    def charge(self, n: int, allow_over: bool = False) -> None:
        """Count ``n`` more tokens: refuse past the hard limit (nothing is counted then),
        warn when the budget is crossed."""
        if self.budget is None or n <= 0:
            return
        with self._lock:
            self._charge(n, allow_over)

    def _charge(self, n: int, allow_over: bool) -> None:
        after = self.tokens + n
        hard, soft = self.budget["hard_limit"], self.budget["tokens"]
        if after > hard and not allow_over:
            raise KeyBudgetError(
                f"this key has carried {self.tokens} tokens; {n} more would pass its hard limit of {hard} "
                f"(frequency analysis expected to recover over {self.budget['hard_target']:.0%} of tokens; "
                f"{self.budget['source'].split(':')[0]}): rotate with `eeonnx rekey`, "
                "or override (allow_over_budget=True / --allow-over-budget)")
        if self.tokens <= soft < after:
            warnings.warn(f"this key has now carried {after} tokens, past its budget of {soft} (frequency "
                          f"analysis expected to recover over {self.budget['target']:.0%} of tokens); "
                          "plan a rotation (`eeonnx rekey`)", KeyBudgetWarning, stacklevel=4)
        self.tokens = after
        self._save()

    def _save(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"  # no two writers share a temp file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"key_fingerprint": self.fingerprint, "tokens": self.tokens}, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def set_budget(out: str, budget: dict) -> None:
    """Write ``budget`` into OUT/client/manifest.json (atomically, 0600)."""
    path = os.path.join(os.fspath(out), "client", "manifest.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["key_budget"] = budget
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
