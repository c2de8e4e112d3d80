"""Tests of the state of the feature re-alignment module: FeatureQueues' ring order, overwrite and filled slots.
The FA losses themselves (Eqs. 11-12, 17-19) are tested in test_losses.py."""
import pytest
import torch

import fa


def test_queue_ring_order_and_weak_overwrite():
    N_l, T, d = 3, 4, 2
    q = fa.FeatureQueues(N_l, T, d)
    # push 6 strong features into row 1 (and one into row 2); row 0 is never written
    for k in range(6):
        q.update(torch.tensor([1]), torch.full((1, d), 10.0 + k), torch.full((1, d), float(k)))
    q.update(torch.tensor([2]), torch.full((1, d), 99.0), torch.full((1, d), 7.0))
    assert q.q_w[1].tolist() == [15.0, 15.0]  # latest weak feature only
    assert q.q_w[2].tolist() == [99.0, 99.0]
    # ring of T = 4 after 6 pushes: slots hold 4, 5, 2, 3 (0 and 1 were dropped first)
    assert q.q_s[1, :, 0].tolist() == [4.0, 5.0, 2.0, 3.0]
    assert set(q.q_s[1, :, 0].tolist()) == {2.0, 3.0, 4.0, 5.0}  # the last T pushed
    assert q.filled.tolist() == [[False] * 4, [True] * 4, [True, False, False, False]]
    # state_dict round trip
    q2 = fa.FeatureQueues(N_l, T, d)
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.q_s, q.q_s) and torch.equal(q2.filled, q.filled) and torch.equal(q2.ptr, q.ptr)


def test_queue_unfilled_row_is_never_nearest():
    q = fa.FeatureQueues(2, 3, 2)
    q.update(torch.tensor([1]), torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]]))
    # row 0 is zeros and unfilled; the unlabeled strong feature points away from row 1's only strong feature,
    # yet row 1 must be chosen: its weak feature (0, 1) vs z_u_w (0, 1) gives loss 0
    loss = fa.similarity_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), q.q_w, q.q_s, q.filled)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("T", [1, 2, 5])
def test_queue_batch_update_equals_one_sample_at_a_time(T):
    """A batch with repeated positions (more repeats than T included) leaves the queues as writing its samples one
    after another in batch order would: the last weak feature per row, every strong feature pushed into the ring."""
    torch.manual_seed(0)
    N_l, d = 4, 3
    batched, looped = fa.FeatureQueues(N_l, T, d), fa.FeatureQueues(N_l, T, d)
    for _ in range(5):
        pos = torch.randint(0, N_l, (9,))  # 9 draws from 4 rows: repeats in every batch
        z_w, z_s = torch.randn(9, d), torch.randn(9, d)
        batched.update(pos, z_w, z_s)
        for b in range(9):  # the reference: one sample at a time, written out by hand
            i = int(pos[b])
            looped.q_w[i] = z_w[b]
            t = int(looped.ptr[i])
            looped.q_s[i, t] = z_s[b]
            looped.filled[i, t] = True
            looped.ptr[i] = (t + 1) % T
    for k in ("q_w", "q_s", "filled", "ptr"):
        assert torch.equal(getattr(batched, k), getattr(looped, k)), k
