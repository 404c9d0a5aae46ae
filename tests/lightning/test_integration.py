"""SmoothPruning in the Lightning projects people already have: their checkpoints and the ways they
load them, their module patterns (save_hyperparameters, configure_model, tied weights,
weight_norm), the callbacks they combine it with (ModelCheckpoint with a monitor, EarlyStopping,
weight averaging, max_time), fit again, sharded strategies. Every test asserts the sparsity and
the weights the user ends with."""

import copy
import dataclasses
import functools
import io
import os
import subprocess
import sys
import warnings

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    StochasticWeightAveraging,
    WeightAveraging,
)

import smoothprune as sp
from smoothprune import schedules
from smoothprune.lightning import SmoothPruning
from smoothprune.nn.pruned import latent
from smoothprune.pruning import pruned_tensors
from tests.lightning.template_model import Classifier, Net
from tests.lightning.user_model import loader, make_data

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


def _trainer(tmp_path, callbacks, **kw):
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tmp_path, max_epochs=6, deterministic=True, log_every_n_steps=4)
    return L.Trainer(callbacks=callbacks, **(defaults | kw))


def _weights(state):
    return {k: v for k, v in state.items() if k.endswith("weight")}


def _kept(state) -> int:
    return sum(int((w != 0).sum()) for w in _weights(state).values())


def _numel(state) -> int:
    return sum(w.numel() for w in _weights(state).values())


def _layer_kept(state, sparsity) -> int:
    return sum(round((1 - sparsity) * w.numel()) for w in _weights(state).values())


def _fresh_net_state(state):
    """Loads ``state`` strictly into a fresh, never pruned network."""
    net = Net()
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()}, strict=True)
    return net


VAL = loader(n=256, seed=3)


# ------------------------------------------------------------------------------------------------
# checkpoints are plain; the module stays the user's
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # real Lightning training runs
def test_checkpoints_of_a_ramping_run_are_plain_exactly_sparse_and_load_the_standard_ways(tmp_path):
    torch.manual_seed(0)
    model = Classifier(Net())
    every = ModelCheckpoint(dirpath=tmp_path / "every", save_top_k=-1, every_n_epochs=1)  # one file per epoch
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="val_acc", mode="max", save_last=True)
    pruning = SmoothPruning(0.8, ramp=(0.0, 0.5))  # 48 steps: the ramp ends at step 24
    trainer = _trainer(tmp_path, [pruning, best, every])  # "best" below: the first ModelCheckpoint's
    trainer.fit(model, loader(), VAL)
    best_path, last_path = best.best_model_path, best.last_model_path  # (test/validate reload callback states)

    files = sorted((tmp_path / "every").glob("*.ckpt"))
    assert len(files) == 6
    positions = []
    for path in files:
        checkpoint = torch.load(path, weights_only=False)
        state = checkpoint["state_dict"]
        position = checkpoint["smoothprune"]["sparsity"]
        positions.append(position)
        assert set(state) == set(Classifier(Net()).state_dict())  # the user's keys, nothing else
        assert _kept(state) == _layer_kept(state, position)  # hardened at that checkpoint's position
        _fresh_net_state(state)  # strict
    # updates at steps 7, 15, 23 (the ramp ends at 24), then at the target
    assert positions[0] < positions[1] < positions[2] < 0.8 and positions[3:] == [pytest.approx(0.8)] * 3

    # load_from_checkpoint in a fresh process, without smoothprune's callback: the hyperparameters
    # hold the (pickled) network, the state_dict the exactly sparse weights (a module in the
    # hyperparameters needs weights_only=False with torch >= 2.6, pruned or not)
    script = (
        "import sys, torch; sys.path.insert(0, %r); from tests.lightning.template_model import Classifier\n"
        "m = Classifier.load_from_checkpoint(%r, weights_only=False); m.eval()\n"
        "ws = [w for n, w in m.state_dict().items() if n.endswith('weight')]\n"
        "print(sum(int((w != 0).sum()) for w in ws), sum(w.numel() for w in ws))\n"
        "x = torch.randn(8, 24); print(float((m(x) - torch.func.functional_call(m, dict(m.state_dict()), (x,))).abs().max()))"
    ) % (ROOT, str(best_path))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    kept, total, gap = run.stdout.split()
    assert int(kept) == _layer_kept(_weights(model.state_dict()), 0.8) and float(gap) == 0.0

    # after fit the model is hardened and plain: test / validate from the files
    assert not pruned_tensors(model) and type(model.net.layers[0]) is torch.nn.Linear
    tested = trainer.test(model, VAL, ckpt_path="best", verbose=False, weights_only=False)[0]
    best_state = torch.load(best_path, weights_only=False)["state_dict"]
    assert all(torch.equal(v, best_state[k]) for k, v in model.state_dict().items())
    assert _kept(best_state) == _layer_kept(best_state, 0.8) and 0.0 <= tested["test_acc"] <= 1.0
    trainer.validate(model, VAL, ckpt_path="last", verbose=False, weights_only=False)
    last_state = torch.load(last_path, weights_only=False)["state_dict"]
    assert _kept(last_state) == _layer_kept(last_state, 0.8)
    # torch.load + load_state_dict into the user's module
    plain = Classifier(Net())
    plain.load_state_dict(torch.load(files[-1], weights_only=False)["state_dict"], strict=True)


