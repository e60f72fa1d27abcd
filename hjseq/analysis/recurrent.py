"""The ε lens of the recurrent blocks of a language model (Mamba, RNN, GRU, LSTM), measured on
the inputs each block receives while the model reads real text.

A recurrent block is the Euler (or exact-flow) discretization of a characteristic ODE
``dh/dτ = Δ_k F(h; x_k)`` per token k (see :mod:`hjseq.engine`). For every such layer this
module measures:

* **step** — the distribution of the step Δ the block takes per token and unit. Mamba:
  the learned time warp ``Δ = softplus(W_Δ x + b_Δ)`` (per channel); GRU: its update gate
  ``Δ·z``; blocks whose spec declares a constant step (RNN, LSTM) get the effective step
  ``1 − ∂h'_i/∂h_i`` read off the diagonal of the one-step Jacobian (for the LSTM that is
  exactly its forget rate ``Δ(1 − f)``, the gates being held over a token).
* **decay** — the spectrum of the one-token decay. Mamba: ``exp(Δ A)`` per channel and
  state, the diagonal transition of ``h_{k+1} = exp(ΔA) h_k + …``; other cells: the moduli
  of the eigenvalues of the one-step Jacobian ``∂h_{k+1}/∂h_k`` (its linearized decay).
* **ode** — the deviation of the block's discrete trajectory from the exact flow of its
  characteristic ODE (:func:`hjseq.solver.compare`, dopri5, float64): per-token global
  error ``max |h_k − h^c_k|`` and the observed order under refinement.
* **noise** — validation bits per byte when viscosity ε > 0 adds ``√(2ε dt) ξ`` to the
  state at every token (``dt``: the spec's nominal step; the stochastic characteristics of
  ``u_t + H = εΔu``), for each layer alone and for all recurrent layers at once.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from hjseq.models.data import bits_per_byte

EPS_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # viscosities of the noise sweep
HIST_BINS = 40


def recurrent_layers(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """``(layer index, block kind, recurrent block)`` for every layer of an ``HJLM`` whose
    mixer is (or wraps, as ``RecurrentMixer.cell``) a :class:`~hjseq.nn.base.RecurrentBlock`."""
    from hjseq.nn.base import RecurrentBlock

    found = []
    for i, layer in enumerate(getattr(model, "layers", [])):
        mixer = getattr(layer, "mixer", layer)
        block = mixer if isinstance(mixer, RecurrentBlock) else getattr(mixer, "cell", None)
        if isinstance(block, RecurrentBlock):
            found.append((i, str(getattr(layer, "kind", type(block).__name__)), block))
    return found


def capture_inputs(model: nn.Module, ids: Tensor, blocks: list[nn.Module]) -> list[Tensor]:
    """The input ``(B, L, d)`` each of ``blocks`` receives during ``model(ids)``."""
    got: dict[int, Tensor] = {}
    hooks = [b.register_forward_pre_hook(lambda mod, a, i=i: got.__setitem__(i, a[0].detach()))
             for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return [got[i] for i in range(len(blocks))]


def _histogram(values: Tensor, lo: float, hi: float, log: bool) -> dict[str, list[float]]:
    v = values.double().flatten()
    v = v[torch.isfinite(v)]
    if log:
        v, lo, hi = v.clamp_min(1e-12).log10(), math.log10(lo), math.log10(hi)
    counts = torch.histc(v.clamp(lo, hi), bins=HIST_BINS, min=lo, max=hi)
    edges = torch.linspace(lo, hi, HIST_BINS + 1, dtype=torch.float64)
    if log:
        edges = 10 ** edges
    return {"edges": edges.tolist(), "density": (counts / max(1, v.numel())).tolist()}


def _summary(values: Tensor) -> dict[str, float]:
    v = values.double().flatten()
    q = torch.quantile(v, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)) if v.numel() \
        else torch.full((3,), float("nan"))
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "q05": float(q[0]), "median": float(q[1]), "q95": float(q[2]), "n": int(v.numel())}


def _jacobians(view: Any, tokens: list[int]) -> Tensor:
    """``∂h_{k+1}/∂h_k`` (len(tokens) · B, S, S) of the block's discrete step at its own
    states, one per token and sample (samples do not interact)."""
    out = []
    for k in tokens:
        h = view.states[:, k].detach()                                            # (B, S)
        J = torch.autograd.functional.jacobian(lambda s, k=k: view.discrete_step(k, s), h,
                                               vectorize=True)                    # (B, S, B, S)
        out.append(torch.diagonal(J, dim1=0, dim2=2).permute(2, 0, 1))           # (B, S, S)
    return torch.cat(out)


def step_and_decay(block: nn.Module, x: Tensor, max_jacobian_tokens: int = 8
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The step Δ and the decay spectrum of ``block`` on its input x ``(B, L, d)``; see the
    module docstring for what each means per block kind. Returns two JSON-able dicts."""
    from hjseq.engine import characteristics
    from hjseq.nn import HJMamba

    with torch.no_grad():
        view = characteristics(block, x)
    L = view.length
    spec_step = view._steps  # Δ_k per token: a float, or a tensor broadcastable to the state
    if isinstance(block, HJMamba):
        delta = torch.stack([s.reshape(s.shape[0], -1) for s in spec_step], 1)  # (B, L, D)
        A = -torch.exp(block.A_log.detach().to(delta.dtype))                     # (D, N)
        decay = torch.exp(delta[..., None] * A)                                    # (B, L, D, N)
        step = {"what": "learned time warp Δ = softplus(W_Δ x + b_Δ), per channel and token",
                "values": delta}
        dec = {"what": "exp(ΔA) per channel, state and token (diagonal transition)",
               "values": decay}
    else:
        tokens = sorted({round(i * (L - 1) / max(1, max_jacobian_tokens - 1))
                         for i in range(min(L, max_jacobian_tokens))})
        with torch.enable_grad():
            J = _jacobians(view, tokens)                                           # (T, S, S)
        moduli = torch.linalg.eigvals(J.double()).abs()
        dec = {"what": f"|eigenvalues| of the one-step Jacobian ∂h'/∂h ({len(tokens)} tokens)",
               "values": moduli}
        if isinstance(spec_step[0], Tensor):
            step = {"what": "data-dependent step Δ·gate per unit and token",
                    "values": torch.stack([s.reshape(s.shape[0], -1) for s in spec_step], 1)}
        else:
            step = {"what": f"effective step 1 − ∂h'_i/∂h_i (spec: constant Δ = {spec_step[0]:g})",
                    "values": 1 - torch.diagonal(J, dim1=-2, dim2=-1)}
    steps, decays = step.pop("values").detach(), dec.pop("values").detach()
    step.update(_summary(steps), histogram=_histogram(steps, 1e-4, max(1.0, float(steps.max())),
                                                       log=True))
    dec.update(_summary(decays), histogram=_histogram(decays, 0.0, max(1.0, float(decays.max())),
                                                       log=False),
               fraction_above_0_99=float((decays > 0.99).double().mean()))
    return step, dec


