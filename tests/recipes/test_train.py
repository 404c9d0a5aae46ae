"""Each recipe runs for a few steps through `train(cfg)` and through the real Hydra command line;
bad configurations fail fast naming the key; the report tool turns a sweep into a table and plot."""

import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from omegaconf import OmegaConf

import smoothprune as sp
from smoothprune.nn import SparseMoE
from smoothprune.recipes.train import build, train
from tests.helpers import REPO

FAST = ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false"]
SMALL_VIT = ["model.depth=2", "model.embed_dim=48", "model.num_heads=2"]


def run(compose_cfg, tmp_path, *overrides):
    return train(compose_cfg(*overrides, *FAST, f"output_dir={tmp_path}"))


@pytest.mark.slow  # recipe runs
@pytest.mark.parametrize("pruning", ["none", "hard", "smooth_p2", "smooth_p43", "ste"])
def test_mlp_prune_recipe(compose_cfg, tmp_path, pruning):
    result = run(compose_cfg, tmp_path, "experiment=mlp_prune", f"pruning={pruning}")
    assert result == json.loads((tmp_path / "result.json").read_text())
    assert result["arm"] == pruning and result["name"] == "mlp_prune"
    summary = result["summary"]
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(0 <= h["test/acc_top1"] <= h["test/acc_top5"] <= 1 for h in result["history"])
    assert summary["test_error"] == pytest.approx(1 - summary["test_acc_top1"])
    assert result["pruned_tensors"] == []  # hardened at the end of training
    # the exported file is exactly the final (hardened) model
    state = sp.load_sparse(result["export_path"])
    fresh = build(compose_cfg("experiment=mlp_prune").model, "model")
    fresh.load_state_dict(state, strict=True)
    weights = [state[f"{i}.weight"] for i in (1, 3, 5)]
    if pruning == "none":
        assert summary["sparsity"] == 0.0 and "test_error_before_hardening" not in summary
    else:
        # exactly: every matrix keeps round(10%) of its entries
        assert [int((w != 0).sum()) for w in weights] == [2509, 102, 32]
        assert summary["sparsity"] == 1 - (2509 + 102 + 32) / (784 * 32 + 32 * 32 + 32 * 10)
        assert 0 <= summary["test_error_before_hardening"] <= 1
    assert summary["export_bytes"] == os.path.getsize(result["export_path"])
    assert summary["train_seconds"] > 0 and summary["sec_per_step"] > 0


@pytest.mark.slow  # recipe runs
def test_pruned_export_is_much_smaller_than_the_dense_one(compose_cfg, tmp_path):
    dense = run(compose_cfg, tmp_path / "dense", "experiment=mlp_prune", "pruning=none")
    smooth = run(compose_cfg, tmp_path / "smooth", "experiment=mlp_prune", "pruning=smooth_p2")
    assert smooth["summary"]["export_bytes"] < 0.2 * dense["summary"]["export_bytes"]


def small_finetune(tmp_path):
    return ["experiment=vit_finetune", *SMALL_VIT, "data.train_pairs=200", "data.test_pairs=100",
            "pretrain.epochs=1", "pretrain.data.max_train_examples=256", f"pretrain.cache_dir={tmp_path / 'cache'}",
            "trainer.max_steps=4", "lr_schedule.warmup_steps=1"]


@pytest.mark.slow  # recipe runs
@pytest.mark.parametrize("loss", ["cross_entropy", "topk_p2", "topk_p43", "topk_p2_topkfill", "topk_p2_onehot"])
def test_vit_finetune_recipe(compose_cfg, tmp_path, loss):
    result = run(compose_cfg, tmp_path, *small_finetune(tmp_path), f"loss={loss}")
    summary = result["summary"]
    accs = [summary[f"test_acc_top{k}"] for k in range(1, 6)]
    assert accs == sorted(accs) and 0 <= accs[0] and accs[-1] <= 1
    assert result["arm"] == loss and summary["sec_per_step"] > 0
    assert result["config"]["lr_schedule"] == {"warmup_steps": 1, "total_steps": 4}
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