def test_pruned_models_pickle_round_trip_and_deepcopy():
    torch.manual_seed(0)
    model = Classifier(Net())
    sp.prune_(model, 0.75, lam=1e-2)
    x = make_data(16)[0]
    model.train()
    with torch.no_grad():
        smooth = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    clone = copy.deepcopy(model)
    for other in (loaded, clone):
        assert [q for q, *_ in pruned_tensors(other)] == [q for q, *_ in pruned_tensors(model)]
        assert [n for n, _ in other.named_parameters()] == [n for n, _ in model.named_parameters()]
        other.train()
        with torch.no_grad():
            assert torch.equal(other(x), smooth)  # still pruned, the same latents and k
        sp.set_sparsity_(other, 0.9)  # its own specs: the original is unaffected
    assert float(pruned_tensors(model)[0][1].sparsity) == 0.75
    # the hyperparameters hold the same network object: they pickle too
    assert model.hparams.net is model.net and pickle_ok(model.hparams)


def pickle_ok(obj) -> bool:
    import pickle

    return pickle.loads(pickle.dumps(obj)) is not None


# ------------------------------------------------------------------------------------------------
# the sparsity you asked for
# ------------------------------------------------------------------------------------------------
class WorseningValidation(L.Callback):
    """Makes the monitored metric worsen while the ramp runs (as pruning does), so an unheld
    EarlyStopping stops and an unheld ModelCheckpoint keeps an early checkpoint."""

    def __init__(self, pruning):
        self.pruning = pruning

    def on_validation_end(self, trainer, pl_module):  # (before ModelCheckpoint, which Lightning runs last)
        trainer.callback_metrics["val_acc"] = torch.tensor(1.0 - self.pruning.current_sparsity)


@pytest.mark.slow  # real Lightning training runs
def test_monitored_checkpoint_keeps_only_checkpoints_at_the_target(tmp_path):
    torch.manual_seed(0)
    model = Classifier(Net())
    pruning = SmoothPruning(0.9, ramp=(0.0, 0.5))
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max", save_last=True)
    _trainer(tmp_path, [pruning, WorseningValidation(pruning), best]).fit(model, loader(), VAL)
    for path in (best.best_model_path, best.last_model_path):
        checkpoint = torch.load(path, weights_only=False)
        assert checkpoint["smoothprune"]["sparsity"] == pytest.approx(0.9)
        assert _kept(checkpoint["state_dict"]) == _layer_kept(checkpoint["state_dict"], 0.9)

    # best_at_target=False: the ramp's first checkpoint (the best val_acc) wins, as Lightning alone does
    torch.manual_seed(0)
    model = Classifier(Net())
    pruning = SmoothPruning(0.9, ramp=(0.0, 0.5), best_at_target=False)
    best = ModelCheckpoint(dirpath=tmp_path / "off", monitor="val_acc", mode="max", save_last=True)
    _trainer(tmp_path, [pruning, WorseningValidation(pruning), best]).fit(model, loader(), VAL)
    assert torch.load(best.best_model_path, weights_only=False)["smoothprune"]["sparsity"] < 0.9


