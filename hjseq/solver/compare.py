"""Hold a recurrent block against the continuous characteristic ODE it discretizes.

``compare(block, x)`` takes the block's characteristics view (``hjseq.engine``): token k is
the ODE ``dh/dτ = rhs_k(h)`` over normalised time τ ∈ [0, 1] with the input (and anything
computed from the previous state) held. It integrates that ODE tightly (dopri5, rtol 1e-10
by default) and reports

* local error per token: ``|discrete_step_k(h_k) − flow_k(h_k)|_∞`` from the block's own state;
* global error per token boundary: ``|h_k − h^c_k|_∞`` where ``h^c`` chains the exact flows
  from the same initial state;
* refinement: the scheme applied m times per token (step Δ/m), its global max error against
  ``h^c``, and the observed order (least-squares slope of log error vs log(1/m)) beside the
  scheme's declared order. An exact scheme (order ∞) should show errors at round-off.

Run it in float64 (``block.double()``, x float64) to see orders below round-off.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from .ode import integrate


DENSE = 8  # samples of the exact flow per token, for the plot
ROUNDOFF = 1e-11  # refinement errors all below this (float64) are reported as round-off


def fit_order(steps: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of log(error) against log(step): the observed order p in
    ``error ≈ C·step^p``. NaN when fewer than two errors are above round-off (1e-300)."""
    pts = [(math.log(s), math.log(e)) for s, e in zip(steps, errors) if e > 1e-300]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _fmt_order(v: float) -> str:
    return "exact" if v == math.inf else ("round-off" if math.isnan(v) else f"{v:.3f}")