@pytest.mark.slow  # recipe runs
def test_finetuning_starts_from_the_cached_pretrained_backbone(compose_cfg, tmp_path):
    from safetensors.torch import load_file

    from smoothprune.recipes.pretrain import pretrained_checkpoint

    cfg = compose_cfg(*small_finetune(tmp_path))
    path = pretrained_checkpoint(cfg)
    info = json.loads(open(path[: -len(".safetensors")] + ".json").read())
    assert 0 <= info["source_test_acc_top1"] <= 1 and info["epochs"] == 1
    stamp = os.stat(path).st_mtime_ns
    assert pretrained_checkpoint(cfg) == path and os.stat(path).st_mtime_ns == stamp  # cached, not retrained
    # the seed of the fine-tuning run does not change the backbone; a pretraining setting does
    assert pretrained_checkpoint(compose_cfg(*small_finetune(tmp_path), "seed=5")) == path
    other = pretrained_checkpoint(compose_cfg(*small_finetune(tmp_path), "pretrain.lr=2e-3"))
    assert other != path
    pretrained = load_file(path)
    assert pretrained["head.weight"].shape == (10, 48)  # the source task's 10 classes
    model = build(cfg.model, "model", _convert_="all", checkpoint=path)
    assert model.head.weight.shape == (100, 48)  # a fresh head for the 100 pairs
    for name, value in model.state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(value, pretrained[name], msg=name)


def test_warmup_cosine_schedule():
    from smoothprune.recipes.module import warmup_cosine

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # warm-up, never at 0
    assert lrs[8] == pytest.approx(0.5) and lrs[12] == pytest.approx(0.0, abs=1e-12) and lrs[13] == lrs[12]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # then decreasing
    for kwargs, match in ((dict(warmup_steps=-1, total_steps=5), "warmup_steps: expected an int >= 0"),
                          (dict(warmup_steps=5, total_steps=5), "total_steps: expected an int > warmup_steps=5")):
        with pytest.raises(ValueError, match=f"^lr_schedule.{match}"):
            warmup_cosine(opt, **kwargs)


@pytest.mark.slow  # recipe runs
@pytest.mark.parametrize("router", ["hard", "smooth_dykstra", "smooth_pav"])
def test_moe_routing_paper_recipe(compose_cfg, tmp_path, router):
    result = run(compose_cfg, tmp_path, "experiment=moe_routing_paper", f"router={router}")
    summary = result["summary"]
    assert 0 < summary["token_coverage"] <= 1
    if router == "hard":
        assert summary["nnz_per_capacity"] == 1.0
    else:
        assert summary["nnz_per_capacity"] >= 1.0
    assert summary["router_ms_per_step"] > 0 and summary["tokens_per_second"] > 0
    assert result["config"]["router"]["name"] == router


def test_pretrained_vit_weights_load_from_a_local_file(compose_cfg, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, num_classes=10,
                               depth=2, embed_dim=48, num_heads=2)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    cfg = compose_cfg("model=vit_tiny", *SMALL_VIT, f"model.checkpoint={path}")
    model = build(cfg.model, "model", _convert_="all")
    for name, value in source.state_dict().items():
        if not name.startswith("head."):  # timm re-initializes a classifier whose class count differs from its config's
            torch.testing.assert_close(model.state_dict()[name], value, msg=name)
    # V-MoE: every expert starts as a copy of the pretrained MLP it replaces (sparse upcycling)
    cfg = compose_cfg("model=vmoe_tiny", "router=hard", *SMALL_VIT, f"model.checkpoint={path}")
    moe = build(cfg.model, "model", _convert_="all")
    layer = moe.blocks[1].mlp
    assert isinstance(layer, SparseMoE)
    for e in range(layer.router.num_experts):
        torch.testing.assert_close(layer.w1[e], source.blocks[1].mlp.fc1.weight.t())
        torch.testing.assert_close(layer.b2[e], source.blocks[1].mlp.fc2.bias)
    with pytest.raises(FileNotFoundError, match=r"^model.checkpoint: no such file .*missing.pth"):
        build(compose_cfg("model=vit_tiny", f"model.checkpoint={tmp_path / 'missing.pth'}").model, "model")


