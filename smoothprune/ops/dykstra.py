"""Approximate sparse smooth top-k by Dykstra's algorithm (block coordinate ascent on the dual).

This is the accelerator path (XLA/TPU, and anywhere a native kernel is missing): every shape is
static, the iteration count is fixed, nothing synchronises with the host and no Python control
flow depends on data. Rows are batched along the leading dimensions. On XLA devices the
iterations run as one compiled loop (an XLA ``While`` through ``torch_xla``'s ``scan``), and
under ``torch.compile`` as torch's ``while_loop``, so the graph does not grow with ``num_iter``.

The math (docs/design.md §4, on the isotonic reduction of §2; paper section 5). After sorting,
the operator is the isotonic problem ``min sum_i h_i(v_i)  s.t.  v_0 >= v_1 >= ... >= v_{n-1}``. Give the constraint
``v_j >= v_{j+1}`` a multiplier ``mu_j >= 0``; for fixed ``mu`` the primal separates and element
``i`` carries the load ``c_i = mu_i - mu_{i-1}`` (``mu_{-1} = mu_{n-1} = 0``): ``h_i'(v_i) = c_i``.
Each ``mu_j`` couples only the pair ``(j, j+1)``, so the even multipliers (pairs (0,1), (2,3), ...)
can all be maximized at once with the odd ones fixed, and vice versa. One pair's subproblem has a
closed form: keep ``mu_j = 0`` when the pair's free values are ordered, else pool the pair to the
common value ``gamma`` with ``h_j'(gamma) + h_{j+1}'(gamma)`` = the pair's outside load. Alternating
the two halves is block coordinate ascent on the dual; for p = 2 (quadratic ``h``) it is exactly
Dykstra's alternating projections onto C1 = {v0 >= v1, v2 >= v3, ...} and C2 = {v1 >= v2, ...}
(the tests check the iterates agree), and the same scheme extends to p = 4/3, where each pooled
pair solves a cubic in closed form.

Units: everything is scaled by lam (``z~ = (s - v) / lam``), so that with ``q = p / (p - 1)``
``h_i'`` reads ``-z~^(q-1) + w_i * (1 for the mask, v for the magnitude)`` and the output is
``y = z~^(q-1)`` (plus ``lam z~`` when the magnitude is de-biased): all quantities are O(1) at any
lam, and an element no constraint touches gets its singleton output in closed form, with no
``s - v`` cancellation.

The backward is the closed-form block Jacobian of the exact solver (not autograd through the
iterations). With w = 1_k the exact solution has at most one pooled block, around the junction
k-1 | k; its value is read off the final iterate (the mean of v[k-1] and v[k], computed in lam
units) and membership follows the exact rule: i < k joins iff its singleton value is below it,
i >= k iff s_i is above.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from smoothprune.ops._scalars import as_scalar_tensor
from smoothprune.validation import dykstra_q  # (the exponents this path solves; validation refuses others)

__all__ = ["dykstra_soft_topk", "dual_ascent", "free_z", "cubic_root"]


def _cbrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * x.abs().pow(1.0 / 3.0)


def cubic_root(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """The real root of ``t^3 + P t + Q = 0`` for ``P >= 0`` (the only real one), element-wise.

    Rescaled so that no power overflows, and written as ``-Q / (A^2 + P/3 + B^2)`` (Cardano's
    ``A - B`` without its cancellation when ``|Q| << P^(3/2)``), like the native solver.
    """
    scale = torch.maximum(P.sqrt(), Q.abs().pow(1.0 / 3.0))
    positive = scale > 0
    scale = torch.where(positive, scale, torch.ones_like(scale))
    Pn = P / scale / scale  # (divided in turn: scale^3 alone may overflow)
    Qn = Q / scale / scale / scale
    D = (0.25 * Qn * Qn + Pn * Pn * Pn / 27.0).sqrt()
    A = (0.5 * Qn.abs() + D).pow(1.0 / 3.0)
    B = Pn / (3.0 * A)
    return torch.where(positive, scale * (-Qn / (A * A + Pn / 3.0 + B * B)), torch.zeros_like(scale))


def free_z(load, s, w, lam, q: int, magnitude: bool):
    """``z~ = (s - v) / lam`` of elements whose value solves ``h'(v) = load`` on their own."""
    if q == 2:
        return (w * s - load) / (1.0 + lam * w) if magnitude else w - load
    if magnitude:  # z~^3 + lam w z~ + (load - w s) = 0
        return cubic_root(lam * w, load - w * s)
    return _cbrt(w - load)


