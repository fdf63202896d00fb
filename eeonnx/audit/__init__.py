"""eeonnx audit: the project's red team.

Each attack module receives exactly its attacker's knowledge (the server model;
plus public original or base weights; plus reference text or images) and never
the key or client files; :mod:`eeonnx.audit.score` compares what an attack
returned with the ground truth only after it returned. :mod:`eeonnx.audit.metrics`
holds the leakage metrics other modules (plan, transforms) reuse.
"""
from eeonnx.audit.metrics import (  # noqa: F401
    constant_guess_baseline,
    frequency_attack,
    image_wire_correlation,
    image_wire_leakage,
    occurrence_accuracy,
    token_wire_leakage,
)