@dataclass
class CompareReport:
    """Result of :func:`compare`. Tensors are detached, on CPU.

    discrete, continuous: (B, L+1, S) trajectories (``dense``: the exact flow sampled inside
    each token, (B, L·8+1, S)); local_error: (L,) max over batch and
    state; global_error: (L+1,); refinements / refinement_error: the m's and their global max
    errors; observed_order vs declared_order (``math.inf`` for an exact scheme)."""

    block: str
    scheme: str
    declared_order: float
    discrete: Tensor
    continuous: Tensor
    local_error: Tensor
    global_error: Tensor
    refinements: list[int]
    refinement_error: list[float]
    observed_order: float
    ode: dict[str, Any] = field(default_factory=dict)
    dense: Tensor | None = None  # (B, L·DENSE+1, S): the exact flow inside the tokens

    @property
    def global_max_error(self) -> float:
        return float(self.global_error.max())

    @property
    def local_max_error(self) -> float:
        return float(self.local_error.max()) if self.local_error.numel() else 0.0

    def table(self) -> str:
        """Markdown: a summary line, the per-token errors and the refinement study."""
        lines = [f"**{self.block}** · scheme `{self.scheme}` · declared order "
                 f"{_fmt_order(self.declared_order)} · observed order "
                 f"{_fmt_order(self.observed_order)} · global max error "
                 f"{self.global_max_error:.3e}", "",
                 "| token k | local error | global error at k+1 |", "|---:|---:|---:|"]
        for k in range(self.local_error.numel()):
            lines.append(f"| {k} | {float(self.local_error[k]):.3e} | "
                         f"{float(self.global_error[k + 1]):.3e} |")
        lines += ["", "| substeps m | step Δ/m | global max error | slope from previous m |",
                  "|---:|---:|---:|---:|"]
        prev = None
        for m, e in zip(self.refinements, self.refinement_error):
            slope = ("" if prev is None or min(e, prev[1]) < ROUNDOFF
                     else f"{math.log(prev[1] / e) / math.log(m / prev[0]):.3f}")
            lines.append(f"| {m} | 1/{m} | {e:.3e} | {slope} |")
            prev = (m, e)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        num = lambda v: None if math.isnan(v) else ("inf" if v == math.inf else v)  # noqa: E731
        return {"block": self.block, "scheme": self.scheme,
                "declared_order": num(self.declared_order),
                "observed_order": num(self.observed_order),
                "global_max_error": self.global_max_error,
                "local_max_error": self.local_max_error,
                "local_error": self.local_error.tolist(),
                "global_error": self.global_error.tolist(),
                "refinements": self.refinements, "refinement_error": self.refinement_error,
                "ode": self.ode}

    def to_json(self, path: str | None = None) -> str:
        """JSON text of :meth:`to_dict`; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def plot(self, path: str, coords: Sequence[int] = (0, 1, 2), sample: int = 0) -> str:
        """Save a two-panel figure to ``path``: discrete vs continuous trajectories of a few
        state coordinates of one sample, and global error vs step size (log-log) with the
        declared-order reference line. Returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        S = self.discrete.shape[-1]
        coords = [c for c in coords if c < S]
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
        k = torch.arange(self.discrete.shape[1])
        fine = (torch.linspace(0, k[-1], self.dense.shape[1]) if self.dense is not None
                else k)
        smooth = self.dense if self.dense is not None else self.continuous
        for i, c in enumerate(coords):
            color = f"C{i}"
            ax0.plot(fine, smooth[sample, :, c], "-", color=color, label=f"h[{c}] ODE")
            ax0.plot(k, self.discrete[sample, :, c], "o", color=color, mfc="none",
                     label=f"h[{c}] {self.scheme}")
        ax0.set_xlabel("token k")
        ax0.set_title(f"{self.block}: discrete vs characteristic ODE")
        ax0.legend(fontsize=7, ncol=2)
        steps = [1.0 / m for m in self.refinements]
        errs = [max(e, 1e-18) for e in self.refinement_error]
        ax1.loglog(steps, errs, "o-", label=f"observed ({_fmt_order(self.observed_order)})")
        if math.isfinite(self.declared_order) and errs[0] > 1e-14:
            ref = [errs[-1] * (s / steps[-1]) ** self.declared_order for s in steps]
            ax1.loglog(steps, ref, "k--", label=f"slope {self.declared_order:g}")
        if max(errs) < 10 * min(errs):  # flat (round-off): don't blow noise up to fill the axis
            ax1.set_ylim(min(errs) / 100, max(errs) * 100)
        ax1.set_xlabel("step Δ/m (token units)")
        ax1.set_ylabel("global max error")
        ax1.set_title("error vs step")
        ax1.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def compare(block: Any, x: Tensor, refinements: Sequence[int] = (1, 2, 4, 8, 16),
            initial_state: Any = None, method: str = "dopri5", rtol: float = 1e-10,
            atol: float = 1e-12, dt: Tensor | None = None) -> CompareReport:
    """Discrete trajectory of ``block`` on x (B, L, I) vs its characteristic ODE (module
    docstring). ``block`` must have ``characteristics(x, initial_state)`` (every hjseq
    recurrent block). ``refinements``: distinct ints ≥ 1 (substeps per token). ``dt``
    (B, L): irregular time steps (each token's sampling interval), passed to the block."""
    if not hasattr(block, "characteristics"):
        raise TypeError(f"compare: block must have characteristics(x, initial_state) (a hjseq "
                        f"recurrent block), got {type(block).__name__}")
    refinements = [int(m) for m in refinements]
    if not refinements or any(m < 1 for m in refinements) or len(set(refinements)) != len(refinements):
        raise ValueError(f"refinements must be distinct ints >= 1, got {refinements}")
    with torch.no_grad():
        view = (block.characteristics(x, initial_state) if dt is None
                else block.characteristics(x, initial_state, dt))
        states = view.states.detach()
        B, L1, S = states.shape
        L = L1 - 1
        ode = {"method": method, "rtol": rtol, "atol": atol}
        def flow(k: int, h: Tensor) -> Tensor:  # τ ∈ [0, 1]; rhs may depend on τ
            return integrate(lambda s, y: view.rhs(k, y, s), h, [0.0, 1.0], method=method,
                             rtol=rtol, atol=atol).ys[-1]

        local = torch.stack([(states[:, k + 1] - flow(k, states[:, k])).abs().amax()
                             for k in range(L)]) if L else states.new_zeros(0)
        # the chained exact flow, sampled DENSE times per token for plotting
        cont, dense = [states[:, 0]], [states[:, :1]]
        taus = [i / DENSE for i in range(DENSE + 1)]
        for k in range(L):
            ys = integrate(lambda s, y, k=k: view.rhs(k, y, s), cont[-1], taus, method=method,
                           rtol=rtol, atol=atol).ys  # (DENSE+1, B, S)
            cont.append(ys[-1])
            dense.append(ys[1:].transpose(0, 1))
        continuous = torch.stack(cont, 1)
        dense_traj = torch.cat(dense, 1)
        global_err = (states - continuous).abs().amax(dim=(0, 2))
        ref_err = []
        for m in refinements:
            h, worst = states[:, 0], 0.0
            for k in range(L):
                h = view.substep(k, h, m)
                worst = max(worst, float((h - continuous[:, k + 1]).abs().max()))
            ref_err.append(worst)
    declared = float(view.order)
    # an exact scheme leaves only round-off, which has no slope to fit
    observed = (float("nan") if max(ref_err) < ROUNDOFF
                else fit_order([1.0 / m for m in refinements], ref_err))
    return CompareReport(type(block).__name__, view.scheme, declared, states.cpu(),
                         continuous.cpu(), local.cpu(), global_err.cpu(), refinements, ref_err,
                         observed, ode, dense_traj.cpu())
