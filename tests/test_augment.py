"""DiffAugment: the reference's definitions on small tensors, gradients, shapes and ranges, seeded
streams per rank and step, and the adaptive probability's direction."""
from __future__ import annotations

import pytest
import torch

from biggan_smyrf.training import AugmentConfig
from biggan_smyrf.training.augment import D_STEP, G_STEP, Augmentation
from biggan_smyrf.training.diffaugment import (
    AUGMENT_OPS, brightness, contrast, cutout_mask, diff_augment, saturation, translate)

from test_errors import fails_cleanly, train_args


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b=4, c=3, h=8, w=8, seed=0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=seeded(seed), dtype=dtype) * 2 - 1


def test_translation_by_a_known_shift_moves_pixels_and_shifts_in_zeros():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    out = translate(x, torch.tensor([1]), torch.tensor([-2]))  # out[i, j] = x[i + 1, j - 2]
    expected = torch.tensor([[0, 0, 5, 6], [0, 0, 9, 10], [0, 0, 13, 14], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(translate(x, torch.tensor([0]), torch.tensor([0])), x)


def test_translation_draws_whole_pixel_shifts_up_to_an_eighth_of_the_side():
    """With a fixed generator: the shifts the op drew (read back from where a single bright pixel
    went) are integers in [-2, 2] for 16 px, per image, and the image is the reference's shift."""
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = diff_augment(x, ["translation"], p=1.0, generator=seeded(1))
    where = out[:, 0].flatten(1).argmax(1)
    shift_h, shift_w = 8 - where // 16, 8 - where % 16  # out[i, j] = x[i + dh, j + dw]
    assert set(shift_h.tolist()) == set(shift_w.tolist()) == {-2, -1, 0, 1, 2}
    assert torch.equal(out, translate(x, shift_h, shift_w))
    # The same draws, by hand: the op's first two draws from the generator.
    g = seeded(1)
    assert torch.equal(shift_h, torch.randint(-2, 3, (64,), generator=g))
    assert torch.equal(shift_w, torch.randint(-2, 3, (64,), generator=g))


def test_cutout_of_a_known_box():
    mask = cutout_mask(torch.Size([1, 3, 6, 6]), torch.tensor([-1]), torch.tensor([2]), (3, 3), torch.float32)
    expected = torch.ones(6, 6)
    expected[0:2, 2:5] = 0  # rows -1..1 clipped to 0..1, columns 2..4
    assert mask.shape == (1, 1, 6, 6) and torch.equal(mask[0, 0], expected)


def test_cutout_boxes_are_half_the_side_centred_anywhere():
    x = torch.ones(512, 3, 8, 8)
    out = diff_augment(x, ["cutout"], p=1.0, generator=seeded(2))
    zeroed = (out[:, 0] == 0)
    rows, cols = zeroed.any(2).sum(1), zeroed.any(1).sum(1)
    assert torch.equal(zeroed.sum((1, 2)), rows * cols)  # one rectangle per image
    assert rows.max() == cols.max() == 4 and rows.min() == cols.min() == 2  # 4x4, clipped at the edges
    assert torch.equal(out[:, :1].expand_as(out), out)  # the same box in every channel
    # Centres range over 0..8 (the reference's even-box range): boxes touching either edge at size 2.
    first_row = zeroed.any(2).float().argmax(1)
    assert set(first_row.tolist()) == set(range(0, 7))


def test_color_ops_follow_their_formulas():
    x = torch.tensor([[[[0.2, -0.4]], [[0.6, 0.0]], [[-1.0, 0.4]]]])  # (1, 3, 1, 2)
    torch.testing.assert_close(brightness(x, torch.tensor([0.75])), x + 0.25)
    channel_mean = x.mean(1, keepdim=True)
    torch.testing.assert_close(channel_mean, torch.tensor([[[[-0.2 / 3, 0.0]]]]))
    torch.testing.assert_close(saturation(x, torch.tensor([0.0])), channel_mean.expand_as(x))  # grey
    torch.testing.assert_close(saturation(x, torch.tensor([1.0])), x)
    torch.testing.assert_close(saturation(x, torch.tensor([2.0])), 2 * x - channel_mean)
    mean = x.mean()  # -0.2 / 6
    torch.testing.assert_close(contrast(x, torch.tensor([0.5])), mean + (x - mean) * 0.5)
    torch.testing.assert_close(contrast(x, torch.tensor([0.5]))[0, 0, 0, 0], torch.tensor(-0.2 / 6 + (0.2 + 0.2 / 6) * 0.5))


def test_color_draws_u_per_image_in_the_reference_ranges():
    x = torch.zeros(256, 3, 4, 4)
    out = diff_augment(x, ["color"], p=1.0, generator=seeded(3))
    shift = out[:, 0, 0, 0]  # on a constant image only brightness changes anything
    assert torch.equal(out, shift.view(-1, 1, 1, 1).expand_as(out))
    assert -0.5 <= shift.min() < -0.45 and 0.45 < shift.max() < 0.5 and len(set(shift.tolist())) == 256


@pytest.mark.parametrize("op", AUGMENT_OPS)
def test_ops_keep_shape_dtype_and_range(op):
    x = images(b=16, h=16, w=16)
    out = diff_augment(x, [op], p=1.0, generator=seeded(4))
    assert out.shape == x.shape and out.dtype == x.dtype
    if op in ("translation", "cutout"):  # pixels moved or zeroed, never new values
        assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    else:  # brightness moves by < 0.5; saturation scales by < 2 about the channel mean, contrast by < 1.5
        assert out.abs().max() < 1 + 0.5 + 2 * 2 * 1.5 * 2
    assert not torch.equal(out, x)


@pytest.mark.parametrize("op", AUGMENT_OPS)
def test_ops_are_differentiable(op):
    x = images(b=2, h=8, w=8, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: diff_augment(t, [op], p=1.0, generator=seeded(5)), (x,))


def test_gradients_flow_through_all_ops_together_in_bf16():
    x = images(b=4, h=16, w=16).to(torch.bfloat16).requires_grad_()
    out = diff_augment(x, ["color", "translation", "cutout"], p=1.0, generator=seeded(6))
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad.float()).all()


def test_probability_p_applies_each_op_to_about_p_of_the_images():
    x = images(b=2000, c=3, h=8, w=8)
    assert torch.equal(diff_augment(x, ["translation", "cutout", "color"], p=0.0, generator=seeded(7)), x)
    changed = (diff_augment(x, ["cutout"], p=0.3, generator=seeded(7)) != x).flatten(1).any(1).float().mean()
    assert 0.26 < changed < 0.34


def run_augmentation(config=AugmentConfig(policy=["translation", "cutout", "color"]), seed=0, rank=0) -> Augmentation:
    augmentation = Augmentation(config)
    augmentation.bind(seed, rank)
    return augmentation


def test_each_call_is_decided_by_seed_rank_and_step():
    x = images(b=8, h=16, w=16)
    out = run_augmentation()(x, 5, D_STEP, 1)
    assert torch.equal(out, run_augmentation()(x, 5, D_STEP, 1))  # e.g. after a resume
    for other in (run_augmentation(rank=1)(x, 5, D_STEP, 1), run_augmentation(seed=1)(x, 5, D_STEP, 1),
                  run_augmentation()(x, 6, D_STEP, 1), run_augmentation()(x, 5, G_STEP, 1),
                  run_augmentation()(x, 5, D_STEP, 0)):
        assert not torch.equal(out, other)


def test_config_is_validated():
    assert AugmentConfig().initial_p == 1.0 and AugmentConfig(policy=["cutout"], adaptive=True).initial_p == 0.0
    for bad, message in ((dict(policy=["flip"]), "distinct ops"), (dict(policy=["cutout", "cutout"]), "distinct"),
                         (dict(p=1.5), "in \\[0, 1\\]"), (dict(adaptive=True), "needs model.augment.policy"),
                         (dict(target=1.0), "target"), (dict(interval=0), "interval")):
        with pytest.raises(ValueError, match=message):
            AugmentConfig(**bad)


def linear_d(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1))


