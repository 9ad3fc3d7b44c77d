import pytest
import torch

from segformer.engine.optim import OptimizerSettings, create_lr_schedule, create_optimizer, default_lr_steps


def test_linear_schedule_warms_up_then_decays_to_zero():
    schedule = create_lr_schedule(OptimizerSettings(policy="linear", warmup_ratio=0.1), total_steps=100, num_epochs=10)
    factors = [schedule(s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(1 / 90)
    assert schedule(100) == 0.0


def test_step_schedule_milestones_are_epochs():
    settings = OptimizerSettings(policy="step", lr_steps=(2, 4), lr_decay=0.5)
    schedule = create_lr_schedule(settings, total_steps=60, num_epochs=6)  # 10 steps per epoch
    assert [schedule(s) for s in (0, 19, 20, 39, 40, 59)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert default_lr_steps(9) == (6, 8)


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_momentum_means_beta1_for_adam(name, cls):
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = create_optimizer(params, OptimizerSettings(name=name, lr=0.1, momentum=0.8, weight_decay=0.01))
    assert isinstance(optimizer, cls)
    group = optimizer.param_groups[0]
    assert (group["momentum"] if name == "sgd" else group["betas"][0]) == 0.8
    assert group["weight_decay"] == 0.01


def test_bad_settings_name_the_rule():
    with pytest.raises(ValueError, match="train.optim.optim must be one of"):
        OptimizerSettings(name="lamb")
