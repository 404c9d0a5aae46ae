"""One validation layer (smoothprune.validation): every public entry point refuses a bad argument
with a ValueError naming the function, the argument and the value received, before any work."""

import ast
import doctest
import math
import pathlib
import re

import pytest
import torch

import smoothprune as sp
import smoothprune.validation
from smoothprune import schedules
from smoothprune.nn import ExpertChoiceRouter, SoftTopKLoss, SparseMoE
from smoothprune.validation import __all__ as PUBLIC

lightning = pytest.importorskip("lightning")
from smoothprune.lightning import SmoothPruning  # noqa: E402

PACKAGE = pathlib.Path(sp.__file__).parent


def named(fn: str, arg: str, value: str) -> str:
    """The convention: "<fn>: expected <arg> <requirement>, got <arg>=<value>"."""
    return rf"^{re.escape(fn)}: expected {re.escape(arg)} .*, got {re.escape(arg)}={re.escape(value)}$"


def x5():
    return torch.randn(5)


def logits_and_target():
    return torch.randn(4, 10), torch.randint(0, 10, (4,))


def linear():
    return torch.nn.Sequential(torch.nn.Linear(8, 4))


NAN = float("nan")

CASES = [
    # -- the operators ------------------------------------------------------------------------
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, p=True), named("soft_topk_mask", "p", "True"), id="mask-p-bool"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, p=1.0), named("soft_topk_mask", "p", "1.0"), id="mask-p-1"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, p=math.inf), named("soft_topk_mask", "p", "inf"), id="mask-p-inf"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, lam=True), named("soft_topk_mask", "lam", "True"), id="mask-lam-bool"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, lam=-1.0), named("soft_topk_mask", "lam", "-1.0"), id="mask-lam-negative"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, lam=NAN), named("soft_topk_mask", "lam", "nan"), id="mask-lam-nan"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, lam=torch.tensor(NAN)), named("soft_topk_mask", "lam", "nan"),
                 id="mask-lam-nan-tensor"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, lam=torch.tensor(1)),
                 named("soft_topk_mask", "lam", "<torch.int64 tensor of shape ()>"), id="mask-lam-int-tensor"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), True), named("soft_topk_mask", "k", "True"), id="mask-k-bool"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2.5), named("soft_topk_mask", "k", "2.5"), id="mask-k-float"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 7), r"^soft_topk_mask: expected 0 <= k <= 5 along dim -1, got k=7$",
                 id="mask-k-too-large"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, dim=True), named("soft_topk_mask", "dim", "True"), id="mask-dim-bool"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, dim=1), named("soft_topk_mask", "dim", "1"), id="mask-dim-out-of-range"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, algorithm="sinkhorn"), named("soft_topk_mask", "algorithm", "'sinkhorn'"),
                 id="mask-algorithm"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, algorithm="dykstra", num_iter=0),
                 named("soft_topk_mask", "num_iter", "0"), id="mask-num-iter-0"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, algorithm="dykstra", num_iter=True),
                 named("soft_topk_mask", "num_iter", "True"), id="mask-num-iter-bool"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, p=1.5, algorithm="dykstra"),
                 r"^soft_topk_mask: algorithm='dykstra' supports p=2 and p=4/3 only, got p=1\.5$", id="mask-dykstra-p"),
    pytest.param(lambda: sp.soft_topk_mask(x5(), 2, algorithm="pav", num_iter=3),
                 r"^soft_topk_mask: num_iter applies to .*, got num_iter=3 with algorithm='pav'$", id="mask-pav-num-iter"),
    pytest.param(lambda: sp.soft_topk_mag(x5(), 2, debias=1), named("soft_topk_mag", "debias", "1"), id="mag-debias-int"),
    pytest.param(lambda: sp.soft_topk_mag(x5(), 2, lam=0.0), named("soft_topk_mag", "lam", "0.0"), id="mag-lam-0"),
    pytest.param(lambda: sp.soft_topk_mag(x5(), 2, num_iter=0), named("soft_topk_mag", "num_iter", "0"), id="mag-num-iter-0"),
    pytest.param(lambda: sp.hard_topk_mask(x5(), 2.0), named("hard_topk_mask", "k", "2.0"), id="hard-mask-k-float"),
    pytest.param(lambda: sp.hard_topk_mask(x5(), -1), r"^hard_topk_mask: expected 0 <= k <= 5 along dim -1, got k=-1$",
                 id="hard-mask-k-negative"),
    pytest.param(lambda: sp.hard_topk_mag(x5(), 2, dim=0.0), named("hard_topk_mag", "dim", "0.0"), id="hard-mag-dim-float"),
    pytest.param(lambda: sp.hard_topk_mag(x5(), False), named("hard_topk_mag", "k", "False"), id="hard-mag-k-bool"),
    # -- the loss -----------------------------------------------------------------------------
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), 3, lam=True), named("soft_topk_loss", "lam", "True"),
                 id="loss-lam-bool"),
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), 3, lam=NAN), named("soft_topk_loss", "lam", "nan"),
                 id="loss-lam-nan"),
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), 3, p=True), named("soft_topk_loss", "p", "True"),
                 id="loss-p-bool"),
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), 3, p=0.5), named("soft_topk_loss", "p", "0.5"),
                 id="loss-p-below-1"),
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), True), named("soft_topk_loss", "k", "True"),
                 id="loss-k-bool"),
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), 11), named("soft_topk_loss", "k", "11"),
                 id="loss-k-above-classes"),
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), 3, reduction="avg"),
                 named("soft_topk_loss", "reduction", "'avg'"), id="loss-reduction"),
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), 3, fill=None), named("soft_topk_loss", "fill", "None"),
                 id="loss-fill"),
    pytest.param(lambda: sp.soft_topk_loss(*logits_and_target(), 3, algorithm="dykstra", num_iter=0),
                 named("soft_topk_loss", "num_iter", "0"), id="loss-num-iter-0"),
    pytest.param(lambda: SoftTopKLoss(0), named("SoftTopKLoss", "k", "0"), id="loss-module-k-0"),
    pytest.param(lambda: SoftTopKLoss(True), named("SoftTopKLoss", "k", "True"), id="loss-module-k-bool"),
    pytest.param(lambda: SoftTopKLoss(2, lam=True), named("SoftTopKLoss", "lam", "True"), id="loss-module-lam-bool"),
    pytest.param(lambda: SoftTopKLoss(2, lam=NAN), named("SoftTopKLoss", "lam", "nan"), id="loss-module-lam-nan"),
    pytest.param(lambda: SoftTopKLoss(2, lam=-0.5), named("SoftTopKLoss", "lam", "-0.5"), id="loss-module-lam-negative"),
    pytest.param(lambda: SoftTopKLoss(2, p=False), named("SoftTopKLoss", "p", "False"), id="loss-module-p-bool"),
    pytest.param(lambda: SoftTopKLoss(2, p=1), named("SoftTopKLoss", "p", "1"), id="loss-module-p-1"),
    pytest.param(lambda: SoftTopKLoss(2, num_iter=0), named("SoftTopKLoss", "num_iter", "0"), id="loss-module-num-iter-0"),
    pytest.param(lambda: SoftTopKLoss(2, algorithm="newton"), named("SoftTopKLoss", "algorithm", "'newton'"),
                 id="loss-module-algorithm"),
    pytest.param(lambda: SoftTopKLoss(2, fill="centered"), named("SoftTopKLoss", "fill", "'centered'"), id="loss-module-fill"),
    # -- the router -----------------------------------------------------------------------------
    pytest.param(lambda: ExpertChoiceRouter(0, 4), named("ExpertChoiceRouter", "dim", "0"), id="router-dim-0"),
    pytest.param(lambda: ExpertChoiceRouter(8, True), named("ExpertChoiceRouter", "num_experts", "True"),
                 id="router-num-experts-bool"),
    pytest.param(lambda: ExpertChoiceRouter(8, 4, capacity_factor=math.inf),
                 named("ExpertChoiceRouter", "capacity_factor", "inf"), id="router-capacity-inf"),
    pytest.param(lambda: ExpertChoiceRouter(8, 4, topk="soft"), named("ExpertChoiceRouter", "topk", "'soft'"),
                 id="router-topk"),
    pytest.param(lambda: ExpertChoiceRouter(8, 4, lam=True), named("ExpertChoiceRouter", "lam", "True"),
                 id="router-lam-bool"),
    pytest.param(lambda: ExpertChoiceRouter(8, 4, lam=-1.0), named("ExpertChoiceRouter", "lam", "-1.0"),
                 id="router-lam-negative"),
    pytest.param(lambda: ExpertChoiceRouter(8, 4, p=True), named("ExpertChoiceRouter", "p", "True"), id="router-p-bool"),
    pytest.param(lambda: ExpertChoiceRouter(8, 4, p=1.0), named("ExpertChoiceRouter", "p", "1.0"), id="router-p-1"),
    pytest.param(lambda: ExpertChoiceRouter(8, 4, num_iter=0), named("ExpertChoiceRouter", "num_iter", "0"),
                 id="router-num-iter-0"),
    pytest.param(lambda: ExpertChoiceRouter(8, 4, topk="dykstra", p=3.0),
                 r"^ExpertChoiceRouter: topk='dykstra' supports p=2 and p=4/3 only, got p=3\.0$", id="router-dykstra-p"),
    pytest.param(lambda: SparseMoE(8, 0, 4), named("SparseMoE", "hidden", "0"), id="moe-hidden-0"),
    pytest.param(lambda: SparseMoE(8, 16, 4, dispatch="dense"), named("SparseMoE", "dispatch", "'dense'"),
                 id="moe-dispatch"),
    pytest.param(lambda: SparseMoE(8, 16, 4, num_iter=0), named("SparseMoE", "num_iter", "0"), id="moe-num-iter-0"),
    pytest.param(lambda: SparseMoE(8, 16, 4, lam=False), named("SparseMoE", "lam", "False"), id="moe-lam-bool"),
    pytest.param(lambda: SparseMoE(8, 16, 4, capacity=2), r"^SparseMoE: expected router_kwargs among .*'num_iter'\), got capacity=2$",
                 id="moe-unknown-router-argument"),
    # -- prune_ and the updates ---------------------------------------------------------------
    pytest.param(lambda: sp.prune_(linear(), True), named("prune_", "sparsity", "True"), id="prune-sparsity-bool"),
    pytest.param(lambda: sp.prune_(linear(), 1.5), named("prune_", "sparsity", "1.5"), id="prune-sparsity-1.5"),
    pytest.param(lambda: sp.prune_(linear(), NAN), named("prune_", "sparsity", "nan"), id="prune-sparsity-nan"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, lam=True), named("prune_", "lam", "True"), id="prune-lam-bool"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, lam=-1e-3), named("prune_", "lam", "-0.001"), id="prune-lam-negative"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, lam=NAN), named("prune_", "lam", "nan"), id="prune-lam-nan"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, p=True), named("prune_", "p", "True"), id="prune-p-bool"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, p=1), named("prune_", "p", "1"), id="prune-p-1"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, method="magic"), named("prune_", "method", "'magic'"), id="prune-method"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, scope="tile"), named("prune_", "scope", "'tile'"), id="prune-scope"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, scope=4), named("prune_", "scope", "4"), id="prune-scope-int"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, algorithm="newton"), named("prune_", "algorithm", "'newton'"),
                 id="prune-algorithm"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, num_iter=0), named("prune_", "num_iter", "0"), id="prune-num-iter-0"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, num_iter=True), named("prune_", "num_iter", "True"),
                 id="prune-num-iter-bool"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, debias="yes"), named("prune_", "debias", "'yes'"), id="prune-debias"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, relative_lam=1), named("prune_", "relative_lam", "1"),
                 id="prune-relative-lam"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, targets=5), named("prune_", "targets", "5"), id="prune-targets-int"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, targets=[]), named("prune_", "targets", "[]"), id="prune-targets-empty"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, exclude=3), named("prune_", "exclude", "3"), id="prune-exclude-int"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, exclude=[None]), named("prune_", "exclude", "[None]"),
                 id="prune-exclude-list-of-none"),
    pytest.param(lambda: sp.prune_(linear(), 0.5, exclude="re:("),
                 r"^prune_: expected a valid regular expression in exclude, got 're:\(' \(.*\)$", id="prune-exclude-regex"),
    pytest.param(lambda: sp.set_sparsity_(linear(), True), named("set_sparsity_", "sparsity", "True"),
                 id="set-sparsity-bool"),
    pytest.param(lambda: sp.set_lam_(linear(), NAN), named("set_lam_", "lam", "nan"), id="set-lam-nan"),
    pytest.param(lambda: sp.set_hard_training_(linear(), 0), named("set_hard_training_", "hard", "0"), id="set-hard-int"),
    # -- the Lightning callback: at construction ----------------------------------------------
    pytest.param(lambda: SmoothPruning(num_iter=0), named("SmoothPruning", "num_iter", "0"), id="callback-num-iter-0"),
    pytest.param(lambda: SmoothPruning(exclude=3), named("SmoothPruning", "exclude", "3"), id="callback-exclude-int"),
    pytest.param(lambda: SmoothPruning(exclude=[("0", "weight")]), named("SmoothPruning", "exclude", "[('0', 'weight')]"),
                 id="callback-exclude-pair"),
    pytest.param(lambda: SmoothPruning(exclude="re:["),
                 r"^SmoothPruning: expected a valid regular expression in exclude, got 're:\[' \(.*\)$",
                 id="callback-exclude-regex"),
    pytest.param(lambda: SmoothPruning(parameters_to_prune=5), named("SmoothPruning", "parameters_to_prune", "5"),
                 id="callback-parameters-to-prune-int"),
    pytest.param(lambda: SmoothPruning(parameters_to_prune=[]), named("SmoothPruning", "parameters_to_prune", "[]"),
                 id="callback-parameters-to-prune-empty"),
    pytest.param(lambda: SmoothPruning(True), named("SmoothPruning", "sparsity", "True"), id="callback-sparsity-bool"),
    pytest.param(lambda: SmoothPruning(-0.1), named("SmoothPruning", "sparsity", "-0.1"), id="callback-sparsity-negative"),
    pytest.param(lambda: SmoothPruning(lam=True), named("SmoothPruning", "lam", "True"), id="callback-lam-bool"),
    pytest.param(lambda: SmoothPruning(lam=NAN), named("SmoothPruning", "lam", "nan"), id="callback-lam-nan"),
    pytest.param(lambda: SmoothPruning(lam=-1.0), named("SmoothPruning", "lam", "-1.0"), id="callback-lam-negative"),
    pytest.param(lambda: SmoothPruning(p=True), named("SmoothPruning", "p", "True"), id="callback-p-bool"),
    pytest.param(lambda: SmoothPruning(p=1.0), named("SmoothPruning", "p", "1.0"), id="callback-p-1"),
    pytest.param(lambda: SmoothPruning(method="prune"), named("SmoothPruning", "method", "'prune'"), id="callback-method"),
    pytest.param(lambda: SmoothPruning(scope="tile"), named("SmoothPruning", "scope", "'tile'"), id="callback-scope"),
    pytest.param(lambda: SmoothPruning(algorithm="newton"), named("SmoothPruning", "algorithm", "'newton'"),
                 id="callback-algorithm"),
    pytest.param(lambda: SmoothPruning(algorithm="dykstra", p=1.5),
                 r"^SmoothPruning: algorithm='dykstra' supports p=2 and p=4/3 only, got p=1\.5$", id="callback-dykstra-p"),
    pytest.param(lambda: SmoothPruning(interval="batch"), named("SmoothPruning", "interval", "'batch'"),
                 id="callback-interval"),
    pytest.param(lambda: SmoothPruning(frequency=True), named("SmoothPruning", "frequency", "True"),
                 id="callback-frequency-bool"),
    pytest.param(lambda: SmoothPruning(frequency=0), named("SmoothPruning", "frequency", "0"), id="callback-frequency-0"),
    pytest.param(lambda: SmoothPruning(verbose=True), named("SmoothPruning", "verbose", "True"), id="callback-verbose-bool"),
    pytest.param(lambda: SmoothPruning(export_path=3), named("SmoothPruning", "export_path", "3"),
                 id="callback-export-path-int"),
    pytest.param(lambda: SmoothPruning(make_pruning_permanent=1), named("SmoothPruning", "make_pruning_permanent", "1"),
                 id="callback-make-permanent-int"),
    pytest.param(lambda: SmoothPruning(relative_lam="yes"), named("SmoothPruning", "relative_lam", "'yes'"),
                 id="callback-relative-lam"),
    pytest.param(lambda: SmoothPruning(finish_at_target=None), named("SmoothPruning", "finish_at_target", "None"),
                 id="callback-finish-at-target"),
    pytest.param(lambda: SmoothPruning(finetune=True), r"^SmoothPruning: expected finetune .*, got finetune=True$",
                 id="callback-finetune-bool"),
    pytest.param(lambda: SmoothPruning(ramp=(0.0, True)), r"^SmoothPruning: expected ramp .*, got ramp=\(0\.0, True\)$",
                 id="callback-ramp-bool"),
    # -- schedules ----------------------------------------------------------------------------
    pytest.param(lambda: schedules.Constant(True), named("Constant", "value", "True"), id="schedule-constant-bool"),
    pytest.param(lambda: schedules.Linear(True, 1.0), named("Linear", "start", "True"), id="schedule-start-bool"),
    pytest.param(lambda: schedules.Exponential(1.0, 0.0), named("Exponential", "final", "0.0"),
                 id="schedule-exponential-final-0"),
    pytest.param(lambda: schedules.Cubic(0.0, 0.9, begin=True), named("Cubic", "begin", "True"), id="schedule-begin-bool"),
    pytest.param(lambda: schedules.Cubic(0.0, 0.9, end=2.5), named("Cubic", "end", "2.5"), id="schedule-end-fraction"),
    pytest.param(lambda: schedules.Cosine(0.0, 0.9, frequency=0), named("Cosine", "frequency", "0"),
                 id="schedule-frequency-0"),
    # -- inference ----------------------------------------------------------------------------
    pytest.param(lambda: sp.sparsify_(linear().eval(), margin=True), named("sparsify_", "margin", "True"),
                 id="sparsify-margin-bool"),
    pytest.param(lambda: sp.sparsify_(linear().eval(), margin=0.5), named("sparsify_", "margin", "0.5"),
                 id="sparsify-margin-below-1"),
]


