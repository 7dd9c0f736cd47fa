import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import bingo, losses
from utils import metrics
from utils.schedule import learning_rate


def _unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def test_info_nce_matches_a_hand_computation():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.6, 0.8]])
    queue = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # columns (0,1) and (-1,0)
    t = 0.5
    logits = torch.tensor([0.6, 0.0, -1.0]) / t
    expected = -logits[0] + torch.logsumexp(logits, 0)
    assert torch.allclose(losses.info_nce(q, k, queue, t), expected)
    assert torch.allclose(losses.contrastive_logits(q, k, queue, t)[0], logits)


def test_bag_weights_warm_up():
    assert [losses.bag_weights(e, (0.5, 0.5), 10) for e in (0, 10)] == [(1.0, 0.0), (1.0, 0.0)]
    assert losses.bag_weights(11, (0.5, 0.5), 10) == (0.5, 0.5)
    assert losses.bag_weights(50, (0.7, 0.3), 10) == (0.7, 0.3)


def test_bingo_official_loss_is_the_mean_of_three_weighted_terms():
    torch.manual_seed(0)
    qa, qn, qm, ka, kn = (_unit(4, 8) for _ in range(5))
    queue = F.normalize(torch.randn(8, 16), dim=0)
    ce = lambda q, k: losses.info_nce(q, k, queue, 0.2)  # noqa: E731
    total, terms = losses.bingo_official_loss(qa, qn, qm, ka, kn, queue, 0.2, (0.5, 0.5), 0.7)
    la = 0.5 * ce(qa, ka) + 0.5 * ce(qa, kn)
    lp = 0.5 * ce(qn, kn) + 0.5 * ce(qn, ka)
    lm = 0.7 * ce(qm, ka) + 0.3 * ce(qm, kn)
    assert torch.allclose(total, (la + lp + lm) / 3)
    assert torch.allclose(terms["loss_mix"], lm)
    warm, _ = losses.bingo_official_loss(qa, qn, qm, ka, kn, queue, 0.2, (1.0, 0.0), 0.7)
    assert torch.allclose(warm, (ce(qa, ka) + ce(qn, kn) + lm) / 3)


def test_bingo_paper_loss():
    torch.manual_seed(1)
    qa, qn, ka = (_unit(4, 8) for _ in range(3))
    queue = F.normalize(torch.randn(8, 16), dim=0)
    total, _ = losses.bingo_paper_loss(qa, qn, ka, queue, 0.2)
    assert torch.allclose(total, losses.info_nce(qa, ka, queue, 0.2) + losses.info_nce(qn, ka, queue, 0.2))


def test_seed_loss_hand_value_and_minimum():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.0, 1.0]])
    queue = torch.tensor([[1.0], [0.0]])
    # teacher: logits [1, 0]/T_t -> softmax ~ [1, 0] for tiny T_t; student logits [0, 1]/0.5
    value = losses.seed_loss(q, k, queue, 0.5, 1e-4)
    expected = -torch.log_softmax(torch.tensor([0.0, 2.0]), 0)[0]
    assert torch.allclose(value, expected, atol=1e-5)
    assert losses.seed_loss(k, k, queue, 1e-4, 1e-4) < 1e-3


def test_disco_mse_is_the_release_sum_over_one_process_batch_at_weight_equal_to_that_batch():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    teacher = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.8, 0.6]])
    by_hand = (2.0 + 0.0 + 2 * 0.2 ** 2) / 3  # mean over images of the squared distance
    assert torch.allclose(losses.disco_mse(student, teacher, 1.0), torch.tensor(by_hand))
    release = torch.nn.MSELoss(reduction="sum")(teacher, student)  # DisCo/main.py's criterion_mse
    assert torch.allclose(losses.disco_mse(student, teacher, 3.0), release)