def _pairs(t: torch.Tensor, offset: int, m: int):
    """The two halves of the pairs (offset, offset+1), (offset+2, offset+3), ... of ``t``."""
    pairs = t[..., offset : offset + 2 * m].unflatten(-1, (m, 2))
    return pairs[..., 0], pairs[..., 1]


class _Pairs(NamedTuple):
    """What a half sweep needs of its pairs (a, b) = (j, j+1), fixed across iterations."""

    s_a: torch.Tensor
    s_b: torch.Tensor
    w_a: torch.Tensor
    w_b: torch.Tensor
    d: torch.Tensor  # (s_a - s_b) / (2 lam): half the gap in lam units
    mid: torch.Tensor  # (s_a + s_b) / 2
    junction: torch.Tensor  # w_b == 0 (then w_a is 0 too, or a is the last kept element)


def _pairs_of(s, w, lam, offset: int) -> _Pairs | None:
    m = (s.shape[-1] - offset) // 2
    if m == 0:
        return None
    # copies, never views: on a short row a contiguous() slice would alias the input, which
    # torch.compile's while_loop refuses
    s_a, s_b = (t.clone(memory_format=torch.contiguous_format) for t in _pairs(s, offset, m))
    w_a, w_b = (t.clone(memory_format=torch.contiguous_format) for t in _pairs(w, offset, m))
    return _Pairs(s_a, s_b, w_a, w_b, (s_a - s_b) / (2.0 * lam), 0.5 * (s_a + s_b), w_b == 0)


def _half_pass(mu, pairs: _Pairs | None, lam, q: int, magnitude: bool, offset: int):
    """Maximizes the dual over the multipliers of the pairs starting at ``offset`` (0 or 1).

    ``mu`` holds the n + 1 multipliers padded with zeros: ``mu[..., i] = mu_{i-1}``.
    """
    if pairs is None:
        return mu
    s_a, s_b, w_a, w_b, d, mid, junction = pairs
    m = d.shape[-1]
    mu_left, _ = _pairs(mu, offset, m)  # mu_{j-1}
    _, mu_right = _pairs(mu, offset + 1, m)  # (mu_j, replaced below), mu_{j+1}
    load_a, load_b = -mu_left, mu_right  # each element's load without mu_j
    free_a = free_z(load_a, s_a, w_a, lam, q, magnitude)
    free_b = free_z(load_b, s_b, w_b, lam, q, magnitude)
    violated = 2.0 * d < free_a - free_b  # v_a < v_b when mu_j = 0
    # Pool the pair: gamma = mid + lam t solves h_a'(gamma) + h_b'(gamma) = load_a + load_b.
    W, E = w_a + w_b, load_a + load_b
    if q == 2:
        t = (E - W * mid) / (2.0 + lam * W) if magnitude else 0.5 * (E - W)
    elif magnitude:
        t = cubic_root(3.0 * d * d + 0.5 * lam * W, 0.5 * (W * mid - E))
    else:
        t = cubic_root(3.0 * d * d, 0.5 * (W - E))
    # The new multiplier from either element, with z~ = d - t (a) and -d - t (b) and
    # h'(gamma) = -z~^(q-1) + w (mid + lam t, or 1 for the mask):
    # mu_j = h_a'(gamma) - load_a = load_b - h_b'(gamma). At the junction (w_b = 0) b's form has
    # no w term to cancel against z~^(q-1), so it keeps full relative precision when mu_j is
    # tiny (a's form loses it in float32); elsewhere w_a = w_b and a's form is as good.
    linear = mid + lam * t if magnitude else 1.0
    if q == 2:
        from_a, from_b = w_a * linear - (d - t) - load_a, load_b - (d + t)
    else:
        from_a, from_b = w_a * linear - (d - t).pow(3) - load_a, load_b - (d + t).pow(3)
    new_mu = torch.where(violated, torch.where(junction, from_b, from_a).clamp(min=0.0), 0.0)
    head = mu[..., : offset + 1]
    tail = mu[..., offset + 1 + 2 * m :]
    body = torch.stack((new_mu, mu_right), dim=-1).flatten(-2)
    return torch.cat((head, body, tail), dim=-1)


