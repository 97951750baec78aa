"""Naive per-token float64 references of the MoE layers, and test helpers."""
import math

import torch
import torch.nn.functional as F

GATE_EPS = 1e-4


def _affine(x, weights, biases, task):
    y = x @ weights[task].double()
    return y if biases is None else y + biases[task].double()


def naive_route(router, x_n, task):
    """Route one token (C,) as the router should: (expert ids, gates) in float64."""
    h = x_n
    if router.hidden_weight is not None:
        h = F.relu(_affine(h, router.hidden_weight, router.hidden_bias, task))
    probs = torch.softmax(_affine(h, router.weight, router.bias, task), -1)
    top, idx = probs.sort(descending=True, stable=True)
    top, idx = top[:router.top_k], idx[:router.top_k]
    gates = top / top.sum() if router.cfg.renormalize else top + router.cfg.eps
    return idx.tolist(), gates


def naive_moe_mlp(layer, x, task):
    """Per token: sum over its k experts of gate * w2(gelu(w1 x + b1)) + b2."""
    ex = layer.experts
    out = []
    for x_n in x.reshape(-1, x.shape[-1]).double():
        idx, gates = naive_route(layer.router, x_n, task)
        y = 0
        for e, g in zip(idx, gates):
            h = F.gelu(x_n @ ex.w1[e].double() + ex.b1[e].double())
            y = y + g * (h @ ex.w2[e].double() + ex.b2[e].double())
        out.append(y)
    return torch.stack(out).view(x.shape)


def naive_moa(layer, x, task):
    """Per token: sum over its k heads of gate * attention(q_e, K, V) @ o_proj[e]."""
    B, N, C = x.shape
    hd = layer.head_dims
    x = x.double()
    w_kv = layer.kv_proj.weight.double()
    kv = x @ w_kv.T
    if layer.kv_proj.bias is not None:
        kv = kv + layer.kv_proj.bias.double()
    keys, values = kv[..., :hd], kv[..., hd:]
    out = []
    for b in range(B):
        for n in range(N):
            idx, gates = naive_route(layer.router, x[b, n], task)
            y = layer.o_bias.double()
            for e, g in zip(idx, gates):
                q = x[b, n] @ layer.q_proj[e].double()
                if layer.q_bias is not None:
                    q = q + layer.q_bias[e].double()
                attn = torch.softmax(keys[b] @ q / math.sqrt(hd), -1)
                y = y + g * ((attn @ values[b]) @ layer.o_proj[e].double())
            out.append(y)
    return torch.stack(out).view(B, N, C)


def spread_router(layer, std=1.0, seed=0):
    """Random router weights far from ties, so that routing differences are real."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.router.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def grads_of(module, x, fn, task, upstream):
    """Output of ``fn(x, task)`` and the grads of ``(out * upstream).sum()`` w.r.t.
    x and every parameter of ``module``."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = fn(x, task)
    (out * upstream.to(out.dtype)).sum().backward()
    grads = {'x': x.grad}
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return out, grads


def assert_matches_reference(module, reference, x, task, rtol=1e-4, atol=1e-5):
    """Forward and all gradients of ``module`` equal those of the float64 reference."""
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out, grads = grads_of(module, x, module, task, upstream)
    expected, expected_grads = grads_of(module, x, lambda *a: reference(module, *a),
                                        task, upstream)
    torch.testing.assert_close(out, expected.float(), rtol=rtol, atol=atol)
    for name, grad in grads.items():
        if '.router.' in f'.{name}' and name.rsplit('.', 1)[1] != task:
            assert grad is None, f'{name}: another task\'s router got a gradient'
            continue
        assert grad is not None, f'no gradient for {name}'
        torch.testing.assert_close(
            grad, expected_grads[name].float(), rtol=rtol, atol=atol,
            msg=lambda m, name=name: f'gradient of {name}: {m}')


def keep_experts(layer, kept):
    """``layer``'s state dict cut to the experts ``kept`` (stacked expert tensors
    and router output columns), the weights of a layer of ``len(kept)`` experts."""
    kept = torch.tensor(kept)
    out = {}
    for key, value in layer.state_dict().items():
        if key.startswith(('router.weight.', 'router.bias.')):
            value = value[..., kept]
        elif key in ('experts.w1', 'experts.b1', 'experts.w2', 'experts.b2', 'q_proj',
                     'q_bias', 'o_proj'):
            value = value[kept]
        out[key] = value
    return out
