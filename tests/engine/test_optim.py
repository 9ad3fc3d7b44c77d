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
    params = [("conv.weight", torch.nn.Parameter(torch.zeros(2, 2)))]
    optimizer = create_optimizer(params, OptimizerSettings(name=name, lr=0.1, momentum=0.8, weight_decay=0.01))
    assert isinstance(optimizer, cls)
    group = optimizer.param_groups[0]
    assert (group["momentum"] if name == "sgd" else group["betas"][0]) == 0.8
    assert group["weight_decay"] == 0.01


def test_no_weight_decay_on_norms_biases_and_position_embeddings():
    from segformer.model import build_segformer

    from segformer.config import BackboneConfig, DecodeHeadConfig, DecoderParams, ModelConfig

    cfg = ModelConfig(backbone=BackboneConfig(type="mit_b0"),
                      decode_head=DecodeHeadConfig(in_channels=[32, 64, 160, 256], decoder_params=DecoderParams(embed_dim=32)))
    model = build_segformer(cfg, 3, load_pretrained=False)
    optimizer = create_optimizer(model.named_parameters(), OptimizerSettings(weight_decay=0.05))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim <= 1 for p in plain["params"])
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == total


def test_frozen_parameters_are_left_out():
    frozen = torch.nn.Parameter(torch.zeros(3, 3), requires_grad=False)
    live = torch.nn.Parameter(torch.zeros(3, 3))
    optimizer = create_optimizer([("a.weight", frozen), ("b.weight", live)], OptimizerSettings())
    assert [p for g in optimizer.param_groups for p in g["params"]] == [live]
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer([("a.weight", frozen)], OptimizerSettings())


def test_a_batch_of_only_ignored_pixels_gives_zero_loss_not_nan():
    from segformer.engine.losses import segmentation_cross_entropy

    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = segmentation_cross_entropy(logits, torch.full((1, 16, 16), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0
    # With labelled pixels it is the usual mean over them.
    target = torch.full((1, 16, 16), 255)
    target[0, :8] = 1
    expected = torch.nn.functional.cross_entropy(
        torch.nn.functional.interpolate(logits.detach(), size=(16, 16), mode="bilinear", align_corners=False),
        target, ignore_index=255)
    assert torch.allclose(segmentation_cross_entropy(logits.detach(), target), expected, atol=1e-6)


def test_bad_settings_name_the_rule():
    with pytest.raises(ValueError, match="train.optim.optim must be one of"):
        OptimizerSettings(name="lamb")
