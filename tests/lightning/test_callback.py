"""SmoothPruning with real Lightning Trainers (both flavours): training, logging, hardening,
export, exact resume, argument checks."""

import lightning.pytorch
import pytest
import pytorch_lightning
import torch

import smoothprune as sp
from smoothprune import schedules
from smoothprune.lightning import SmoothPruning
from smoothprune.pruning import pruned_tensors
from tests.lightning.user_model import accuracy, loader, make_module_class

FLAVOURS = {"lightning.pytorch": lightning.pytorch, "pytorch_lightning": pytorch_lightning}


def _trainer(L, callbacks, **kw):
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=4,
                    deterministic=True)
    return L.Trainer(callbacks=callbacks, **(defaults | kw))


@pytest.mark.slow  # real Lightning training runs
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("scope", ["layer", "global", "row", "2:4", "block:4x4"])
def test_one_line_adds_pruning_to_an_existing_training(flavour, scope, tmp_path):
    L = FLAVOURS[flavour]
    torch.manual_seed(0)
    model = make_module_class(L)()
    dense_acc = accuracy(model)
    final = 0.5 if scope == "2:4" else 0.8
    callback = SmoothPruning(schedules.Cubic(init=0.0, final=final, begin=0, end=48, frequency=2), lam=1e-2,
                             scope=scope, export_path=tmp_path / "model.safetensors")
    trainer = _trainer(L, [callback], max_epochs=12)  # <- the one line: callbacks=[SmoothPruning(...)]
    trainer.fit(model, loader())
    assert not pruned_tensors(model)  # hardened at the end
    weights = [model.encoder[0].weight, model.encoder[2].weight, model.head.weight]
    kept = sum(int((w != 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    if scope in ("layer", "global"):
        assert kept == sum(round((1 - final) * w.numel()) for w in weights) if scope == "layer" else kept == round(0.2 * total)
    elif scope == "row":
        assert all(int((r != 0).sum()) == round(0.2 * r.numel()) for w in weights for r in w)
    elif scope == "block:4x4":  # whole 4×4 tiles, 20% of each tensor's
        for w in weights:
            tiles = w.reshape(w.shape[0] // 4, 4, w.shape[1] // 4, 4).permute(0, 2, 1, 3).reshape(-1, 16)
            nonzero = (tiles != 0).any(1)
            assert int(nonzero.sum()) == round(0.2 * tiles.shape[0])
            assert bool((tiles[nonzero] != 0).all())  # kept tiles are whole
    else:
        assert all(torch.all((w.reshape(-1, 4) != 0).sum(1) == 2) for w in weights)
    # the pruned model still learned the task (accuracy measured after hardening)
    assert accuracy(model) > max(0.75, dense_acc + 0.4)  # chance is 0.25, dense training reaches ~0.9
    # export: a compact file that loads strictly into a fresh, un-parametrized model
    fresh = make_module_class(L)()
    fresh.load_state_dict(sp.load_sparse(tmp_path / "model.safetensors"), strict=True)
    hardened = model.state_dict()
    assert all(torch.equal(v, hardened[k]) for k, v in fresh.state_dict().items())
    # logs
    metrics = trainer.callback_metrics
    assert float(metrics["pruning/target_sparsity"]) == pytest.approx(final)
    assert float(metrics["pruning/lam"]) == pytest.approx(1e-2)
    assert float(metrics["pruning/hardened_sparsity"]) == pytest.approx(final, abs=0.01)
    assert "pruning/smooth_hard_distance" in metrics and "pruning/sparsity/head.weight" in metrics
    # evaluating afterwards with the same trainer leaves the hardened model alone
    predictions = torch.cat(trainer.predict(model, loader()))
    assert predictions.shape == (512,)
    assert not pruned_tensors(model)


@pytest.mark.slow  # real Lightning training runs
def test_schedules_drive_the_buffers_step_by_step():
    L = lightning.pytorch
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            p = pruned_tensors(pl_module)[0][1]
            seen.append((trainer.global_step - 1, float(p.sparsity), float(p.lam)))

    torch.manual_seed(0)
    model = make_module_class(L)()
    sparsity = schedules.Linear(start=0.0, final=0.6, begin=2, end=8)
    lam = schedules.Exponential(start=1e-1, final=1e-3, begin=0, end=8)
    trainer = _trainer(L, [SmoothPruning(sparsity, lam=lam, frequency=2, make_pruning_permanent=False), Probe()], max_steps=12)
    trainer.fit(model, loader())
    for step, s, lam_value in seen:
        applied = step - step % 2  # updates every 2 steps
        assert s == pytest.approx(sparsity(applied)) and lam_value == pytest.approx(lam(applied)), step
    assert pruned_tensors(model)  # make_pruning_permanent=False keeps the parametrizations


@pytest.mark.slow  # real Lightning training runs
def test_finetune_trains_the_hard_weights_for_the_last_part_of_training():
    L = lightning.pytorch
    seen = []

    class Probe(L.Callback):  # listed after SmoothPruning: sees each step's weights before the forward
        def on_train_batch_start(self, trainer, pl_module, *args):
            layer = pl_module.encoder[2]
            spec = pruned_tensors(pl_module)[1][1]
            latent = layer._parameters["weight"]
            seen.append((trainer.global_step, torch.equal(layer.weight, spec.hard(latent)), float(spec.sparsity)))

        def on_after_backward(self, trainer, pl_module):
            if trainer.global_step >= 24:  # hard phase: no gradient reaches the pruned latents
                layer = pl_module.encoder[2]
                latent = layer._parameters["weight"]
                pruned = pruned_tensors(pl_module)[1][1].hard(latent) == 0
                assert torch.all(latent.grad[pruned] == 0)
                assert torch.any(latent.grad[~pruned] != 0)

    torch.manual_seed(0)
    model = make_module_class(L)()
    cb = SmoothPruning(0.8, lam=0.5, finetune=0.25)  # 32 steps: ramp over 0..16, hard from step 24
    trainer = _trainer(L, [cb, Probe()], max_epochs=4)
    trainer.fit(model, loader())
    assert [step for step, hard, s in seen if hard and s > 0] == list(range(24, 32))  # (at s = 0 both keep all)
    assert all(s == pytest.approx(0.8) for step, _, s in seen if step >= 16)
    # what the last steps trained is what the user gets
    assert all(int((w != 0).sum()) == round(0.2 * w.numel())
               for w in (model.encoder[0].weight, model.encoder[2].weight, model.head.weight))


@pytest.mark.slow  # real Lightning training runs
def test_a_second_fit_of_a_model_left_pruned_keeps_the_target_and_starts_smooth():
    L = lightning.pytorch
    torch.manual_seed(0)
    model = make_module_class(L)()
    cb = SmoothPruning(0.8, make_pruning_permanent=False)
    _trainer(L, [cb], max_epochs=2).fit(model, loader())
    assert cb.finetuning and all(spec.train_hard for _, spec, _, _ in pruned_tensors(model))
    seen = []  # (hard training, sparsity) at each step of a second fit

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            specs = [spec for _, spec, _, _ in pruned_tensors(pl_module)]
            seen.append((any(spec.train_hard for spec in specs), min(float(spec.sparsity) for spec in specs)))

    _trainer(L, [cb, Probe()], max_epochs=2).fit(model, loader())
    assert seen[0][0] is False and seen[-1][0] is True
    assert all(s == pytest.approx(0.8) for _, s in seen)  # the pruned model keeps its target: no new ramp


@pytest.mark.slow  # real Lightning training runs
def test_finetune_off_and_for_gradual_magnitude_pruning():
    L = lightning.pytorch
    for kwargs in (dict(finetune=0.0), dict(finetune=None), dict(method="hard")):
        torch.manual_seed(0)
        model = make_module_class(L)()
        cb = SmoothPruning(0.8, make_pruning_permanent=False, **kwargs)
        _trainer(L, [cb], max_epochs=2).fit(model, loader())
        assert not cb.finetuning and not any(spec.train_hard for _, spec, _, _ in pruned_tensors(model)), kwargs


@pytest.mark.slow  # real Lightning training runs
def test_epoch_interval():
    L = lightning.pytorch
    torch.manual_seed(0)
    model = make_module_class(L)()
    cb = SmoothPruning(schedules.Linear(0.0, 0.9, 0, 2), interval="epoch", make_pruning_permanent=False,
                       finish_at_target=False)
    trainer = _trainer(L, [cb], max_epochs=2)
    with pytest.warns(UserWarning, match=r"reaches its target 0.9 at epoch 2, after the last epoch \(1\)"):
        trainer.fit(model, loader())
    assert float(pruned_tensors(model)[0][1].sparsity) == pytest.approx(0.45)  # epoch 1 of 0..2


def _fit(L, tmp_path, max_epochs, seed, ckpt_path=None, save=False, stop_after=None, scope="global"):
    torch.manual_seed(seed)
    model = make_module_class(L)()
    cb = SmoothPruning(schedules.Cubic(init=0.0, final=0.85, begin=0, end=30, frequency=3),
                       lam=schedules.Exponential(start=1e-2, final=1e-4, begin=0, end=30), p=4 / 3,
                       scope=scope, make_pruning_permanent=False)
    callbacks = [cb]
    if save:
        callbacks.append(L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True))
    if stop_after is not None:  # an interrupted run: the same Trainer, stopped after `stop_after` epochs
        class Stop(L.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                trainer.should_stop = trainer.current_epoch + 1 >= stop_after

        callbacks.append(Stop())
    trainer = _trainer(L, callbacks, max_epochs=max_epochs, enable_checkpointing=save)
    torch.manual_seed(1234)
    trainer.fit(model, loader(), ckpt_path=ckpt_path)
    return model, cb


@pytest.mark.slow  # real Lightning training runs
@pytest.mark.parametrize("scope", ["global", "block:4x4"])
def test_resume_mid_schedule_reaches_the_same_weights(tmp_path, scope):
    L = lightning.pytorch
    full, cb_full = _fit(L, tmp_path / "a", max_epochs=5, seed=0, scope=scope)
    _, cb_half = _fit(L, tmp_path / "b", max_epochs=5, seed=0, save=True, stop_after=2, scope=scope)  # step 16 of 30
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    assert 0 < saved["smoothprune"]["sparsity"] < 0.85  # mid-schedule (the run itself then ended at the target)
    resumed, cb_resumed = _fit(L, tmp_path / "c", max_epochs=5, seed=99, ckpt_path=tmp_path / "b" / "last.ckpt",
                               scope=scope)
    assert cb_resumed.state_dict() == cb_full.state_dict()
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    a, b = dict(full.named_parameters()), dict(resumed.named_parameters())  # the latents too
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sp.harden_(full)
    sp.harden_(resumed)
    b = resumed.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in full.state_dict().items())


def test_callback_state_dict_round_trip():
    cb = SmoothPruning(schedules.Linear(0.0, 0.5, 0, 10))
    cb._update(torch.nn.Linear(2, 2), 4)
    other = SmoothPruning(schedules.Linear(0.0, 0.5, 0, 10))
    other.load_state_dict(cb.state_dict())
    assert other.state_dict() == cb.state_dict() and other.current_sparsity == pytest.approx(0.2)
    with pytest.raises(ValueError, match="expected a state_dict of version 1"):
        other.load_state_dict({"version": 7})


BAD = [
    (dict(sparsity=1.5), "SmoothPruning: expected sparsity to be a float in [0, 1], got sparsity=1.5"),
    (dict(sparsity={"name": "linear", "start": 0.0, "final": 2.0, "end": 5}), "expected sparsity values in [0, 1]"),
    (dict(sparsity={"name": "wavy"}), "SmoothPruning: bad sparsity schedule: schedules.build: expected name in"),
    (dict(lam=0.0), "SmoothPruning: expected lam to be a finite float > 0, got lam=0.0"),
    (dict(p=0.5), "SmoothPruning: expected p to be a finite float > 1, got p=0.5"),
    (dict(method="prune"), "SmoothPruning: expected method in ('smooth', 'hard', 'ste'), got method='prune'"),
    (dict(scope="tile"), "SmoothPruning: expected scope in ('layer', 'global', 'row', 'nm'), an 'N:M' string with 0 < N <= M or a 'block:RxC' string"),
    (dict(scope="2:4", sparsity=0.9), "SmoothPruning: expected the sparsity schedule to end at 0.5 for scope '2:4'"),
    (dict(interval="batch"), "SmoothPruning: expected interval in ('step', 'epoch'), got interval='batch'"),
    (dict(frequency=0), "SmoothPruning: expected frequency to be an int >= 1, got frequency=0"),
    (dict(make_pruning_permanent="yes"), "SmoothPruning: expected make_pruning_permanent to be a bool, got make_pruning_permanent='yes'"),
    (dict(export_path=3), "SmoothPruning: expected export_path to be a path or None, got export_path=3"),
    (dict(verbose=5), "SmoothPruning: expected verbose in (0, 1, 2), got verbose=5"),
    (dict(algorithm="dykstra", p=3.0), "SmoothPruning: algorithm='dykstra' supports p=2 and p=4/3 only, got p=3.0"),
    (dict(parameters_to_prune=[]), "SmoothPruning: expected parameters_to_prune to be None or non-empty"),
    (dict(finetune=1.0), "SmoothPruning: expected finetune to be None or a fraction of training in [0, 1), got finetune=1.0"),
    (dict(finetune=0.6), "SmoothPruning: the hard fine-tuning (the last finetune=0.6 of training) would start before "
                         "the sparsity ramp (0.0, 0.5) ends"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_fail_in_init(kwargs, message):
    kwargs = dict(kwargs)
    sparsity = kwargs.pop("sparsity", 0.5)
    with pytest.raises(ValueError) as info:
        SmoothPruning(sparsity, **kwargs)
    assert message in str(info.value)


def test_export_path_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected export_path to be a file path, not a directory, got export_path="):
        SmoothPruning(0.5, export_path=tmp_path)


def test_bad_targets_fail_at_setup_with_the_name():
    L = lightning.pytorch
    model = make_module_class(L)()
    trainer = _trainer(L, [SmoothPruning(0.5, parameters_to_prune=["decoder.weight"])], max_steps=1)
    with pytest.raises(ValueError, match="expected a tensor name of the model in targets, got 'decoder.weight'"):
        trainer.fit(model, loader())


def test_verbose_reports(caplog):
    import logging

    L = lightning.pytorch
    torch.manual_seed(0)
    model = make_module_class(L)()
    with caplog.at_level(logging.INFO, logger="smoothprune.lightning"):
        _trainer(L, [SmoothPruning(0.5, verbose=2)], max_epochs=1).fit(model, loader())
    text = caplog.text
    assert "pruning 3 tensors" in text and "hardened sparsity" in text and "head.weight" in text and "total" in text


def test_fsdp1_is_refused_at_setup_naming_model_parallel():
    # Lightning's FSDP needs a GPU, so no real FSDP Trainer can run here: the callback gets a
    # real FSDPStrategy object on a minimal stand-in for the trainer.
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    cb = SmoothPruning(0.5)
    with pytest.raises(RuntimeError, match="SmoothPruning: the FSDPStrategy strategy is not supported .* use "
                                           r"ModelParallelStrategy \(FSDP2: fully_shard in your configure_model\)"):
        cb.setup(SimpleNamespace(strategy=FSDPStrategy(), is_global_zero=True), torch.nn.Linear(4, 4), "fit")


@pytest.mark.slow  # real Lightning training runs
def test_cli_exports_a_real_lightning_checkpoint_and_states_its_sparsity(tmp_path):
    import subprocess
    import sys

    L = lightning.pytorch
    _fit(L, tmp_path, max_epochs=2, seed=0, save=True)  # last.ckpt is mid-schedule
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    out = tmp_path / "model.safetensors"
    run = subprocess.run([sys.executable, "-m", "smoothprune", "export", str(tmp_path / "last.ckpt"), "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    position = checkpoint["smoothprune"]["sparsity"]
    assert f"target 0.8500 (written before the schedule reached it: schedule at {position:.4f})" in run.stdout
    fresh = make_module_class(L)()
    fresh.load_state_dict(sp.load_sparse(out), strict=True)
    assert all(torch.equal(v, checkpoint["state_dict"][k]) for k, v in fresh.state_dict().items())
    weights = [v for k, v in fresh.state_dict().items() if k.endswith("weight")]
    kept = sum(int((w != 0).sum()) for w in weights)
    assert kept == round((1 - position) * sum(w.numel() for w in weights))  # global scope, exactly
    run = subprocess.run([sys.executable, "-m", "smoothprune", "inspect", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "target 0.8500 (written before the schedule reached it" in run.stdout
