"""Tests for the shared training-loop core, on a tiny real torch regression problem."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from machining_t2v.training import (
    LossRandomness,
    NonFiniteLossError,
    TrainingConfig,
    TrainingResult,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    train,
)

NUM_SAMPLES = 24
_DATA_GEN = torch.Generator().manual_seed(1234)
X = torch.randn(NUM_SAMPLES, 8, generator=_DATA_GEN)
Y = X @ torch.randn(8, 1, generator=_DATA_GEN) + 0.5


def make_model() -> nn.Module:
    """A small MLP: frozen first-layer weight, trainable first-layer bias and head.

    The dropout makes the result depend on torch's global RNG, like peft's LoRA dropout.
    Built from a fixed seed so that every call returns the same initial model.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1))
    model[0].weight.requires_grad_(False)
    return model


def compute_loss(
    model: nn.Module, indices: torch.Tensor, randomness: LossRandomness
) -> torch.Tensor:
    """MSE on the selected samples with input noise drawn per sample from the loop's randomness."""
    x = X[indices]
    noise = 0.01 * randomness.randn(x.shape[1])
    return nn.functional.mse_loss(model(x + noise), Y[indices])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def config(**overrides) -> TrainingConfig:
    base = {"max_steps": 12, "batch_size": 5, "learning_rate": 1e-2, "checkpoint_every": 4}
    return TrainingConfig(**{**base, **overrides})


class Interrupt(Exception):
    """Stands in for a crash (power cut, pre-emption) in the middle of training."""


def test_loss_falls_on_learnable_problem(tmp_path):
    model = make_model()
    result = train(model, compute_loss, NUM_SAMPLES, config(max_steps=80), tmp_path, progress=False)
    assert isinstance(result, TrainingResult)
    assert result.global_step == 80 and len(result.losses) == 80
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert result.steps_per_second > 0 and result.peak_memory_mb > 0
    assert result.resumed_from is None
    assert result.checkpoint_dir == tmp_path
    assert result.final_checkpoint == tmp_path / "checkpoint-80"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"gradient_accumulation_steps": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 3},
        {"optimizer": "prodigy", "learning_rate": 1.0, "lr_scheduler": "cosine_with_restarts", "lr_num_cycles": 2,
         "lr_warmup_steps": 2},
        {"lr_scheduler": "polynomial", "lr_power": 2.0, "lr_warmup_steps": 1},
        {"lr_scheduler": "piecewise_constant", "lr_step_rules": "1:5,0.1:9,0.01"},
    ],
    ids=["plain", "accum2-cosine-warmup", "prodigy-restarts", "polynomial", "piecewise"],
)
def test_resume_is_bit_identical(tmp_path, overrides):
    cfg = config(**overrides)

    def on_validate(step):
        # Validation that consumes the global RNGs must not shift the training streams,
        # or the resumed run (which validates at fewer steps) would diverge.
        torch.rand(7)
        random.random()

    common = {"progress": False, "on_validate": on_validate, "validate_every": 2}

    full_model = make_model()
    full = train(full_model, compute_loss, NUM_SAMPLES, cfg, tmp_path / "full", **common)

    def crash_at_6(step, metrics):
        if step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(
            make_model(),
            compute_loss,
            NUM_SAMPLES,
            cfg,
            tmp_path / "cut",
            on_log=crash_at_6,
            **common,
        )
    assert latest_checkpoint(tmp_path / "cut") == tmp_path / "cut" / "checkpoint-4"

    resumed_model = make_model()
    resumed = train(
        resumed_model,
        compute_loss,
        NUM_SAMPLES,
        TrainingConfig(**{**cfg.to_dict(), "resume": "latest"}),
        tmp_path / "cut",
        **common,
    )
    assert resumed.resumed_from == str(tmp_path / "cut" / "checkpoint-4")
    assert resumed.losses == full.losses
    full_state, resumed_state = trainable_state(full_model), trainable_state(resumed_model)
    assert full_state.keys() == resumed_state.keys()
    for name in full_state:
        assert torch.equal(full_state[name], resumed_state[name]), name