@pytest.mark.slow  # real Lightning training runs
def test_early_stopping_waits_for_the_target_and_counts_patience_from_there(tmp_path):
    torch.manual_seed(0)
    model = Classifier(Net())
    pruning = SmoothPruning(0.9, ramp=(0.0, 0.5))  # 8 steps a epoch, 10 epochs: the target at step 40
    stop = EarlyStopping(monitor="val_acc", mode="max", patience=2)
    trainer = _trainer(tmp_path, [pruning, WorseningValidation(pruning), stop], max_epochs=10, enable_checkpointing=False)
    trainer.fit(model, loader(), VAL)
    # at the target from epoch 5 on (step 40): constant val_acc, so patience 2 stops after epoch 7
    assert trainer.current_epoch == 8 and stop.stopped_epoch == 7
    assert sp.sparsity_report(model).total == pytest.approx(0.9, abs=1e-3)

    torch.manual_seed(0)
    model = Classifier(Net())
    pruning = SmoothPruning(0.9, ramp=(0.0, 0.5), hold_early_stopping=False, finish_at_target=False)
    stop = EarlyStopping(monitor="val_acc", mode="max", patience=2)
    trainer = _trainer(tmp_path, [pruning, WorseningValidation(pruning), stop], max_epochs=10, enable_checkpointing=False)
    trainer.fit(model, loader(), VAL)
    assert trainer.current_epoch < 5 and sp.sparsity_report(model).total < 0.9  # off: stops in the ramp


class Slow(L.Callback):
    def on_train_batch_end(self, *args):
        import time

        time.sleep(0.2)


@pytest.mark.parametrize("stop", ["max_steps", "max_time"])
def test_a_run_that_stops_early_ends_hardened_at_the_target_with_a_warning(tmp_path, stop):
    torch.manual_seed(0)
    model = Classifier(Net())
    pruning = SmoothPruning(schedules.Cubic(init=0.0, final=0.9, begin=0, end=200), export_path=tmp_path / "m.st")
    callbacks = [pruning]
    if stop == "max_steps":
        kw = dict(max_steps=20)
    else:  # a Timer that runs out after a few steps
        kw = dict(max_time={"seconds": 1})
        callbacks.append(Slow())
    with pytest.warns(UserWarning, match=r"training stopped at step \d+ with the sparsity schedule at 0\.\d+ of its "
                                         r"target 0\.9000 .* pruned to the target 0\.9000"):
        _trainer(tmp_path, callbacks, enable_checkpointing=False, **kw).fit(model, loader())
    state = model.state_dict()
    assert _kept(state) == _layer_kept(state, 0.9) and not pruned_tensors(model)
    exported = sp.load_sparse(tmp_path / "m.st")
    assert all(torch.equal(exported[k], v) for k, v in state.items())