def ode_deviation(block: nn.Module, x: Tensor, tokens: int = 8,
                  refinements: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, Any]:
    """:func:`hjseq.solver.compare` of (a float64 copy of) ``block`` on the first ``tokens``
    tokens of its first input row: the discrete steps against the exact characteristic flow."""
    from hjseq.solver import compare

    b64 = copy.deepcopy(block).double().eval()
    report = compare(b64, x[:1, :tokens].double(), refinements=refinements)
    d = report.to_dict()
    return {k: d[k] for k in ("block", "scheme", "declared_order", "observed_order",
                              "global_max_error", "local_max_error", "global_error",
                              "refinements", "refinement_error")}


@contextmanager
def _on_loop(blocks: list[nn.Module]) -> Iterator[None]:
    """Run ``blocks`` on the engine's loop backend, which draws the noise for every block
    kind (a fused kernel may not), so every ε of a sweep runs the same arithmetic."""
    saved = [b.backend for b in blocks]
    try:
        for b in blocks:
            b.backend = "loop"
        yield
    finally:
        for b, backend in zip(blocks, saved):
            b.backend = backend


@contextmanager
def _viscous(blocks: list[nn.Module], eps: float) -> Iterator[None]:
    """Give ``blocks`` viscosity ``eps`` and put them (only them) in training mode, where the
    engine adds the noise; restore afterwards."""
    saved = [(b.eps, b.training) for b in blocks]
    try:
        for b in blocks:
            b.eps = eps
            b.train(eps > 0)
        yield
    finally:
        for b, (e, training) in zip(blocks, saved):
            b.eps = e
            b.train(training)


@torch.no_grad()
def _bpb(model: nn.Module, ids: Tensor, byte_lengths: Tensor | None = None) -> float:
    """Bits per byte of the next-token targets ``ids[:, 1:]``: summed nats over the bytes
    the targets stand for (``byte_lengths (V,)``; None: one byte per token)."""
    logits = model(ids[:, :-1]).float()
    targets = ids[:, 1:].flatten()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets, reduction="sum")
    n_bytes = targets.numel() if byte_lengths is None else int(byte_lengths[targets].sum())
    return bits_per_byte(float(ce) / max(n_bytes, 1))


def noise_effect(model: nn.Module, ids: Tensor, layers: list[tuple[int, str, nn.Module]],
                 eps_grid: tuple[float, ...] = EPS_GRID, seed: int = 0,
                 byte_lengths: Tensor | None = None) -> dict[str, Any]:
    """Validation bits per byte of ``model`` on ``ids (B, L+1)`` (next-token targets, each
    ``byte_lengths[token]`` bytes of text; None: byte-level) when the
    recurrent ``layers`` carry viscosity ε ∈ ``eps_grid``: each layer alone, and all at once.
    The noise is seeded, so every ε sees the same draws ξ (scaled by √(2εΔ))."""
    model.eval()
    per_layer: dict[str, list[float]] = {}
    groups = [(f"layer {i} ({kind})", [b]) for i, kind, b in layers]
    if len(layers) > 1:
        groups.append(("all recurrent layers", [b for _, _, b in layers]))
    with _on_loop([b for _, _, b in layers]):
        for name, blocks in groups:
            row = []
            for eps in eps_grid:
                torch.manual_seed(seed)
                with _viscous(blocks, eps):
                    row.append(_bpb(model, ids, byte_lengths))
            per_layer[name] = row
    return {"eps": list(eps_grid), "bpb": per_layer, "tokens": int(ids[:, 1:].numel())}