@pytest.mark.parametrize("overrides,error,match", [
    (["experiment=mlp_prune", "loss=topk_p2", "loss.fn.k=11"], ValueError,
     r"^loss.fn.k: expected an int 1 <= k <= data.num_classes=10, got k=11"),
    (["experiment=mlp_prune", "++trainer.bogus=1"], ValueError, r"^trainer.bogus: not an argument of pytorch_lightning.Trainer"),
    (["experiment=mlp_prune", "data=mnist", "data.root=/nonexistent/mnist"], FileNotFoundError,
     r"^data.root: no MNIST files under /nonexistent/mnist/MNIST/raw"),
    (["experiment=mlp_prune", "pruning.callback.interval=batch"], ValueError,
     r"^pruning.callback: SmoothPruning: expected interval in \('step', 'epoch'\), got interval='batch'"),
    (["experiment=mlp_prune", "router=hard"], ValueError, r"^router: router=hard only applies to a mixture-of-experts"),
    (["experiment=moe_routing_paper", "router=none"], ValueError, r"^model: router: model=vmoe needs a router"),
    (["experiment=vit_finetune", "model.patch_size=5"], ValueError,
     r"^model.patch_size: expected an int dividing data.image_size=28, got 5"),
    (["experiment=vit_finetune", "pretrain.epochs=0"], ValueError, r"^pretrain.epochs: expected an int >= 1, got 0"),
    (["experiment=mlp_prune", "pretrain=digits"], ValueError, r"^pretrain: needs a model that loads a checkpoint"),
    (["experiment=vit_finetune", "lr_schedule.warmup_steps=100"], ValueError,
     r"^lr_schedule.total_steps: expected an int > warmup_steps=100, got 100"),
])
def test_bad_configuration_fails_fast_naming_the_key(compose_cfg, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        train(compose_cfg(*overrides, f"output_dir={tmp_path}"))
    assert not (tmp_path / "result.json").exists()


def _cli(*args, cwd):
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # Hydra command lines in fresh processes
def test_command_line_sweep_and_report(tmp_path):
    """The real entry points: a Hydra multirun over arms and seeds, then the report tool."""
    sweep = tmp_path / "sweep"
    proc = _cli(os.path.join(REPO, "recipes", "train.py"), "-m", "experiment=mlp_prune", "pruning=none,smooth_p2",
                "seed=0,1", "++trainer.fast_dev_run=true", "trainer.enable_progress_bar=false",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.glob("*/result.json"))
    assert [p.parent.name for p in results] == ["0_none_seed0", "1_none_seed1", "2_smooth_p2_seed0",
                                                "3_smooth_p2_seed1"]
    proc = _cli(os.path.join(REPO, "recipes", "report.py"), str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (sweep / "report.md").read_text()
    assert "| none | 2 |" in table and "| smooth_p2 | 2 |" in table and " ± " in table
    assert (sweep / "report.png").stat().st_size > 10_000
    assert "wrote" in proc.stdout
    # the end of `make demo`: the sparsest exported model, dense vs sparse inference
    proc = _cli(os.path.join(REPO, "recipes", "infer.py"), str(sweep), "--repeats", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2_smooth_p2_seed0/model.safetensors" in proc.stdout or "3_smooth_p2_seed1/model.safetensors" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 |") or line.startswith("| 256 |")]
    assert len(rows) == 2 and all(row.rstrip().endswith("| yes |") for row in rows)
    assert "weights: dense" in proc.stdout
    from smoothprune.recipes.infer import main as infer_main

    assert infer_main([str(tmp_path / "empty")]) == 2


@pytest.mark.slow  # Hydra command lines in fresh processes
def test_command_line_rejects_an_unknown_group_option(tmp_path):
    proc = _cli(os.path.join(REPO, "recipes", "train.py"), "experiment=mlp_prune", "pruning=bogus", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'pruning/bogus'" in proc.stderr and "Available options in 'pruning'" in proc.stderr
    assert not list(tmp_path.rglob("result.json"))


def _write_result(path, name="mlp_prune", arm="none", seed=0, report=None, **summary):
    path.mkdir(parents=True)
    config = {"name": name} if report is None else {"name": name, "report": report}
    history = [{"epoch": 1, "train_seconds": 1.0, "test/acc_top1": 0.5}]
    result = {"name": name, "arm": arm, "seed": seed, "summary": summary, "history": history, "config": config}
    (path / "result.json").write_text(json.dumps(result))


def test_report_errors_name_the_problem(tmp_path, capsys):
    from smoothprune.recipes.report import main

    missing = tmp_path / "missing"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("report: sweep_dir: no such directory") and repr(str(missing)) in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert f"report: sweep_dir: no result.json under {str(empty)!r} (did the runs finish?)" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    _write_result(mixed / "0_a_seed0", name="mlp_prune", test_error=0.1)
    _write_result(mixed / "1_b_seed0", name="vit_finetune", test_acc_top1=0.9)
    assert main([str(mixed)]) == 2
    assert ("report: sweep_dir: expected the runs of one experiment, found ['mlp_prune', 'vit_finetune']"
            in capsys.readouterr().err)
    bad = tmp_path / "bad"
    _write_result(bad / "0_a_seed0", name="custom", report={"columns": [["test_error", "error", 100]]}, test_error=0.1)
    assert main([str(bad)]) == 2
    assert ("report: report.columns[0]: expected [str, str, number, int], got ['test_error', 'error', 100]"
            in capsys.readouterr().err)
    assert not (bad / "report.md").exists()


def test_report_columns_come_from_the_experiment_config(tmp_path, capsys):
    """The run's own config names the columns; sweeps without it (written before it existed) get
    those of conf/experiment/<name>.yaml; an experiment with neither shows every summary key."""
    from smoothprune.recipes.report import main, report_spec

    own = tmp_path / "own"
    report = {"columns": [["acc", "accuracy (%)", 100, 1]], "curves": [["test/acc_top1", "top-1", "value"]]}
    for seed in (0, 1):
        _write_result(own / f"{seed}_x_seed{seed}", name="anything", arm="x", seed=seed, report=report,
                      acc=0.5 + 0.1 * seed, other=1.0)
    assert main([str(own)]) == 0
    table = (own / "report.md").read_text()
    assert "| arm | runs | accuracy (%) |" in table and "| x | 2 | 55.0 ± 7.1 |" in table and "other" not in table
    legacy = tmp_path / "legacy"  # an mlp_prune sweep whose result.json has no report node
    _write_result(legacy / "0_hard_seed0", arm="hard", test_error=0.25, sparsity=0.9, sec_per_step=0.002)
    assert main([str(legacy)]) == 0
    table = (legacy / "report.md").read_text()
    assert ("| arm | runs | test error after hardening (%) | test error before hardening (%) | sparsity of pruned "
            "weights | exported file (bytes) | training time (s) | ms / step |") in table
    assert "| hard | 1 | 25.00 | – | 0.9000 | – | – | 2.00 |" in table
    columns, curves = report_spec([json.loads((legacy / "0_hard_seed0" / "result.json").read_text())])
    assert columns[0] == ("test_error", "test error after hardening (%)", 100, 2)
    assert curves == [("test/acc_top1", "test error (%)", "error")]
    custom = tmp_path / "custom"
    _write_result(custom / "0_y_seed0", name="custom", arm="y", b=2.0, a=1.0)
    assert main([str(custom)]) == 0
    assert "| arm | runs | b | a |\n|---|---|---|---|\n| y | 1 | 2.0000 | 1.0000 |" in (custom / "report.md").read_text()
    capsys.readouterr()


@pytest.mark.parametrize("experiment", ["mlp_prune", "vit_finetune", "moe_routing_paper"])
def test_every_experiment_names_its_report(compose_cfg, experiment):
    from smoothprune.recipes.report import report_spec

    cfg = compose_cfg(f"experiment={experiment}")
    result = {"name": experiment, "summary": {}, "config": {"report": OmegaConf.to_container(cfg.report)}}
    columns, curves = report_spec([result])
    assert columns and curves


@pytest.mark.slow  # recipe runs
def test_without_hardening_the_run_reports_the_smooth_model(compose_cfg, tmp_path):
    result = run(compose_cfg, tmp_path, "experiment=mlp_prune", "pruning=smooth_p2",
                 "pruning.callback.make_pruning_permanent=false")
    assert "test_error_before_hardening" not in result["summary"]
    assert result["pruned_tensors"] == ["1.weight", "3.weight", "5.weight"]  # still parametrized
    state = sp.load_sparse(result["export_path"])  # save_sparse hardens on the way out
    assert int((state["1.weight"] != 0).sum()) == 2509