class Interrupt(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 12:
            raise KeyboardInterrupt


def test_an_interrupted_run_ends_hardened_at_the_target_and_exported(tmp_path):
    torch.manual_seed(0)
    model = Classifier(Net())
    pruning = SmoothPruning(0.9, ramp=(0.0, 0.5), export_path=tmp_path / "m.st")
    with pytest.warns(UserWarning, match="training was interrupted at step 12"), pytest.raises(SystemExit):
        _trainer(tmp_path, [pruning, Interrupt()], enable_checkpointing=False).fit(model, loader())
    state = model.state_dict()
    assert _kept(state) == _layer_kept(state, 0.9) and not pruned_tensors(model)
    assert all(torch.equal(v, state[k]) for k, v in sp.load_sparse(tmp_path / "m.st").items())


@pytest.mark.slow  # real Lightning training runs
def test_a_float_sparsity_ramps_over_half_of_training_by_default(tmp_path):
    seen = {}

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen[trainer.global_step - 1] = float(pruned_tensors(pl_module)[0][1].sparsity)

    torch.manual_seed(0)
    model = Classifier(Net())
    _trainer(tmp_path, [SmoothPruning(0.9), Probe()], max_epochs=5, enable_checkpointing=False).fit(model, loader())
    ramp = schedules.Cubic(init=0.0, final=0.9, begin=0, end=20)  # 40 steps in all
    assert all(seen[s] == pytest.approx(ramp(s)) for s in seen)
    assert seen[0] == 0.0 and seen[19] < 0.9 and seen[20] == pytest.approx(0.9)

    with pytest.raises(ValueError, match="a float sparsity ramps over ramp=\\(0.0, 0.5\\) of training, but this "
                                         "Trainer's length in optimizer steps"):
        _trainer(tmp_path, [SmoothPruning(0.9)], max_epochs=-1, max_time={"seconds": 5}).fit(Classifier(Net()), loader())
    # ramp=None: the target from the first step
    seen.clear()
    _trainer(tmp_path, [SmoothPruning(0.9, ramp=None), Probe()], max_epochs=1, enable_checkpointing=False).fit(
        Classifier(Net()), loader())
    assert seen[0] == pytest.approx(0.9)


@pytest.mark.slow  # real Lightning training runs
def test_fit_again_keeps_pruning_at_the_target(tmp_path):
    torch.manual_seed(0)
    model = Classifier(Net())
    pruning = SmoothPruning(0.9, ramp=(0.0, 0.5))
    trainer = _trainer(tmp_path, [pruning], max_epochs=3, enable_checkpointing=False)
    trainer.fit(model, loader())
    first = {k: v.clone() for k, v in model.state_dict().items()}
    kept_during = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            kept_during.append(sp.sparsity_report(pl_module).hard_total)

    again = _trainer(tmp_path, [pruning, Probe()], max_epochs=2, enable_checkpointing=False)
    again.fit(model, loader())
    assert kept_during and all(s == pytest.approx(0.9, abs=1e-3) for s in kept_during)
    state = model.state_dict()
    assert _kept(state) == _layer_kept(state, 0.9)
    assert any(not torch.equal(state[k], first[k]) for k in first)  # it did train
    # the same Trainer, more epochs
    trainer.fit_loop.max_epochs = 5
    trainer.fit(model, loader())
    assert _kept(model.state_dict()) == _layer_kept(state, 0.9)


# ------------------------------------------------------------------------------------------------
# module patterns
# ------------------------------------------------------------------------------------------------
class LazyClassifier(Classifier):
    """Layers created in configure_model (Lightning's hook for large models)."""

    def __init__(self):
        L.LightningModule.__init__(self)
        self.net = None

    def configure_model(self):
        if self.net is None:
            self.net = Net()


def test_layers_created_in_configure_model_are_pruned(tmp_path):
    torch.manual_seed(0)
    model = LazyClassifier()
    model.hparams.lr = 0.05
    _trainer(tmp_path, [SmoothPruning(0.8, ramp=None)], max_epochs=2, enable_checkpointing=False).fit(model, loader())
    state = model.state_dict()
    assert len(_weights(state)) == 3 and _kept(state) == _layer_kept(state, 0.8)


class TiedLM(L.LightningModule):
    """An embedding shared with the output projection, as language models do."""

    def __init__(self, vocab=40, dim=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens))))

    def training_step(self, batch, batch_idx):
        tokens, = batch
        return torch.nn.functional.cross_entropy(self(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _tokens():
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 40, (256, 1), generator=g)
    return (start + torch.arange(9)) % 40  # next token = this one + 1


@pytest.mark.slow  # real Lightning training runs
def test_tied_weights_are_pruned_once_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(_tokens()), batch_size=32)
    losses = {}

    class Probe(L.Callback):
        def on_train_end(self, trainer, pl_module):
            pl_module.eval()
            with torch.no_grad():
                losses["before"] = float(pl_module.training_step((_tokens(),), 0))
            # one latent, one mask: both modules read the same pruned tensor
            assert pl_module.embed.weight.data_ptr() != pl_module.embed._parameters["weight"].data_ptr()
            assert torch.equal(pl_module.embed.weight, pl_module.head.weight)

    pruning = SmoothPruning(0.5, ramp=None, lam=1e-2)
    _trainer(tmp_path, [Probe(), pruning], max_epochs=4, enable_checkpointing=False).fit(model, data)
    assert [q for q, *_ in pruned_tensors(model)] == []
    assert model.head.weight is model.embed.weight  # still tied
    w = model.embed.weight
    assert int((w != 0).sum()) == w.numel() // 2
    with torch.no_grad():
        after = float(model.eval().training_step((_tokens(),), 0))
    assert after == pytest.approx(losses["before"], rel=1e-6)  # hardening changed nothing the model used
    # a tied tensor cannot be half excluded
    with pytest.raises(ValueError, match="'head.weight' and 'embed.weight' are one tied tensor"):
        sp.prune_(TiedLM(), 0.5, targets=["head.weight"], exclude=["embed.weight"])


