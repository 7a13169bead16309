"""Small-window attention over window rows against PyTorch's scaled-dot-product attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dust.models.small_window_attention import small_window_attention


def _masks(batch, windows, heads, n):
    bias = torch.randn(heads, n, n)
    shift = torch.zeros(windows, 1, n, n)
    shift[-1, :, : n // 2, n // 2 :] = float("-inf")  # a wrapped window: two regions that must not mix
    shift[-1, :, n // 2 :, : n // 2] = -100.0
    keys = torch.zeros(batch, windows, 1, 1, n)
    keys[0, -1, ..., 1:] = float("-inf")  # a padded series: keys hidden, each query keeps its own
    keys = keys.expand(batch, windows, 1, n, n).clone()
    keys[0, -1, 0].fill_diagonal_(0.0)
    return {"bias": bias, "bias+shift": bias + shift, "bias+shift+keys": bias + shift + keys}


@pytest.mark.parametrize("which", ["bias", "bias+shift", "bias+shift+keys"])
def test_matches_scaled_dot_product_attention(which):
    torch.manual_seed(0)
    batch, windows, heads, n, d = 3, 4, 2, 8, 5
    mask = _masks(batch, windows, heads, n)[which]
    rows = torch.randn(batch * windows * n, 3 * heads * d)
    grad_out = torch.randn(batch * windows * n, heads * d)

    def sdpa(rows, mask):
        q, k, v = rows.view(batch, windows, n, 3, heads, d).permute(3, 0, 1, 4, 2, 5).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nW, h, N, d)
        return out.transpose(2, 3).reshape(-1, heads * d)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (rows, mask)]
        out = fn(*leaves)
        out.backward(grad_out)
        return [out.detach()] + [leaf.grad for leaf in leaves]

    ours = run(lambda r, m: small_window_attention(r, m, batch, heads, d**-0.5))
    theirs = run(sdpa)
    for name, a, b in zip(("out", "rows", "mask"), ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(small_window_attention(rows, mask, batch, heads, d**-0.5), ours[0])


def test_bfloat16_rows_keep_the_softmax_in_float32():
    """Rows in bf16 (the time-series model under ``--precision bf16-mixed``) with a float32 mask:
    outputs and gradients as close to float64 as PyTorch's attention gets in bf16, or closer."""
    torch.manual_seed(0)
    batch, windows, heads, n, d = 16, 4, 2, 8, 16
    mask = _masks(batch, windows, heads, n)["bias+shift"] * 2
    rows = 1.5 * torch.randn(batch * windows * n, 3 * heads * d)
    grad_out = torch.randn(batch * windows * n, heads * d)

    def sdpa(rows, mask):
        q, k, v = rows.view(batch, windows, n, 3, heads, d).permute(3, 0, 1, 4, 2, 5).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return out.transpose(2, 3).reshape(-1, heads * d)

    def run(fn, dtype, mask_dtype):
        leaves = [rows.to(dtype, copy=True).requires_grad_(), mask.to(mask_dtype, copy=True).requires_grad_()]
        out = fn(*leaves)
        out.backward(grad_out.to(dtype))
        return [out.detach()] + [leaf.grad for leaf in leaves]

    ours = run(lambda r, m: small_window_attention(r, m, batch, heads, d**-0.5), torch.bfloat16, torch.float32)
    assert [t.dtype for t in ours] == [torch.bfloat16, torch.bfloat16, torch.float32]
    theirs = run(lambda r, m: sdpa(r, m.detach()), torch.bfloat16, torch.float32)  # no mask gradient there
    exact = run(lambda r, m: small_window_attention(r, m, batch, heads, d**-0.5), torch.float64, torch.float64)
    errors = [((a.double() - t).norm() / t.norm()).item() for a, t in zip(ours, exact)]
    for name, ours_err, b, t in zip(("out", "rows"), errors, theirs, exact):
        their_err = ((b.double() - t).norm() / t.norm()).item()
        assert ours_err <= 1.1 * their_err, (name, ours_err, their_err)
    assert errors[2] < 0.005, errors  # the mask gradient, summed in float32
