"""The continuous reference: every block held against the equation it discretizes.

- :mod:`.ode`: batched ODE integrators (``SOLVERS``: euler, midpoint, rk4, dopri5), ``odeint``.
- :mod:`.characteristics`: ``solve_characteristics`` — Hamilton's equations (h, p, u) token by
  token, inputs held, the step Δ as a (learned) time warp.
- :mod:`.compare`: ``compare(block, x)`` — discrete trajectory vs characteristic ODE, errors
  and observed order; table / JSON / plot.
- :mod:`.costate`: ``costate(block, x, dloss_dstates)`` — backprop as the explicit co-state.
- :mod:`.sde`: stochastic characteristics (Euler–Maruyama) and the Feynman–Kac value.
- :mod:`.hopf`: closed forms (discrete atoms from ``hjseq.hopf``; continuous data by
  quadrature; Moreau envelope, prox, soft prox).
- :mod:`.pde`: grid solver for ``u_t + H(x, ∇u) = εΔu`` in 1–3 D (``SolverSettings``).
- :mod:`.properties` / :mod:`.check`: the PDE-consistency suite (``hjseq check``).
"""
from .characteristics import CharacteristicSolution, integrate_field, solve_characteristics
from .compare import CompareReport, compare, fit_order
from .costate import block_states, costate, costate_recursion, flow_indices
from .hopf import (hopf_cole, hopf_cole_continuous, hopf_lax, hopf_lax_continuous,
                   moreau_envelope, prox, soft_prox)
from .ode import SOLVERS, ButcherTableau, ODEResult, integrate, odeint
from .pde import (Grid, QuadraticHamiltonian, SolverSettings, TransportHamiltonian, godunov,
                  lax_friedrichs)
from .pde import solve as solve_pde
from .sde import MonteCarloEstimate, euler_maruyama, feynman_kac, stochastic_characteristics

__all__ = [
    "SOLVERS", "ButcherTableau", "ODEResult", "integrate", "odeint",
    "CharacteristicSolution", "solve_characteristics", "integrate_field",
    "CompareReport", "compare", "fit_order",
    "costate", "costate_recursion", "block_states", "flow_indices",
    "MonteCarloEstimate", "euler_maruyama", "feynman_kac", "stochastic_characteristics",
    "hopf_cole", "hopf_lax", "hopf_cole_continuous", "hopf_lax_continuous", "moreau_envelope",
    "prox", "soft_prox",
    "Grid", "SolverSettings", "QuadraticHamiltonian", "TransportHamiltonian", "godunov",
    "lax_friedrichs", "solve_pde",
]
