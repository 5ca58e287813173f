"""Several decoder layers in one persistent launch (``decode_layers``) against the layers'
torch reference run one after another, shared by the interpreter test (one program: its grid
barriers open at once) and the GPU test (every program, real shapes)."""

from __future__ import annotations

from dataclasses import replace

import torch

from infer_core.kernels import decode_layer as dl
from tests.kernels.decode_layer_cases import (
    LAYER_TOL,
    LayerCase,
    check_counters,
    layer_inputs,
    relative_error,
)


def stack_inputs(case: LayerCase, n_layers: int, device: str, dtype: torch.dtype):
    """``n_layers`` layers of ``case``'s shape, each with its own weights and cache (seeds
    ``case.seed + i``), the first layer's step inputs, the shared metadata and rotary tables."""
    layers = [layer_inputs(replace(case, seed=case.seed + i), device, dtype) for i in range(n_layers)]
    weights = [lay[0] for lay in layers]
    caches = [lay[3] for lay in layers]
    _, attn, md, _, cos, sin, positions, x, res = layers[0]
    return weights, caches, attn, md, cos, sin, positions, x, res


def check_decode_layers(device: str, dtype: torch.dtype, case: LayerCase, n_layers: int,
                        config: dl.DecodeLayerConfig | None, *, one_launch: bool = True) -> dl.DecodeWorkspace:
    """``decode_layers`` == the references layer after layer (outputs, every cache's own slot,
    nothing else written); ``one_launch``: it took the one-launch path (the layers' table was
    built), and the counters say so (every stage barrier passed ``n_layers`` times, the barrier
    between layers ``n_layers - 1`` times)."""
    weights, caches, attn, md, cos, sin, positions, x, res = stack_inputs(case, n_layers, device, dtype)
    ref_caches = [c.clone() for c in caches]
    ref_x, ref_res = x, res
    for w, c in zip(weights, ref_caches, strict=True):
        ref_x, ref_res = dl.decode_layer_ref(ref_x, ref_res, w, attn, c, md, positions, cos, sin)
    splits = config.splits if config is not None else None
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, attn.num_heads, attn.num_kv_heads, attn.head_dim,
                            splits, dtype, device)
    out, new_res = dl.decode_layers(x, res, weights, attn, caches, md, positions, cos, sin, ws, config=config)
    tol = LAYER_TOL[dtype] * n_layers
    assert relative_error(new_res, ref_res) <= tol, (relative_error(new_res, ref_res), case)
    assert relative_error(out, ref_out := ref_x) <= tol, (relative_error(out, ref_out), case)
    slot = md.slot_mapping[0].item()
    for c, rc in zip(caches, ref_caches, strict=True):
        flat, ref_flat = c.view(2, -1, attn.num_kv_heads, attn.head_dim), rc.view(2, -1, attn.num_kv_heads, attn.head_dim)
        assert relative_error(flat[:, slot], ref_flat[:, slot]) <= tol, case  # the step's K/V, in every layer
        others = torch.ones(flat.shape[1], dtype=torch.bool, device=device)
        others[slot] = False
        assert torch.equal(flat[:, others], ref_flat[:, others]), case  # nothing else written
    assert ws.error.item() == 0, "a grid barrier timed out"
    built = [t for t in ws.layer_tables.values() if t is not None]
    assert bool(built) == one_launch, ws.layer_tables
    if one_launch:
        counters = ws.counters.tolist()
        programs = counters[4] // n_layers
        assert programs > 0 and counters == [programs * n_layers] * 5 + [programs * (n_layers - 1), n_layers,
                                                                        n_layers - 1], counters
    else:
        check_counters(ws, n_layers)
    return ws