@pytest.mark.slow  # real Lightning training runs
def test_weight_norm_layers_are_pruned_on_their_effective_weight(tmp_path):
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    net = Net()
    weight_norm(net.layers[2])
    model = Classifier(net)
    report = sp.sparsity_report(model)  # a model with no pruning yet
    assert [t.name for t in report.tensors] == ["net.layers.0.weight", "net.layers.2.weight", "net.layers.4.weight"]
    # save_sparse keeps weight_norm's tensors (never drops one silently)
    sp.save_sparse(model, tmp_path / "dense.st")
    assert set(sp.load_sparse(tmp_path / "dense.st")) == set(model.state_dict())

    pruning = SmoothPruning(0.75, ramp=None, export_path=tmp_path / "m.st")
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, [pruning, ckpt], max_epochs=2).fit(model, loader())
    w = model.net.layers[2].weight  # effective weight, after hardening through right_inverse
    assert int((w != 0).sum()) == round(0.25 * w.numel())
    fresh = Net()
    weight_norm(fresh.layers[2])
    fresh.load_state_dict({k.removeprefix("net."): v for k, v in sp.load_sparse(tmp_path / "m.st").items()}, strict=True)
    assert torch.equal(fresh.layers[2].weight != 0, w != 0)
    state = torch.load(ckpt.last_model_path, weights_only=False)["state_dict"]
    fresh.load_state_dict({k.removeprefix("net."): v for k, v in state.items()}, strict=True)
    assert int((fresh.layers[2].weight != 0).sum()) == round(0.25 * w.numel())


# ------------------------------------------------------------------------------------------------
# weight averaging
# ------------------------------------------------------------------------------------------------
class CaptureAverage(L.Callback):
    """Records the averaged latents before weight averaging copies them into the model."""

    def __init__(self, averaging):
        self.averaging = averaging
        self.latents = None

    def on_train_end(self, trainer, pl_module):
        average = self.averaging._average_model
        module = average.module if hasattr(average, "module") else average
        self.latents = {n: p.detach().clone() for n, p in module.named_parameters()}


AVERAGING = {
    "swa": lambda: StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2),
    "weight_averaging": lambda: WeightAveraging(),
    "ema": lambda: EMAWeightAveraging(decay=0.9),
}


@pytest.mark.slow  # real Lightning training runs
@pytest.mark.parametrize("order", ["pruning_first", "averaging_first"])
@pytest.mark.parametrize("kind", list(AVERAGING))
def test_weight_averaging_in_either_order_ends_with_the_averaged_model_pruned(tmp_path, kind, order):
    torch.manual_seed(0)
    model = Classifier(Net())
    averaging = AVERAGING[kind]()
    capture = CaptureAverage(averaging)
    pruning = SmoothPruning(0.8, ramp=(0.0, 0.5), export_path=tmp_path / "m.st")
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    callbacks = [capture] + ([pruning, averaging] if order == "pruning_first" else [averaging, pruning]) + [ckpt]
    _trainer(tmp_path, callbacks, max_epochs=5).fit(model, loader(), VAL)
    state = model.state_dict()
    assert _kept(state) == _layer_kept(state, 0.8) and not pruned_tensors(model)
    # the final weights are the hardened averaged latents
    for name, w in _weights(state).items():
        average = capture.latents[name]
        assert not torch.equal(average, w)
        assert torch.equal(w, sp.hard_topk_mag(average.reshape(-1), round(0.2 * w.numel())).reshape(w.shape)), name
    assert all(torch.equal(v, state[k]) for k, v in sp.load_sparse(tmp_path / "m.st").items())
    # every checkpoint's state_dict (the averaged one for WeightAveraging) is plain and exactly sparse
    for path in tmp_path.glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=False)
        position = checkpoint["smoothprune"]["sparsity"]
        assert _kept(checkpoint["state_dict"]) == _layer_kept(checkpoint["state_dict"], position)
        Classifier(Net()).load_state_dict(checkpoint["state_dict"], strict=True)


