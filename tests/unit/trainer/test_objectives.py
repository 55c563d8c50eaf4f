"""The training objectives: the DPO, IPO and ORPO losses and metrics, and the reference
measured once."""

import math

import pytest
import torch

from trainer.masking import Example
from trainer.objectives import Dpo, dpo_loss, ipo_loss, orpo_loss, referenced
from trainer.preference import Pair


def test_dpo_loss_is_the_sigmoid_loss_of_the_reward_margin():
    chosen = torch.tensor([-10.0, -20.0, -5.0])
    rejected = torch.tensor([-12.0, -19.0, -5.0])
    reference = torch.tensor([[-11.0, -11.0], [-20.0, -20.0], [-6.0, -4.0]])
    loss, metrics = dpo_loss(chosen, rejected, reference, beta=0.5)
    # margins: 0.5 * ((c - r) - (rc - rr)) = 1.0, -0.5, 1.0
    expected = sum(math.log1p(math.exp(-m)) for m in (1.0, -0.5, 1.0))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["reward_margin"]) == pytest.approx(1.5)
    assert float(metrics["reward_accuracy"]) == 2.0
    assert float(metrics["chosen_reward"]) == pytest.approx(0.5 * (1.0 + 0.0 + 1.0))
    assert float(metrics["rejected_reward"]) == pytest.approx(0.5 * (-1.0 + 1.0 - 1.0))


def test_at_the_reference_the_loss_is_log_2_and_its_gradient_favours_chosen():
    chosen = torch.tensor([-3.0, -7.0], requires_grad=True)
    rejected = torch.tensor([-4.0, -6.0], requires_grad=True)
    reference = torch.stack([chosen, rejected], dim=1).detach()
    loss, metrics = dpo_loss(chosen, rejected, reference, beta=0.1)
    loss.backward()
    assert float(loss) == pytest.approx(2 * math.log(2))
    assert float(metrics["reward_accuracy"]) == 0.0  # a tie is not a preference
    assert chosen.grad.tolist() == pytest.approx([-0.05, -0.05])  # -beta * sigmoid(0)
    assert rejected.grad.tolist() == pytest.approx([0.05, 0.05])


def test_a_dpo_micro_batch_needs_every_pair_measured():
    example = Example([1, 2, 3], [-100, 2, 3])
    pairs = [Pair(example, Example([1, 2, 4], [-100, 2, 4]))]
    with pytest.raises(ValueError, match="reference"):
        Dpo(beta=0.1).make(pairs, batcher=None)  # refused before any batch is built
    [measured] = referenced(pairs, [[-1.5, -2.5]])
    assert measured.reference == (-1.5, -2.5)
    with pytest.raises(ValueError, match="zip"):
        referenced(pairs, [])


def test_ipo_loss_pulls_the_length_normalized_margin_towards_one_over_two_beta():
    chosen = torch.tensor([-10.0, -20.0], requires_grad=True)
    rejected = torch.tensor([-12.0, -19.0], requires_grad=True)
    reference = torch.tensor([[-11.0, -11.0], [-20.0, -20.0]])
    tokens = torch.tensor([[2.0, 4.0], [5.0, 1.0]])
    loss, metrics = ipo_loss(chosen, rejected, reference, tokens, beta=0.25)
    # ratios: (1/2 - (-1/4)) = 0.75 and (0/5 - 1/1) = -1; target 1 / (2 * 0.25) = 2
    assert float(loss) == pytest.approx((0.75 - 2) ** 2 + (-1 - 2) ** 2)
    assert float(metrics["reward_margin"]) == pytest.approx(0.25 * (0.75 - 1))
    assert float(metrics["reward_accuracy"]) == 1.0
    loss.backward()
    assert chosen.grad.tolist() == pytest.approx([2 * (0.75 - 2) / 2, 2 * (-1 - 2) / 5])


def test_at_the_reference_the_ipo_loss_is_the_square_of_its_target():
    chosen, rejected = torch.tensor([-3.0, -7.0]), torch.tensor([-4.0, -6.0])
    reference = torch.stack([chosen, rejected], dim=1)
    loss, _ = ipo_loss(chosen, rejected, reference, torch.ones(2, 2), beta=0.1)
    assert float(loss) == pytest.approx(2 * 5.0**2)


def test_orpo_loss_is_the_chosen_nll_plus_beta_times_the_odds_ratio_loss():
    chosen = torch.tensor([-2.0, -6.0], requires_grad=True)
    rejected = torch.tensor([-3.0, -2.0], requires_grad=True)
    tokens = torch.tensor([[4.0, 2.0], [3.0, 4.0]])
    loss, metrics = orpo_loss(chosen, rejected, tokens, beta=0.2)

    def log_odds(mean):
        return mean - math.log(1 - math.exp(mean))

    expected, margins = 0.0, []
    for c, r, (nc, nr) in zip((-2.0, -6.0), (-3.0, -2.0), tokens.tolist(), strict=True):
        ratio = log_odds(c / nc) - log_odds(r / nr)
        expected += -c / nc + 0.2 * math.log1p(math.exp(-ratio))
        margins.append(0.2 * (c / nc - r / nr))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["reward_margin"]) == pytest.approx(sum(margins))
    assert float(metrics["reward_accuracy"]) == 1.0  # means -0.5 > -1, then -2 < -0.5
    loss.backward()
    assert chosen.grad[0] < 0 < rejected.grad[0]  # descent raises chosen, lowers rejected


def test_orpo_needs_no_reference_and_survives_a_certain_answer():
    assert not Dpo(beta=0.1, loss_type="orpo").needs_reference
    assert Dpo(beta=0.1).needs_reference and Dpo(beta=0.1, loss_type="ipo").needs_reference
    loss, _ = orpo_loss(torch.tensor([0.0]), torch.tensor([-1.0]), torch.ones(1, 2), beta=0.1)
    assert math.isfinite(float(loss))