def test_resume_from_explicit_path_continues_the_same_run(tmp_path):
    cfg = config(max_steps=8)
    full = train(make_model(), compute_loss, NUM_SAMPLES, cfg, tmp_path / "a", progress=False)
    model = make_model()
    again = train(
        model,
        compute_loss,
        NUM_SAMPLES,
        config(max_steps=8, resume=str(tmp_path / "a" / "checkpoint-4")),
        tmp_path / "b",
        progress=False,
    )
    assert again.losses == full.losses
    saved = safetensors.torch.load_file(
        str(tmp_path / "a" / "checkpoint-8" / "trainable.safetensors")
    )
    for name, tensor in trainable_state(model).items():
        assert torch.equal(tensor, saved[name]), name


def test_a_run_stopped_early_and_resumed_is_the_run_trained_in_one_go(tmp_path):
    # A cosine schedule: stopping at step 4 must not squeeze the schedule into 4 steps.
    cfg = config(max_steps=8, lr_scheduler="cosine", lr_warmup_steps=2, checkpoint_every=0)
    full = train(make_model(), compute_loss, NUM_SAMPLES, cfg, tmp_path / "full", progress=False)
    model = make_model()
    first = train(model, compute_loss, NUM_SAMPLES, cfg, tmp_path / "parts", progress=False, stop_at=4)
    assert first.global_step == 4 and first.final_checkpoint == tmp_path / "parts" / "checkpoint-4"
    assert checkpoint_step(first.final_checkpoint) == 4
    rest = train(model, compute_loss, NUM_SAMPLES, TrainingConfig(**{**cfg.to_dict(), "resume": "latest"}),
                 tmp_path / "parts", progress=False, stop_at=100)  # past max_steps: stops there
    assert rest.global_step == 8 and rest.losses == full.losses
    saved = safetensors.torch.load_file(str(tmp_path / "full" / "checkpoint-8" / "trainable.safetensors"))
    for name, tensor in trainable_state(model).items():
        assert torch.equal(tensor, saved[name]), name
    with pytest.raises(ValueError, match="stop_at must be >= 0"):
        train(make_model(), compute_loss, NUM_SAMPLES, cfg, tmp_path / "bad", progress=False, stop_at=-1)
    with pytest.raises(FileNotFoundError, match="no state.json"):
        checkpoint_step(tmp_path / "no-such-checkpoint")


def test_checkpoint_limit_and_unfinished_folders(tmp_path):
    stale = tmp_path / "checkpoint-999.tmp-123"
    stale.mkdir(parents=True)
    (stale / "trainable.safetensors").write_bytes(b"half-written")
    cfg = config(max_steps=10, checkpoint_every=2, checkpoints_total_limit=2)
    train(make_model(), compute_loss, NUM_SAMPLES, cfg, tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-8", "checkpoint-10"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert stale.is_dir(), "someone else's unfinished folder must be left alone"

    resumed = train(
        make_model(),
        compute_loss,
        NUM_SAMPLES,
        config(max_steps=11, checkpoint_every=2, resume="latest"),
        tmp_path,
        progress=False,
    )
    assert resumed.resumed_from == str(tmp_path / "checkpoint-10")
    assert resumed.global_step == 11 and len(resumed.losses) == 11
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-11"]


def test_frozen_params_unchanged_and_only_trainable_saved(tmp_path):
    model = make_model()
    frozen_before = model[0].weight.detach().clone()
    trainable_before = trainable_state(model)
    train(model, compute_loss, NUM_SAMPLES, config(max_steps=5), tmp_path, progress=False)
    assert torch.equal(model[0].weight, frozen_before)
    assert all(not torch.equal(trainable_before[n], p) for n, p in trainable_state(model).items())
    saved = safetensors.torch.load_file(str(tmp_path / "checkpoint-5" / "trainable.safetensors"))
    assert set(saved) == {"0.bias", "3.weight", "3.bias"}


def test_param_groups_override_learning_rate(tmp_path):
    model = make_model()
    head_before = model[3].weight.detach().clone()
    groups = [
        {"params": [model[0].bias, model[3].bias], "lr": 1e-2},
        {"params": [model[3].weight], "lr": 0.0},  # lr 0 also cancels AdamW's decay
    ]
    logged = []
    train(
        model,
        compute_loss,
        NUM_SAMPLES,
        config(max_steps=4),
        tmp_path,
        param_groups=groups,
        on_log=lambda step, metrics: logged.append((step, metrics)),
        progress=False,
    )
    assert torch.equal(model[3].weight, head_before)
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    assert set(logged[0][1]) >= {"loss", "lr", "steps_per_second"}
    assert logged[0][1]["lr"] == pytest.approx(1e-2)


def test_warmup_cosine_schedule(tmp_path):
    lrs = []
    cfg = config(max_steps=6, lr_scheduler="cosine", lr_warmup_steps=2)
    train(
        make_model(),
        compute_loss,
        NUM_SAMPLES,
        cfg,
        tmp_path,
        on_log=lambda step, m: lrs.append(m["lr"]),
        progress=False,
    )
    assert lrs[:3] == pytest.approx([0.0, 5e-3, 1e-2])
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))