def adapted_p(d: torch.nn.Module, reals: torch.Tensor, p: float, iterations: int = 8) -> list[float]:
    """p after each G iteration of ADA's heuristic fed with D's scores of augmented reals."""
    config = AugmentConfig(policy=["translation", "cutout", "color"], adaptive=True, p=p, interval=2, speed_kimg=1.6)
    augmentation, history = run_augmentation(config), []
    for g_iter in range(iterations):
        with torch.no_grad():
            augmentation.observe(d(augmentation(reals, g_iter, D_STEP, 0)))
        augmentation.end_g_iteration(g_iter + 1, real_images=len(reals), all_ranks_sum=lambda t: t)
        history.append(augmentation.p)
    return history


def test_adaptive_p_rises_on_a_d_that_overfits_and_falls_on_one_that_does_not():
    reals = images(b=16, h=8, w=8, seed=8)
    overfit = linear_d(0)
    optimizer = torch.optim.SGD(overfit.parameters(), lr=0.05)
    for step in range(200):  # hinge loss on 16 fixed (augmented) reals against fresh noise: D memorises them
        fakes = torch.rand(16, 3, 8, 8, generator=seeded(step)) * 2 - 1
        augmented = diff_augment(reals, ["translation", "cutout", "color"], p=0.5, generator=seeded(1000 + step))
        loss = torch.relu(1 - overfit(augmented)).mean() + torch.relu(1 + overfit(fakes)).mean()
        optimizer.zero_grad(), loss.backward(), optimizer.step()
    step = 16 * 2 / 1600  # real images per interval / (speed_kimg * 1000): 0.02
    rising = adapted_p(overfit, reals, p=0.0)  # where stylegan2-ada starts
    assert rising == pytest.approx([0.0, step, step, 2 * step, 2 * step, 3 * step, 3 * step, 4 * step])
    falling = adapted_p(linear_d(1), reals, p=0.05)  # untrained: D(real) is about as often < 0 as > 0
    assert falling == pytest.approx([0.05, 0.05 - step, 0.05 - step, 0.05 - 2 * step, 0.05 - 2 * step, 0.0, 0.0, 0.0])