def dual_ascent(s, w, lam, q: int, magnitude: bool, num_iter: int) -> torch.Tensor:
    """``num_iter`` sweeps (even pairs, then odd pairs); returns the padded multipliers."""
    mu = s.new_zeros((*s.shape[:-1], s.shape[-1] + 1))
    if s.shape[-1] < 2:  # no constraint to enforce (and a loop body returning its input)
        return mu
    if s.device.type == "xla":
        return _xla_loop(mu, s, w, lam, q, magnitude, num_iter)
    if torch.compiler.is_compiling():
        return _compiled_loop(mu, s, w, lam, q, magnitude, num_iter)
    return _python_loop(mu, s, w, lam, q, magnitude, num_iter)


def _python_loop(mu, s, w, lam, q: int, magnitude: bool, num_iter: int) -> torch.Tensor:
    """Eager: a plain loop (traced, it would unroll into the graph)."""
    even, odd = _pairs_of(s, w, lam, 0), _pairs_of(s, w, lam, 1)
    for _ in range(num_iter):
        mu = _half_pass(mu, even, lam, q, magnitude, 0)
        mu = _half_pass(mu, odd, lam, q, magnitude, 1)
    return mu


def _compiled_loop(mu, s, w, lam, q: int, magnitude: bool, num_iter: int) -> torch.Tensor:
    """Under torch.compile: torch's while_loop, so that the graph (and compile time, ~6x less
    at 10 iterations) does not grow with num_iter."""
    from torch._higher_order_ops.while_loop import while_loop

    even, odd = _pairs_of(s, w, lam, 0), _pairs_of(s, w, lam, 1)

    def cond(i, mu):
        return i < num_iter

    def body(i, mu):
        mu = _half_pass(mu, even, lam, q, magnitude, 0)
        return i + 1, _half_pass(mu, odd, lam, q, magnitude, 1)

    return while_loop(cond, body, (torch.zeros((), dtype=torch.int64, device=mu.device), mu))[1]


@functools.lru_cache(maxsize=None)
def _xla_sweep(q: int, magnitude: bool):
    """One sweep as a pure function of tensors, the body of torch_xla's scan (cached per variant,
    so that scan's tracing cache hits)."""

    def sweep(carry, _):
        mu, s, w, lam = carry
        # (the pair terms are rebuilt in the body: scan's carry must be float tensors that can
        # require grad, which the boolean junction mask cannot; they are a few element-wise ops)
        mu = _half_pass(mu, _pairs_of(s, w, lam, 0), lam, q, magnitude, 0)
        mu = _half_pass(mu, _pairs_of(s, w, lam, 1), lam, q, magnitude, 1)
        # scan stacks one output per iteration; a 0-d one derived from the carry is the cheapest
        # it accepts (it traces a backward, so outputs must depend on the carry).
        return (mu, s, w, lam), lam * 0.0

    return sweep


def _xla_loop(mu, s, w, lam, q: int, magnitude: bool, num_iter: int) -> torch.Tensor:
    from torch_xla.experimental.scan import scan  # only on XLA devices

    steps = torch.zeros(num_iter, dtype=s.dtype, device=s.device)
    (mu, *_), _ = scan(_xla_sweep(q, magnitude), (mu, s, w, lam), steps, is_fn_pure=True)
    return mu


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _valid_rows(x, k, lam) -> torch.Tensor:
    """[..., 1]: the row is finite and k, lam are valid (what the exact solver promises: NaN in
    every position of a row holding a NaN or Inf, and of every row when a device k or lam is
    invalid; host values were checked by the wrappers)."""
    n = x.shape[-1]
    ok = (k >= 0) & (k <= n) & (lam > 0) & torch.isfinite(lam)
    return torch.isfinite(x).all(-1, keepdim=True) & ok