def test_nan_loss_stops_without_stepping_or_saving(tmp_path):
    calls = {"n": 0}
    seen = {}

    def nan_at_step_7(model, indices, randomness):
        calls["n"] += 1
        loss = compute_loss(model, indices, randomness)
        if calls["n"] == 7:
            seen["weights"] = trainable_state(model)
            return loss * float("nan")
        return loss

    model = make_model()
    with pytest.raises(NonFiniteLossError) as err:
        train(
            model, nan_at_step_7, NUM_SAMPLES, config(checkpoint_every=5), tmp_path, progress=False
        )
    good = tmp_path / "checkpoint-5"
    assert "step 7" in str(err.value) and str(good) in str(err.value)
    assert err.value.step == 7 and err.value.last_checkpoint == good
    for name, tensor in trainable_state(model).items():
        assert torch.equal(tensor, seen["weights"][name]), "the optimizer must not step on NaN"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-5"]
    state = json.loads((good / "state.json").read_text())
    assert state["global_step"] == 5 and len(state["losses"]) == 5
    safetensors.torch.load_file(str(good / "trainable.safetensors"))
    torch.load(good / "optimizer.pt", weights_only=True)


def test_resume_missing_path_and_unknown_config_key(tmp_path):
    missing = tmp_path / "nope" / "checkpoint-3"
    with pytest.raises(FileNotFoundError, match="checkpoint-3"):
        train(
            make_model(),
            compute_loss,
            NUM_SAMPLES,
            config(resume=str(missing)),
            tmp_path,
            progress=False,
        )
    with pytest.raises(ValueError, match="lerning_rate"):
        TrainingConfig.from_dict({"max_steps": 3, "lerning_rate": 1e-3})
    with pytest.raises(ValueError, match="lr_scheduler"):
        TrainingConfig.from_dict({"lr_scheduler": "exponential"})
    assert TrainingConfig.from_dict({"max_steps": 3}).max_steps == 3


def test_resume_latest_without_checkpoints_starts_fresh(tmp_path):
    result = train(
        make_model(),
        compute_loss,
        NUM_SAMPLES,
        config(max_steps=2, resume="latest"),
        tmp_path,
        progress=False,
    )
    assert result.resumed_from is None and result.global_step == 2


def test_checkpoint_files_are_weights_only_loadable(tmp_path):
    cfg = config(max_steps=3, gradient_accumulation_steps=2)
    train(make_model(), compute_loss, NUM_SAMPLES, cfg, tmp_path, progress=False)
    ckpt = tmp_path / "checkpoint-3"
    assert {p.name for p in ckpt.iterdir()} == {
        "trainable.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng.pt",
        "state.json",
    }
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(ckpt / name, weights_only=True)
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    # 3 steps x 2 micro-steps x 5 = 30 indices: one full epoch of 24 and 6 into the next.
    assert rng["sampler"]["pos"] == 6 and len(rng["sampler"]["perm"]) == NUM_SAMPLES
    state = json.loads((ckpt / "state.json").read_text())
    assert state["global_step"] == 3 and state["config"]["gradient_accumulation_steps"] == 2


def test_every_sample_seen_once_per_epoch(tmp_path):
    seen = []

    def recording_loss(model, indices, randomness):
        seen.extend(indices.tolist())
        return compute_loss(model, indices, randomness)

    cfg = config(max_steps=6, batch_size=8, checkpoint_every=0)
    train(make_model(), recording_loss, NUM_SAMPLES, cfg, tmp_path, progress=False)
    assert sorted(seen[:24]) == list(range(24)) and sorted(seen[24:]) == list(range(24))
    assert seen[:24] != seen[24:], "each epoch is reshuffled"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-6"]


def test_config_roundtrip_and_result_paths(tmp_path):
    cfg = config(resume=Path(tmp_path))
    assert cfg.resume == str(tmp_path)
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg


