"""VMTAdapter: zero start, the plain formula, parameter counts, gradients, errors."""
import pytest
import torch
import torch.nn.functional as F

from mod_squad.moe.adapter import AdapterConfig, VMTAdapter

TASKS = ('cls', 'det', 'seg')
C, R = 32, 8


def adapter(**cfg):
    return VMTAdapter(C, TASKS, AdapterConfig(dims=R, **cfg))


def randomise(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


@pytest.mark.parametrize('variant', ['vmt', 'vmt_lite'])
@pytest.mark.parametrize('task_module', ['scale_shift', 'linear'])
def test_fresh_adapter_outputs_exact_zeros(variant, task_module):
    x = torch.randn(2, 5, C)
    y = adapter(variant=variant, task_module=task_module)(x, 'det')
    assert y.shape == (2, 5, C)
    assert torch.equal(y, torch.zeros_like(x))


@pytest.mark.parametrize('task_module', ['scale_shift', 'linear'])
def test_output_equals_the_plain_formula(task_module):
    """up(task_module_t(relu(down(x)))) * scale; Lite's up-projection is down^T."""
    x = torch.randn(2, 5, C)
    for variant in ('vmt', 'vmt_lite'):
        m = randomise(adapter(variant=variant, task_module=task_module, scale=0.5))
        h = torch.relu(x @ m.down_weight.T + m.down_bias)
        if task_module == 'linear':
            h = h @ m.task_weight['seg'].T + m.task_bias['seg']
        else:
            h = h * m.task_scale['seg'] + m.task_shift['seg']
        up = m.down_weight.T if variant == 'vmt_lite' else m.up_weight
        expected = 0.5 * (h @ up.T + m.up_bias)
        torch.testing.assert_close(m(x, 'seg'), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('variant, task_module, count', [
    # down (r C + r) + up (C r, not in Lite) + up bias C + per task
    ('vmt', 'scale_shift', R * C + R + C * R + C + 3 * 2 * R),  # 600
    ('vmt_lite', 'scale_shift', R * C + R + C + 3 * 2 * R),  # 344
    ('vmt', 'linear', R * C + R + C * R + C + 3 * (R * R + R)),  # 768
])
def test_parameter_count_by_hand(variant, task_module, count):
    m = adapter(variant=variant, task_module=task_module)
    assert sum(p.numel() for p in m.parameters()) == count


def test_a_forward_runs_one_task_module():
    """The shared projections and the forward's task module get gradients; the
    other tasks' modules get none (O(1) in the number of tasks)."""
    m = randomise(adapter())
    m(torch.randn(2, 5, C), 'det').sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    for name in ('down_weight', 'down_bias', 'up_weight', 'up_bias',
                 'task_scale.det', 'task_shift.det'):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(grads[f'{kind}.{t}'] is None for kind in ('task_scale', 'task_shift')
               for t in ('cls', 'seg'))


def test_lite_up_projection_trains_the_shared_weight():
    """Lite has no up weight; the gradient of both uses reaches down_weight."""
    m = randomise(adapter(variant='vmt_lite'))
    assert m.up_weight is None
    x = torch.randn(4, C)
    m(x, 'cls').sum().backward()
    w = m.down_weight.detach().requires_grad_()
    h = torch.relu(F.linear(x, w, m.down_bias.detach()))
    h = h * m.task_scale['cls'].detach() + m.task_shift['cls'].detach()
    F.linear(h, w.t(), m.up_bias.detach()).sum().backward()
    torch.testing.assert_close(m.down_weight.grad, w.grad)


def test_config_from_dict_takes_type_as_variant():
    assert AdapterConfig.build(dict(type='vmt_lite', dims=4)).variant == 'vmt_lite'
    cfg = AdapterConfig(dims=4)
    assert AdapterConfig.build(cfg) is cfg


@pytest.mark.parametrize('cfg, error, message', [
    (dict(type='lora'), ValueError,
     r"adapter variant must be one of \('vmt', 'vmt_lite'\), got 'lora'"),
    (dict(task_module='conv'), ValueError, "task_module must be one of"),
    (dict(dims=0), ValueError, 'adapter dims must be a positive int, got 0'),
    (dict(dims=8.0), ValueError, 'adapter dims must be a positive int, got 8.0'),
    (dict(rank=8), ValueError, r"Unknown adapter keys \['rank'\]; valid keys are"),
    (dict(type='vmt', variant='vmt'), ValueError, 'give type or variant, not both'),
    ('vmt', TypeError, 'adapter must be a dict of AdapterConfig fields'),
])
def test_bad_options_name_the_culprit(cfg, error, message):
    with pytest.raises(error, match=message):
        AdapterConfig.build(cfg)


def test_unknown_task_names_the_adapters_tasks():
    with pytest.raises(ValueError, match=r"Unknown task 'depth'; this adapter has "
                       r"tasks \['cls', 'det', 'seg'\]"):
        adapter()(torch.randn(2, C), 'depth')