def analyze_recurrent(model: nn.Module, ids: Tensor, noise_ids: Tensor | None = None,
                      ode_tokens: int = 8, eps_grid: tuple[float, ...] = EPS_GRID,
                      seed: int = 0, byte_lengths: Tensor | None = None) -> dict[str, Any]:
    """The four measurements of the module docstring for every recurrent layer of ``model``,
    on token ids ``(B, L)`` (``noise_ids (B, L+1)`` for the bpb sweep; default ``ids``;
    ``byte_lengths (V,)``: the bytes each token stands for, None for byte-level models).
    Returns ``{"layers": [...], "noise": {...}}`` (JSON-able); empty lists without
    recurrent layers."""
    layers = recurrent_layers(model)
    if not layers:
        return {"layers": [], "noise": {}}
    inputs = capture_inputs(model, ids, [b for _, _, b in layers])
    rows = []
    for (i, kind, block), x in zip(layers, inputs):
        step, decay = step_and_decay(block, x)
        rows.append({"layer": i, "kind": kind, "block": type(block).__name__,
                     "eps": float(block.eps) if not isinstance(block.eps, Tensor)
                     else float(block.eps.detach().max()),
                     "step": step, "decay": decay,
                     "ode": ode_deviation(block, x, ode_tokens)})
    noise = noise_effect(model, ids if noise_ids is None else noise_ids, layers, eps_grid, seed,
                         byte_lengths)
    return {"layers": rows, "noise": noise}


def plot_recurrent(result: dict[str, Any], out_dir: Any) -> list[Any]:
    """One figure per block kind, ``recurrent_<kind>.png`` (1300 × 900 px): step distribution,
    decay spectrum, deviation from the characteristic ODE per layer, and bpb against ε.
    Returns the paths written."""
    from pathlib import Path

    from hjseq.analysis.plots import _plt, _save

    plt = _plt()
    out_dir = Path(out_dir)
    paths = []
    kinds = sorted({r["kind"] for r in result["layers"]})
    for kind in kinds:
        rows = [r for r in result["layers"] if r["kind"] == kind]
        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        (a_step, a_dec), (a_ode, a_eps) = axes
        for r in rows:
            lab = f"layer {r['layer']}"
            h = r["step"]["histogram"]
            a_step.stairs(h["density"], h["edges"], label=f"{lab} (median {r['step']['median']:.3g})")
            h = r["decay"]["histogram"]
            a_dec.stairs(h["density"], h["edges"], label=lab)
            g = r["ode"]["global_error"]
            order = r["ode"]["observed_order"]
            a_ode.semilogy(range(1, len(g)), [max(e, 1e-17) for e in g[1:]], "o-", ms=3,
                           label=f"{lab}: order {order:.2f}" if isinstance(order, float)
                           else f"{lab}: order {order}")
        a_step.set_xscale("log")
        a_step.set_xlabel("step Δ (token time units, log scale)")
        a_step.set_ylabel("fraction of (token, unit)")
        a_step.set_title(f"{kind}: step Δ per layer\n{rows[0]['step']['what']}", fontsize=9)
        a_dec.set_yscale("log")
        a_dec.set_xlabel("decay per token (1 = no decay)")
        a_dec.set_ylabel("fraction")
        a_dec.set_title(f"{kind}: decay spectrum\n{rows[0]['decay']['what']}", fontsize=9)
        a_ode.set_xlabel("token k (both start from the same state at k = 0)")
        a_ode.set_ylabel("max |h_k − h_ODE(k)| (state units)")
        a_ode.set_title(f"{kind}: deviation from the characteristic ODE\n(dopri5, float64, "
                        f"scheme {rows[0]['ode']['scheme']})", fontsize=9)
        noise = result["noise"]
        eps = noise["eps"]
        xs = [e if e > 0 else eps[1] / 10 for e in eps]  # ε = 0 drawn one decade left
        for name, bpb in noise["bpb"].items():
            if any(name.startswith(f"layer {r['layer']} ") for r in rows) or name.startswith("all"):
                a_eps.semilogx(xs, bpb, "o-", ms=3, label=name)
        a_eps.set_xticks(xs, ["0"] + [f"{e:g}" for e in eps[1:]])
        a_eps.set_xlabel("viscosity ε (noise √(2ε·dt)·ξ on the state per token)")
        a_eps.set_ylabel("validation bits per byte")
        a_eps.set_title(f"{kind}: effect of ε noise on validation bpb\n"
                        f"({noise['tokens']:,} tokens)", fontsize=9)
        for ax in (a_step, a_dec, a_ode, a_eps):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"ε lens of the {kind} blocks ({len(rows)} layer(s))")
        paths.append(_save(fig, out_dir / f"recurrent_{kind}.png"))
        plt.close(fig)
    return paths
