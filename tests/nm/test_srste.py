"""SR-STE (Zhou et al., ICLR 2021): masked forward, straight-through gradient plus λ_w decay, N:M at the end."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from slimmer.structures.nm import check_nm, nm_mask, nm_masks
from slimmer.train.srste import DEFAULT_DECAY, SRSTEHook

NAMES = ["0.weight", "2.weight"]


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_training_ends_exactly_nm(n: int, m: int) -> None:
    model = toy()
    x, y = data()
    hook = SRSTEHook(NAMES, partial(nm_mask, n=n, m=m))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hook.on_start(model, total_steps=5)
    for step in range(5):
        loss = F.cross_entropy(model(x), y)
        extra = hook.loss(model, step)
        loss = loss if extra is None else loss + extra
        opt.zero_grad()
        loss.backward()
        hook.after_backward(model, step)
        opt.step()
        hook.after_step(model, step)
        # between steps the parameters hold the dense weights (not N:M)
        assert not check_nm(model[0].weight.detach().numpy(), n, m)
    with torch.no_grad():
        model(x)  # an evaluation forward swaps in W⊙M without losing the dense copy
    assert hook.swapped
    hook.on_end(model)
    assert not hook.swapped
    for name in NAMES:
        assert check_nm(dict(model.named_parameters())[name].detach().numpy(), n, m), name
    assert nm_masks(model, n, m).masks.masks.keys() >= set(NAMES)
    before = model[0].weight.detach().clone()
    model(x)  # the pre-hook is gone: forwards no longer touch the weights
    assert torch.equal(before, model[0].weight)


@pytest.mark.parametrize("decay", [DEFAULT_DECAY, 0.5])
def test_one_step_gradient_by_hand(decay: float) -> None:
    model = toy()
    reference = copy.deepcopy(model)
    x, y = data()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = {n: nm_mask(dense[n], 2, 4) for n in NAMES}

    # by hand: forward with W⊙M, gradient w.r.t. W⊙M, plus λ_w (1−M)⊙W
    with torch.no_grad():
        for n, p in reference.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    F.cross_entropy(reference(x), y).backward()
    ref_grads = dict(reference.named_parameters())

    hook = SRSTEHook(NAMES, partial(nm_mask, n=2, m=4), decay=decay)
    hook.on_start(model, total_steps=1)
    F.cross_entropy(model(x), y).backward()
    hook.after_backward(model, 0)
    params = dict(model.named_parameters())
    for n in NAMES:
        expected = ref_grads[n].grad + decay * (~masks[n]).float() * dense[n]
        torch.testing.assert_close(params[n].grad, expected, rtol=1e-6, atol=1e-8)
        assert torch.equal(params[n].detach(), dense[n])  # dense weights restored for the update
        pruned = ~masks[n]
        decay_part = params[n].grad[pruned] - ref_grads[n].grad[pruned]
        torch.testing.assert_close(decay_part, decay * dense[n][pruned])
    # the bias is not N:M trained and gets the plain gradient
    torch.testing.assert_close(params["0.bias"].grad, ref_grads["0.bias"].grad)
    hook.on_end(model)


def test_unknown_parameter_and_bad_decay() -> None:
    with pytest.raises(ValueError, match="decay"):
        SRSTEHook(NAMES, partial(nm_mask, n=2, m=4), decay=-1.0)
    hook = SRSTEHook(["nope.weight"], partial(nm_mask, n=2, m=4))
    with pytest.raises(ValueError, match="nope.weight"):
        hook.on_start(toy(), 1)


def test_srste_fine_tuning_starts_from_the_weights_before_masking(resnet20_state, tmp_path) -> None:
    """``after_shrink`` masks the N:M layers (for the after-prune numbers); the recovery stage puts
    the dense weights back, so SR-STE can swap a pruned weight in when it outgrows a kept one."""
    from pathlib import Path

    from slimmer.config import CompressConfig
    from slimmer.prune import PruneResult, after_shrink
    from slimmer.recover import _hooks
    from slimmer.zoo import ARCHITECTURES

    net = ARCHITECTURES.get("resnet20-fmnist").build()
    net.load_state_dict(torch.load(resnet20_state))
    dense = copy.deepcopy(net.state_dict())
    cfg = CompressConfig(model=Path("m.pt"), methods=("nm",), nm="2:4", data="d.npz", finetune_steps=2)
    x = torch.randn(2, 1, 28, 28)
    pruned = after_shrink(net, cfg, x, PruneResult())
    layer = "layer2.0.conv2.weight"
    assert layer in pruned.nm.layers and check_nm(net.state_dict()[layer].numpy(), 2, 4)
    hooks = _hooks(net, cfg, pruned, [])
    assert any(isinstance(h, SRSTEHook) for h in hooks)
    torch.testing.assert_close(net.state_dict()[layer], dense[layer])  # dense again: SR-STE masks per forward