def test_compress_kl_by_hand_and_its_minimum():
    teacher = torch.tensor([[2.0, 0.0, 0.0]])
    student = torch.tensor([[0.0, 1.0, 0.0]])
    p, q = torch.softmax(teacher, 1)[0], torch.softmax(student, 1)[0]
    assert torch.allclose(losses.compress_kl(teacher, student), (p * (p / q).log()).sum())
    assert losses.compress_kl(student, student).abs() < 1e-7
    features, bank = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, -1.0], [0.5, 0.0]])  # [D=2, N=2]
    assert torch.allclose(losses.bank_similarities(features, bank, 0.04), torch.tensor([[12.5, -25.0]]))


@pytest.mark.parametrize("loss_name", ["info_nce", "bingo", "seed", "disco", "compress"])
def test_losses_fall_under_gradient_steps(loss_name):
    torch.manual_seed(0)
    keys = _unit(16, 8)
    queue = F.normalize(torch.randn(8, 32), dim=0)
    raw = torch.randn(16, 8, requires_grad=True)
    optimiser = torch.optim.SGD([raw], lr=10.0)

    def value():
        q = F.normalize(raw, dim=1)
        if loss_name == "info_nce":
            return losses.info_nce(q, keys, queue, 0.2)
        if loss_name == "seed":
            return losses.seed_loss(q, keys, queue, 0.2, 1e-4)
        if loss_name == "disco":
            return losses.info_nce(q, keys, queue, 0.2) + losses.disco_mse(q, keys, 16.0)
        if loss_name == "compress":
            return losses.compress_kl(losses.bank_similarities(keys, queue, 0.04),
                                      losses.bank_similarities(q, queue, 0.04))
        return losses.bingo_official_loss(q, q, q, keys, keys, queue, 0.2, (0.5, 0.5), 0.6)[0]

    first = value().item()
    for _ in range(50):
        optimiser.zero_grad()
        value().backward()
        optimiser.step()
    assert value().item() < 0.5 * first


def test_cutmix_box_and_lambda():
    assert bingo.cutmix_box(10, 10, 0.75, 5, 5) == (3, 7, 3, 7, 1 - 16 / 100)  # side int(10*0.5)=5, 5//2=2
    y1, y2, x1, x2, frac = bingo.cutmix_box(10, 10, 0.75, 0, 9)  # clipped at the corner
    assert (y1, y2, x1, x2) == (7, 10, 0, 2) and frac == pytest.approx(1 - 6 / 100)
    anchor, neighbour = torch.zeros(2, 3, 10, 10), torch.ones(2, 3, 10, 10)
    mixed, fraction = bingo.apply_cutmix(anchor, neighbour, np.random.default_rng(0))
    assert torch.equal(mixed[0], mixed[1])  # one box for the whole batch
    assert fraction == pytest.approx(1 - mixed[0, 0].mean().item())
    assert torch.equal(anchor, torch.zeros_like(anchor))  # inputs untouched
    fractions = [bingo.apply_cutmix(anchor, neighbour, np.random.default_rng(s))[1] for s in range(400)]
    assert 0.55 < float(np.mean(fractions)) < 0.8  # Beta(2,2) on 1 - box area


def test_learning_rate_schedules():
    assert learning_rate(0, 0.03, 200) == pytest.approx(0.03)
    assert learning_rate(100, 0.03, 200) == pytest.approx(0.015)
    assert learning_rate(150, 0.03, 200) == pytest.approx(0.03 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert learning_rate(120, 30, 120, min_lr=0.01) == pytest.approx(0.01)
    assert learning_rate(59, 30, 100, "step", [60, 80]) == pytest.approx(30)
    assert learning_rate(60, 30, 100, "step", [60, 80]) == pytest.approx(3)
    assert learning_rate(85, 30, 100, "step", [60, 80]) == pytest.approx(0.3)


def test_topk_counts_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.8, 0.1, 0.05, 0.04, 0.03, 0.02],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    target = torch.tensor([1, 2, 0])
    top1, top5 = metrics.topk_correct(logits, target, (1, 5))
    assert (top1.item(), top5.item()) == (1, 2)
    acc1, acc5 = metrics.topk_accuracy(logits, target)
    assert acc5 >= acc1 and acc1.item() == pytest.approx(100 / 3)
