"""Train one recipe (or a sweep with -m). Examples:

    python recipes/train.py experiment=mlp_prune pruning=smooth_p43
    python recipes/train.py experiment=vit_finetune loss=topk_p2 trainer.max_steps=10
    python recipes/train.py -m experiment=moe_routing_paper router=hard,smooth_dykstra,smooth_pav seed=0,1,2

Configs live in conf/ (see conf/config.yaml); the work is done by smoothprune.recipes.train.train.
"""

import logging

import hydra
from omegaconf import DictConfig

import smoothprune.lightning  # noqa: F401  (imports both Lightning flavours, which set their log levels)
from smoothprune.recipes.train import train


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # one line per run on the console: Lightning's start-up notices (GPU/TPU available, tips) off
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    train(cfg)


if __name__ == "__main__":
    main()
