"""Tests of the SSL algorithms' state and dispatch: FreeMatch's state_dict round trip and build_ssl.
The losses and FreeMatch's thresholds (Eqs. 1-2, fairness) are tested in test_losses.py."""
import pytest
import torch

import ssl_algos


def test_freematch_state_dict_round_trip():
    g = torch.Generator().manual_seed(0)
    fm = ssl_algos.FreeMatch(4, ema_p=0.9)
    fm.unlabeled_loss(torch.randn(6, 4, generator=g) * 2, torch.randn(6, 4, generator=g))
    assert not torch.equal(fm.p_model, torch.full((4,), 0.25))  # the state moved away from its initial value
    fm2 = ssl_algos.FreeMatch(4, ema_p=0.9)
    fm2.load_state_dict(fm.state_dict())
    for k in ("time_p", "p_model", "label_hist"):
        assert torch.equal(getattr(fm2, k), getattr(fm, k)), k
    # the restored copy carries on exactly like the original
    lw, ls = torch.randn(5, 4, generator=g) * 2, torch.randn(5, 4, generator=g)
    (la, ma, pa), (lb, mb, pb) = fm.unlabeled_loss(lw, ls), fm2.unlabeled_loss(lw, ls)
    assert torch.equal(la, lb) and torch.equal(ma, mb) and torch.equal(pa["fairness"], pb["fairness"])
    assert torch.equal(fm.label_hist, fm2.label_hist)


def test_build_ssl_rejects_unknown():
    with pytest.raises(ValueError, match="freematch"):
        ssl_algos.build_ssl("mixmatch", 10)