def test_adaptive_statistic_is_summed_over_ranks_and_saved():
    config = AugmentConfig(policy=["cutout"], adaptive=True, p=0.5, interval=2, speed_kimg=1.0)
    augmentation = run_augmentation(config)
    augmentation.observe(torch.tensor([1.0, 1.0, -1.0, 1.0]))  # this rank: r = 0.5 < 0.6
    other_rank = torch.tensor([4.0, 4.0])  # the other rank's 4 reals all positive
    augmentation.end_g_iteration(1, real_images=8, all_ranks_sum=lambda t: t + other_rank)
    state = augmentation.state_dict()
    assert augmentation.p == 0.5 and torch.equal(state["signs"], torch.tensor([6.0, 8.0]))
    resumed = run_augmentation(config)
    resumed.load_state_dict(state)
    for run in (augmentation, resumed):
        run.observe(torch.tensor([1.0, 1.0, 1.0, 1.0]))
        run.end_g_iteration(2, real_images=8, all_ranks_sum=lambda t: t + other_rank)
        assert run.r_t == pytest.approx(14 / 16) and run.p == pytest.approx(0.5 + 16 / 1000)


def test_training_in_bf16_augments_what_d_sees_adapts_p_and_saves_it_while_attention_switches(tmp_path):
    """A bf16 run whose G trains dense for one G iteration, then SMYRF as built; every image D
    sees in training goes through cutout with an adaptive p, saved in the checkpoint."""
    from test_training import fit, tiny_module
    from biggan_smyrf.attention import AttentionSchedule
    from biggan_smyrf.training import LoopConfig

    config = AugmentConfig(policy=["cutout"], adaptive=True, p=0.5, interval=1, speed_kimg=0.08)
    module = tiny_module(augment=config, attention=AttentionSchedule(train=[{"from": 0, "kind": "dense"}, {"from": 1}]),
                         loop=LoopConfig(max_g_iters=2, log_every=1, sample_every=100, ckpt_every=100, val_every=100))
    seen = []
    module.D.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().float().clone())
                                       if module.trainer.training else None)
    trainer = fit(module, tmp_path, precision="bf16-mixed")
    assert module.g_iters == 2 and all(torch.isfinite(p).all() for p in module.G.parameters())
    cut = torch.cat([(x == 0).all(1).flatten(1).sum(1) for x in seen])  # zeroed pixels per image
    assert len(seen) == 2 * 3 and (cut == 0).any() and (cut >= 16 * 16).any()  # p = 0.5: some cut, some not
    # Adjusted after each G iteration by 8 reals / 80: two steps of 0.1, up or down.
    assert round(module.augmentation.p, 6) in (0.3, 0.5, 0.7) and module.augmentation.r_t is not None
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["biggan_smyrf"]
    assert state["augment"]["p"] == module.augmentation.p and state["attention_stages"] == {"train": 1, "eval": 0}


@pytest.mark.slow
def test_two_process_ddp_adapts_one_p_from_both_ranks(tmp_path):
    """Two gloo processes with adaptive DiffAugment: each rank augments its own shard with its own
    draws, the sign statistic is summed over both, so p (and G) stay identical on the ranks."""
    from conftest import train

    train(tmp_path, "--run=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2",
          "--trainer.strategy=gan_ddp", "--model.loop.max_g_iters=3",
          "--model.loop.val_every=100", "--model.loop.sample_every=100",
          "--model.augment.policy=[translation, cutout, color]", "--model.augment.adaptive=true",
          "--model.augment.p=0.5", "--model.augment.interval=2", "--model.augment.speed_kimg=1",
          "--trainer.callbacks+=ddp_probe.GradientProbe", f"--trainer.callbacks.out_dir={tmp_path}",
          "--trainer.callbacks.freeze_bn=false")
    ranks = [torch.load(tmp_path / f"run-rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["augment"]["p"] == ranks[1]["augment"]["p"] != 0.5
    assert torch.equal(ranks[0]["augment"]["signs"], ranks[1]["augment"]["signs"]) and ranks[0]["augment"]["signs"][1] == 2 * 2 * 8
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][key], msg=key)


def test_train_py_refuses_adaptive_augmentation_without_a_policy_in_one_line(run_dir, capsys):
    from biggan_smyrf import cli as train_cli

    fails_cleanly(train_cli.main, train_args("--model.augment.adaptive=true"), capsys,
                  "error: model.augment.adaptive needs model.augment.policy")