@pytest.mark.parametrize("call, match", CASES)
def test_a_bad_argument_names_the_function_the_argument_and_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_callback_checks_everything_it_can_at_construction():
    """num_iter and exclude fail in __init__, not in setup (no trainer, no model needed)."""
    with pytest.raises(ValueError, match=named("SmoothPruning", "num_iter", "0")):
        SmoothPruning(num_iter=0)
    with pytest.raises(ValueError, match=named("SmoothPruning", "exclude", "3")):
        SmoothPruning(exclude=3)


@pytest.mark.parametrize("kwargs", [
    dict(parameters_to_prune="0.weight"),
    dict(parameters_to_prune=("0.weight", "re:.*bias")),
    dict(parameters_to_prune=[(torch.nn.Linear(2, 2), "weight")]),
    dict(exclude=["re:.*head.*", "0.bias"]),
    dict(sparsity={"name": "cubic", "final": 0.5, "end": 10}, lam=schedules.Exponential(1.0, 1e-3, 0, 10)),
    dict(export_path="model.safetensors", verbose=0, frequency=2),
], ids=["name", "tuple-of-names", "pair", "exclude-list", "schedules", "export"])
def test_the_callback_accepts_what_prune_accepts(kwargs):
    SmoothPruning(**kwargs)


def test_prune_accepts_a_tuple_of_names_and_a_single_pair():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    assert sp.prune_(model, 0.5, targets=("0.weight", "1.bias")) == ["0.weight", "1.bias"]
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    assert sp.prune_(model, 0.5, targets=(model[1], "weight")) == ["1.weight"]