class _DykstraSoftTopk(torch.autograd.Function):
    @staticmethod
    def forward(x, k, lam, q, magnitude, debias, num_iter):
        ct = _compute_dtype(x.dtype)
        xc = x.to(ct)
        key = xc.abs() if magnitude else xc
        s, perm = torch.sort(key, dim=-1, descending=True, stable=True)
        n = s.shape[-1]
        lam_c = lam.to(ct)
        w = (torch.arange(n, device=x.device) < k).to(ct).expand_as(s)  # w = 1_k
        mu = dual_ascent(s, w, lam_c, q, magnitude, num_iter)
        z = free_z(mu[..., 1:] - mu[..., :-1], s, w, lam_c, q, magnitude)  # final loads
        if magnitude:
            z = torch.minimum(z.clamp(min=0.0), s / lam_c)  # exact solution: 0 <= v <= s
            y_sorted = z.pow(q - 1) + (lam_c * z if debias else 0.0)
        else:
            y_sorted = z.pow(q - 1).clamp(0.0, 1.0)  # exact solution lies in [0, 1]
        y = torch.zeros_like(y_sorted).scatter(-1, perm, y_sorted)
        if magnitude:
            y = torch.where(xc < 0, -y, y)
        y = torch.where(_valid_rows(xc, k, lam), y, torch.nan)
        return y.to(x.dtype), s, perm, z

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, k, lam, q, magnitude, debias, _ = inputs
        _, s, perm, z = output
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(x, s, perm, z, k, lam)
        ctx.q, ctx.magnitude, ctx.debias = q, magnitude, debias

    @staticmethod
    @once_differentiable  # second derivatives are not implemented: raise instead of ignoring them
    def backward(ctx, grad_y, *_):
        x, s, perm, z_final, k, lam = ctx.saved_tensors
        q, magnitude = ctx.q, ctx.magnitude
        ct = s.dtype
        lam = lam.to(ct)
        n = s.shape[-1]
        if n == 0:
            return torch.zeros_like(x), None, None, None, None, None, None
        kept = torch.arange(n, device=s.device) < k
        w = kept.to(ct).expand_as(s)
        sign = torch.where(x.to(ct) < 0, -1.0, 1.0) if magnitude else None
        g = grad_y.to(ct) * sign if magnitude else grad_y.to(ct)
        g_sorted = g.gather(-1, perm)
        # The pooled block around the junction, read off the final iterate: its value gamma as
        # zeta = (s[k-1] - gamma) / lam, the mean of the estimates from v[k-1] and v[k]. In lam
        # units, relative to s[k-1], so that membership is decided to float32 resolution of
        # z~ (O(1)), not of s (whose ulp can exceed the margin at small lam).
        lo = (k - 1).clamp(0, n - 1).expand(*s.shape[:-1], 1)
        hi = k.clamp(0, n - 1).expand(*s.shape[:-1], 1)
        s_lo = s.gather(-1, lo)
        zeta = 0.5 * (z_final.gather(-1, lo) + z_final.gather(-1, hi) + (s_lo - s.gather(-1, hi)) / lam)
        z_block = (s - s_lo) / lam + zeta  # (s - gamma) / lam
        z_single = free_z(torch.zeros_like(s), s, w, lam, q, magnitude)
        # i < k joins iff its singleton value is below gamma, i >= k iff s_i is above it
        in_block = torch.where(kept, z_block < z_single, z_block > 0) & (k > 0) & (k < n)
        z = torch.where(in_block, z_block, z_single)
        c = (q - 1) * z.abs().pow(q - 2)  # slope of z~^(q-1), the block equation's summand
        d = lam * w if magnitude else torch.zeros_like(w)
        u = g_sorted * (c / lam + (1.0 if (magnitude and ctx.debias) else 0.0))  # g * dy/dz
        cd = c + d
        block = in_block.to(ct)
        block_u = (block * u).sum(-1, keepdim=True)
        block_cd = (block * cd).sum(-1, keepdim=True)
        grad_block = u - c / block_cd.clamp(min=1e-30) * block_u
        grad_single = torch.where(cd > 0, u * d / torch.where(cd > 0, cd, 1.0), 0.0)
        grad_sorted = torch.where(in_block, grad_block, grad_single)
        grad = torch.zeros_like(grad_sorted).scatter(-1, perm, grad_sorted)
        if magnitude:
            grad = grad * sign
        grad = torch.where(_valid_rows(x.to(ct), k, lam), grad, torch.nan)
        return grad.to(x.dtype), None, None, None, None, None, None


def dykstra_soft_topk(x, k, lam, p: float, magnitude: bool, debias: bool, num_iter: int) -> torch.Tensor:
    """Smooth top-k (p = 2 or 4/3) of ``x`` along its last dim by ``num_iter`` sweeps.

    ``k`` and ``lam`` may be Python numbers or 0-d tensors; they become 0-d tensors on ``x``'s
    device, so one compiled graph serves every value. Arguments are validated by the public
    wrappers in ``smoothprune.ops``.
    """
    k_t = as_scalar_tensor(k, torch.int64, x.device)
    lam_t = as_scalar_tensor(lam, _compute_dtype(x.dtype), x.device)
    return _DykstraSoftTopk.apply(x, k_t, lam_t, dykstra_q(p), magnitude, debias, num_iter)[0]