# ------------------------------------------------------------------------------------------------
# export of real checkpoints, old checkpoints, sharded strategies
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Settings:
    width: int = 32


@pytest.mark.slow  # real Lightning training runs
def test_export_reads_checkpoints_whose_hyperparameters_hold_code_without_running_it(tmp_path):
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    config = OmegaConf.create({"optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True}})
    model = Classifier(Net(), extras=[functools.partial(torch.optim.AdamW, lr=1e-3), torch.optim.SGD, Settings(),
                                      config])
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, [SmoothPruning(0.8, ramp=None), ckpt], max_epochs=1).fit(model, loader())
    out = tmp_path / "m.st"
    run = subprocess.run([sys.executable, "-m", "smoothprune", "export", ckpt.last_model_path, "-o", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    state = model.state_dict()
    sparsity = 1 - _kept(state) / _numel(state)  # (each layer keeps round(0.2 * numel))
    assert f"pruned tensors (3): sparsity {sparsity:.4f}, target 0.8000\n" in run.stdout
    for name in ("functools.partial", "torch.optim.sgd.SGD", "omegaconf.dictconfig.DictConfig",
                 "tests.lightning.template_model.Net", "tests.lightning.test_integration.Settings"):
        assert name in run.stdout
    exported = sp.load_sparse(out)
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # real Lightning training runs
def test_checkpoints_of_smoothprune_0_1_still_resume_and_export(tmp_path):
    """A checkpoint in the old layout (parametrized keys, version-1 callback state) resumes to
    the same weights as an uninterrupted run, and exports."""
    from tests.legacy import legacy_model

    class Stop(L.Callback):  # an interrupted run: the same Trainer, stopped after 2 epochs
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = trainer.current_epoch >= 1

    def fit(max_epochs, ckpt_path=None, save=False):
        torch.manual_seed(0)
        model = Classifier(Net())
        pruning = SmoothPruning(schedules.Cubic(init=0.0, final=0.8, begin=0, end=30), scope="global",
                                make_pruning_permanent=False, finish_at_target=False)
        callbacks = [pruning] + ([ModelCheckpoint(dirpath=tmp_path, save_last=True), Stop()] if save else [])
        torch.manual_seed(1234)
        _trainer(tmp_path, callbacks, max_epochs=max_epochs, enable_checkpointing=save).fit(
            model, loader(), ckpt_path=ckpt_path, weights_only=False)
        return model

    full = fit(5)
    half = fit(5, save=True)  # stopped after 2 epochs
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    # rewrite it as smoothprune 0.1 did: parametrized keys holding the latents, no "smoothprune" entry
    old = legacy_model(half)
    checkpoint["state_dict"] = old.state_dict()
    del checkpoint["smoothprune"]
    for key, state in checkpoint["callbacks"].items():
        if key.startswith("SmoothPruning"):
            checkpoint["callbacks"][key] = {"version": 1} | {k: state[k] for k in (
                "sparsity_schedule", "lam_schedule", "current_sparsity", "current_lam")}
    assert "net.layers.0.parametrizations.weight.original" in checkpoint["state_dict"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    resumed = fit(5, ckpt_path=tmp_path / "old.ckpt")
    a, b = dict(full.named_parameters()), dict(resumed.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = subprocess.run([sys.executable, "-m", "smoothprune", "export", str(tmp_path / "old.ckpt"), "-o",
                          str(tmp_path / "old.st")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0 and "its target is not recorded" in run.stdout, run.stderr
    Classifier(Net()).load_state_dict(sp.load_sparse(tmp_path / "old.st"), strict=True)