def test_prune_checks_its_arguments_before_touching_the_model():
    model = linear()
    with pytest.raises(ValueError, match=named("prune_", "debias", "'no'")):
        sp.prune_(model, 0.5, targets=["nope.weight"], debias="no")  # the argument, not the missing target
    assert not sp.pruning.pruned_tensors(model)


def test_numpy_scalars_are_numbers():
    np = pytest.importorskip("numpy")
    assert smoothprune.validation.check_p("f", np.float64(2.0)) == 2.0
    assert smoothprune.validation.check_int("f", "k", np.int64(3)) == 3
    assert sp.soft_topk_mask(torch.tensor([3.0, 1.0, 2.0]), np.int64(1), lam=np.float32(1e-3)).tolist() == [1.0, 0.0, 0.0]


def test_the_validation_module_documents_its_public_names():
    assert smoothprune.validation.__doc__ and "ValueError" in smoothprune.validation.__doc__
    for name in PUBLIC:
        obj = getattr(smoothprune.validation, name)
        if callable(obj) and not isinstance(obj, tuple):
            assert obj.__doc__, name
    result = doctest.testmod(smoothprune.validation, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


# the extension's loader: imported for its side effect (registering the native ops)
EXTENSION_LOADERS = {"smoothprune._native", "smoothprune._C"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_another_packages_private_module(path):
    """A private module (``_name``) is imported only from inside its own package."""
    for module, names in _imports(path):
        if not module.startswith("smoothprune"):
            continue
        base = PACKAGE.parent.joinpath(*module.split("."))
        submodules = [n for n in names if n.startswith("_") and (  # (private functions are another matter)
            base.joinpath(n).is_dir() or base.joinpath(f"{n}.py").exists() or f"{module}.{n}" in EXTENSION_LOADERS)]
        targets = [module] + [f"{module}.{n}" for n in submodules]
        for target in targets:
            parts = target.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_") and part != "__init__"]
            if not private or target in EXTENSION_LOADERS:
                continue
            owner = PACKAGE.parent.joinpath(*parts[: private[0]])
            assert owner in path.parents, f"{path.relative_to(PACKAGE)} imports the private {target}"


def test_no_private_checks_module_and_no_stale_design_references():
    assert not (PACKAGE / "ops" / "_checks.py").exists()
    stale = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "DESIGN" in p.read_text()]
    assert stale == []
