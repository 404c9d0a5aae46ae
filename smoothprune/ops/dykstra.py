"""Approximate sparse smooth top-k for p = 2 by Dykstra's algorithm, in pure tensor ops.

This is the accelerator path (XLA/TPU, and anywhere a native kernel is missing): every shape is
static, the iteration count is fixed, nothing synchronises with the host and no Python control
flow depends on data. Rows are batched along the leading dimensions.

After sorting, the isotonic problem of DESIGN.md section 2 is a (weighted) projection onto the
monotone cone C1 ∩ C2, C1 = {v0 >= v1, v2 >= v3, ...}, C2 = {v1 >= v2, v3 >= v4, ...}. Projecting
onto C1 or C2 pools each violating pair to its weighted mean; Dykstra alternates the two with
correction terms. Mask: targets s - lam w, unit weights. Magnitude: targets s / u, weights
u = 1 + lam w.

The backward is the closed-form block Jacobian of the exact solver (not autograd through the
iterations). With w = 1_k the exact solution has at most one pooled block, around the junction
k-1 | k; its value is read off the final iterate (the mean of v[k-1] and v[k]) and membership
follows the exact rule: i < k joins iff its singleton value is below it, i >= k iff s_i is above.
"""

from __future__ import annotations

import torch

from smoothprune.ops._scalars import as_scalar_tensor


def _pool_pairs(v: torch.Tensor, u: torch.Tensor, offset: int) -> torch.Tensor:
    """Projection onto {v[offset] >= v[offset+1], v[offset+2] >= v[offset+3], ...} (weights u)."""
    n = v.shape[-1]
    m = (n - offset) // 2
    if m == 0:
        return v
    head, body, tail = v[..., :offset], v[..., offset : offset + 2 * m], v[..., offset + 2 * m :]
    ub = u[..., offset : offset + 2 * m]
    pairs = body.unflatten(-1, (m, 2))
    w = ub.unflatten(-1, (m, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    wa, wb = w[..., 0], w[..., 1]
    mean = (wa * a + wb * b) / (wa + wb)
    violated = a < b
    a = torch.where(violated, mean, a)
    b = torch.where(violated, mean, b)
    body = torch.stack((a, b), dim=-1).flatten(-2)
    return torch.cat((head, body, tail), dim=-1)


def isotonic_dykstra(target: torch.Tensor, weight: torch.Tensor, num_iter: int) -> torch.Tensor:
    """Approximately solves min sum_i weight_i (v_i - target_i)^2 s.t. v non-increasing."""
    v = target
    p = torch.zeros_like(target)
    q = torch.zeros_like(target)
    for _ in range(num_iter):
        y = _pool_pairs(v + p, weight, 0)
        p = v + p - y
        v = _pool_pairs(y + q, weight, 1)
        q = y + q - v
    return v


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32




class _DykstraSoftTopk(torch.autograd.Function):
    @staticmethod
    def forward(x, k, lam, magnitude, debias, num_iter):
        ct = _compute_dtype(x.dtype)
        xc = x.to(ct)
        key = xc.abs() if magnitude else xc
        s, perm = torch.sort(key, dim=-1, descending=True, stable=True)
        n = s.shape[-1]
        lam_c = lam.to(ct)
        w = (torch.arange(n, device=x.device) < k).to(ct)  # w = 1_k
        if magnitude:
            u = 1.0 + lam_c * w
            v = isotonic_dykstra(s / u, u, num_iter)
            z = torch.minimum((s - v).clamp(min=0), s)  # exact solution: 0 <= v <= s
            y_sorted = z / lam_c + (z if debias else 0.0)
        else:
            v = isotonic_dykstra(s - lam_c * w, torch.ones_like(s), num_iter)
            y_sorted = ((s - v) / lam_c).clamp(0.0, 1.0)  # exact solution lies in [0, 1]
        y = torch.zeros_like(y_sorted).scatter(-1, perm, y_sorted)
        if magnitude:
            y = torch.where(xc < 0, -y, y)
        return y.to(x.dtype), s, perm, v

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, k, lam, magnitude, debias, _ = inputs
        _, s, perm, v = output
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(x, s, perm, v, k, lam)
        ctx.magnitude, ctx.debias = magnitude, debias

    @staticmethod
    def backward(ctx, grad_y, *_):
        x, s, perm, v, k, lam = ctx.saved_tensors
        ct = s.dtype
        lam = lam.to(ct)
        n = s.shape[-1]
        positions = torch.arange(n, device=s.device)
        kept = positions < k
        sign = torch.where(x.to(ct) < 0, -1.0, 1.0) if ctx.magnitude else None
        g = grad_y.to(ct) * sign if ctx.magnitude else grad_y.to(ct)
        g_sorted = g.gather(-1, perm)
        # The pooled block around the junction, read off the final iterate.
        lo = (k - 1).clamp(0, n - 1).expand(*s.shape[:-1], 1)
        hi = k.clamp(0, n - 1).expand(*s.shape[:-1], 1)
        gamma = 0.5 * (v.gather(-1, lo) + v.gather(-1, hi))
        kept_value = s / (1.0 + lam) if ctx.magnitude else s - lam
        in_block = torch.where(kept, kept_value < gamma, s > gamma) & (k > 0) & (k < n)
        block = in_block.to(ct)
        if ctx.magnitude:
            u = 1.0 + lam * kept.to(ct)
            denom = (block * u).sum(-1, keepdim=True)
            g_bar = (block * g_sorted).sum(-1, keepdim=True) / denom.clamp(min=1e-30)
            scale = 1.0 / lam + (1.0 if ctx.debias else 0.0)
            kept_slope = 1.0 if ctx.debias else 1.0 / (1.0 + lam)
            grad_sorted = torch.where(
                in_block, scale * (g_sorted - g_bar), torch.where(kept, kept_slope * g_sorted, 0.0)
            )
        else:
            count = block.sum(-1, keepdim=True)
            g_bar = (block * g_sorted).sum(-1, keepdim=True) / count.clamp(min=1.0)
            grad_sorted = block * (g_sorted - g_bar) / lam
        grad = torch.zeros_like(grad_sorted).scatter(-1, perm, grad_sorted)
        if ctx.magnitude:
            grad = grad * sign
        return grad.to(x.dtype), None, None, None, None, None


def dykstra_soft_topk(x, k, lam, magnitude: bool, debias: bool, num_iter: int) -> torch.Tensor:
    """Smooth top-k (p = 2) of ``x`` along its last dim by ``num_iter`` Dykstra iterations.

    ``k`` and ``lam`` may be Python numbers or 0-d tensors; they become 0-d tensors on ``x``'s
    device, so one compiled graph serves every value. Arguments are validated by the public
    wrappers in ``smoothprune.ops``.
    """
    k_t = as_scalar_tensor(k, torch.int64, x.device)
    lam_t = as_scalar_tensor(lam, torch.float64 if x.dtype == torch.float64 else torch.float32, x.device)
    return _DykstraSoftTopk.apply(x, k_t, lam_t, magnitude, debias, num_iter)[0]