def test_fresh_run_replaces_a_previous_runs_checkpoints(tmp_path):
    train(make_model(), compute_loss, NUM_SAMPLES, config(max_steps=12), tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-8", "checkpoint-12"]
    # A new fresh run must neither be pruned in favour of the old checkpoint-12 nor let
    # resume="latest" jump into the old run after a crash.
    train(make_model(), compute_loss, NUM_SAMPLES, config(max_steps=6), tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_checkpoint_write_error_names_the_folder_and_survives_pickling(tmp_path):
    import pickle

    from machining_t2v.training import CheckpointWriteError

    error = CheckpointWriteError(tmp_path, 8, tmp_path / "checkpoint-4", "OSError: [Errno 28] No space left", 28)
    assert str(tmp_path) in str(error) and "checkpoint-4 is intact" in str(error) and error.errno == 28
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.step == 8 and again.last_checkpoint == error.last_checkpoint


def test_a_crash_while_pruning_never_lists_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    from machining_t2v.training import checkpoints

    real_rmtree = checkpoints.shutil.rmtree

    def crash_half_way(path, ignore_errors=False):
        if ".old-" in Path(path).name:
            (Path(path) / "trainable.safetensors").unlink()  # deleted one file, then the power went out
            raise Interrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", crash_half_way)
    cfg = config(max_steps=12, checkpoint_every=4, checkpoints_total_limit=1)
    with pytest.raises(Interrupt):
        train(make_model(), compute_loss, NUM_SAMPLES, cfg, tmp_path, progress=False)
    monkeypatch.setattr(checkpoints.shutil, "rmtree", real_rmtree)
    # checkpoint-4 was being pruned after checkpoint-8 was complete: it is gone from the listing.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-8"]
    assert any(p.name.startswith("checkpoint-4.old-") for p in tmp_path.iterdir())
    full_model, resumed_model = make_model(), make_model()
    full = train(full_model, compute_loss, NUM_SAMPLES, config(max_steps=12), tmp_path / "full", progress=False)
    resumed = train(resumed_model, compute_loss, NUM_SAMPLES, TrainingConfig(**{**cfg.to_dict(), "resume": "latest"}),
                    tmp_path, progress=False)  # fmt: skip
    assert resumed.resumed_from == str(tmp_path / "checkpoint-8") and resumed.losses == full.losses


def test_resume_converts_the_schedule_of_older_multi_process_checkpoints(tmp_path):
    # Before the schedule counted optimizer steps, a 2-process run advanced it twice per step.
    cfg = config(max_steps=12, lr_scheduler="cosine", lr_warmup_steps=3, checkpoints_total_limit=None)
    full_model = make_model()
    full = train(full_model, compute_loss, NUM_SAMPLES, cfg, tmp_path / "full", progress=False)
    old = tmp_path / "old" / "checkpoint-4"
    old.parent.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", old)
    state = json.loads((old / "state.json").read_text())
    del state["lr_schedule_unit"]
    state["num_processes"] = 2
    (old / "state.json").write_text(json.dumps(state))
    scheduler = torch.load(old / "scheduler.pt", weights_only=True)
    scheduler["last_epoch"], scheduler["_step_count"] = 8, 9
    torch.save(scheduler, old / "scheduler.pt")
    model = make_model()
    resumed = train(model, compute_loss, NUM_SAMPLES, TrainingConfig(**{**cfg.to_dict(), "resume": str(old)}),
                    tmp_path / "new", progress=False)  # fmt: skip
    assert resumed.losses == full.losses
    for name, tensor in trainable_state(full_model).items():
        assert torch.equal(tensor, trainable_state(model)[name]), name


# --------------------------------------------------------------------------- loss randomness


def _draws(randomness: LossRandomness) -> list[torch.Tensor]:
    """Every kind of draw, in a fixed order, as a loss would make them."""
    return [randomness.randn(3, 2), randomness.randint(1000), randomness.rand(), randomness.randn((4,))]


def test_loss_randomness_does_not_depend_on_how_positions_are_split():
    whole = _draws(LossRandomness(7, 5, 1, [0, 1, 2, 3]))
    first, second = _draws(LossRandomness(7, 5, 1, [0, 1])), _draws(LossRandomness(7, 5, 1, [2, 3]))
    for all_at_once, *halves in zip(whole, first, second, strict=True):
        assert torch.equal(all_at_once, torch.cat(halves))
    uneven = [_draws(LossRandomness(7, 5, 1, positions)) for positions in ([0], [1, 2], [3])]
    for all_at_once, *parts in zip(whole, *uneven, strict=True):
        assert torch.equal(all_at_once, torch.cat(parts))
    shapes = [tuple(t.shape) for t in whole]
    assert shapes == [(4, 3, 2), (4,), (4,), (4, 4)] and whole[1].dtype == torch.long
    assert len(LossRandomness(7, 5, 1, [2, 3])) == 2
    # The shared generator is the same for every split: a batch-level decision agrees everywhere.
    assert torch.equal(torch.rand(3, generator=LossRandomness(7, 5, 1, [0, 1]).shared),
                       torch.rand(3, generator=LossRandomness(7, 5, 1, [2, 3]).shared))  # fmt: skip


def test_loss_randomness_differs_by_seed_step_micro_step_and_position():
    reference = LossRandomness(7, 5, 1, [0, 1]).randn(16)
    assert not torch.equal(reference[0], reference[1])
    for other in (LossRandomness(8, 5, 1, [0, 1]), LossRandomness(7, 6, 1, [0, 1]), LossRandomness(7, 5, 0, [0, 1])):
        assert not torch.equal(other.randn(16), reference)
    fixed = LossRandomness.fixed(7, 3)
    assert (fixed.step, fixed.micro_step, fixed.positions) == (0, 0, [0, 1, 2])
    assert torch.equal(fixed.randn(5), LossRandomness.fixed(7, 3).randn(5))
    empty = LossRandomness(7, 5, 1, [])
    assert len(empty) == 0 and empty.randn(2, 3).shape == (0, 2, 3) and empty.randint(4).shape == (0,)


def test_loop_hands_each_micro_step_its_own_randomness(tmp_path):
    seen = []

    def recording_loss(model, indices, randomness):
        seen.append((randomness.seed, randomness.step, randomness.micro_step, randomness.positions, len(indices)))
        return compute_loss(model, indices, randomness)

    cfg = config(max_steps=2, batch_size=3, gradient_accumulation_steps=2, checkpoint_every=0, seed=4)
    train(make_model(), recording_loss, NUM_SAMPLES, cfg, tmp_path, progress=False)
    assert seen == [(4, 1, 0, [0, 1, 2], 3), (4, 1, 1, [0, 1, 2], 3), (4, 2, 0, [0, 1, 2], 3),
                    (4, 2, 1, [0, 1, 2], 3)]  # fmt: skip


def test_resume_accepts_checkpoints_with_the_former_loss_generator(tmp_path):
    # Checkpoints written before LossRandomness also stored a per-process "loss_generator" state.
    cfg = config(max_steps=8, checkpoints_total_limit=None)
    full_model = make_model()
    full = train(full_model, compute_loss, NUM_SAMPLES, cfg, tmp_path / "full", progress=False)
    old = tmp_path / "old" / "checkpoint-4"
    shutil.copytree(tmp_path / "full" / "checkpoint-4", old)
    rng = torch.load(old / "rng.pt", weights_only=True)
    assert "loss_generator" not in rng
    rng["loss_generator"] = torch.Generator().manual_seed(123).get_state()
    torch.save(rng, old / "rng.pt")
    model = make_model()
    resumed = train(model, compute_loss, NUM_SAMPLES, TrainingConfig(**{**cfg.to_dict(), "resume": str(old)}),
                    tmp_path / "new", progress=False)  # fmt: skip
    assert resumed.resumed_from == str(old) and resumed.losses == full.losses
    for name, tensor in trainable_state(full_model).items():
        assert torch.equal(tensor, trainable_state(model)[name]), name


# --------------------------------------------------------------------------- precision and optimizer


@pytest.mark.parametrize(
    ("requested", "cuda", "native_bf16", "expected"),
    [
        ("auto", False, False, "no"),       # a CPU trains in fp32
        ("auto", True, True, "bf16"),       # A100/H100/RTX 30xx+
        ("auto", True, False, "fp16"),      # T4/V100: bf16 only emulated
        ("bf16", True, False, "fp16"),      # asked for, not native: falls back with a reason
        ("fp16", False, False, "no"),
        ("no", True, True, "no"),
        ("bf16", True, True, "bf16"),
    ],
)
def test_mixed_precision_is_chosen_for_the_device(requested, cuda, native_bf16, expected):
    from machining_t2v.training import choose_mixed_precision

    choice, reason = choose_mixed_precision(requested, cuda=cuda, native_bf16=native_bf16)
    assert choice == expected
    assert reason
    if requested == "bf16" and cuda and not native_bf16:
        assert "native" in reason and "fp16" in reason


def test_unknown_mixed_precision_is_refused():
    from machining_t2v.training import choose_mixed_precision

    with pytest.raises(ValueError, match="fp8"):
        choose_mixed_precision("fp8", cuda=True, native_bf16=True)


def test_auto_precision_on_this_cpu_is_logged_with_its_reason(caplog):
    from machining_t2v.training.finetune import training_config_from_params

    with caplog.at_level("INFO", logger="machining_t2v.training.finetune"):
        config = training_config_from_params({"mixed_precision": "auto", "max_steps": 1}, num_samples=4)
    assert config.mixed_precision == "no"
    assert "Mixed precision: no (no CUDA GPU" in caplog.text


def test_8bit_adamw_on_a_cpu_is_refused_before_training():
    from machining_t2v.training.finetune import training_config_from_params

    with pytest.raises(ValueError, match="adamw8bit.*CUDA"):
        training_config_from_params({"optimizer": "adamw8bit", "max_steps": 1}, num_samples=4)


def test_8bit_adamw_is_refused_by_the_loop_on_a_cpu_too(tmp_path):
    with pytest.raises(ValueError, match="adamw8bit.*CUDA GPU.*cpu"):
        train(make_model(), compute_loss, NUM_SAMPLES, config(optimizer="adamw8bit"), tmp_path, progress=False)


def test_prodigy_finds_its_own_step_size_and_learns(tmp_path):
    model = make_model()
    result = train(model, compute_loss, NUM_SAMPLES, config(max_steps=80, optimizer="prodigy", learning_rate=1.0),
                   tmp_path, progress=False)  # fmt: skip
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    optimizer_state = torch.load(tmp_path / "checkpoint-80" / "optimizer.pt", weights_only=False)
    assert optimizer_state["param_groups"][0]["d"] > 1e-6  # grew from Prodigy's initial d0


def test_the_schedules_are_those_of_diffusers():
    from diffusers.optimization import SchedulerType

    from machining_t2v.training.config import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) == {kind.value for kind in SchedulerType}


@pytest.mark.parametrize("kind", ["constant", "constant_with_warmup", "cosine", "linear"])
def test_the_earlier_schedules_keep_their_learning_rates(kind):
    """The multipliers the hand-written schedule gave, step by step (linear: to the last bit or two)."""
    import math

    from machining_t2v.training.loop import make_lr_scheduler

    warmup, total = 20, 900
    model = make_model()
    scheduler = make_lr_scheduler(torch.optim.AdamW(model.parameters()),
                                  TrainingConfig(max_steps=total, lr_scheduler=kind, lr_warmup_steps=warmup))
    for step in range(total):
        progress = (step - warmup) / (total - warmup)
        expected = {"constant": 1.0,
                    "constant_with_warmup": min(step / warmup, 1.0),
                    "cosine": step / warmup if step < warmup else 0.5 * (1.0 + math.cos(math.pi * progress)),
                    "linear": step / warmup if step < warmup else 1.0 - progress}[kind]
        assert scheduler.lr_lambdas[0](step) == pytest.approx(expected, rel=0, abs=1e-15), step


def test_an_unusable_schedule_setting_is_refused():
    with pytest.raises(ValueError, match="piecewise_constant' needs lr_step_rules"):
        TrainingConfig(lr_scheduler="piecewise_constant")
    with pytest.raises(ValueError, match="lr_num_cycles must be >= 1"):
        TrainingConfig(lr_scheduler="cosine_with_restarts", lr_num_cycles=0)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainingConfig(optimizer="sgd")


def test_a_precision_fall_back_is_a_warning(caplog):
    from machining_t2v.training.finetune import training_config_from_params

    with caplog.at_level("INFO", logger="machining_t2v.training.finetune"):
        config = training_config_from_params({"mixed_precision": "fp16", "max_steps": 1}, num_samples=4)
    assert config.mixed_precision == "no"
    assert [r.levelname for r in caplog.records if "Mixed precision" in r.getMessage()] == ["WARNING"]
