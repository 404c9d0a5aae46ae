"""The Hydra recipes' building blocks: data, models, the Lightning module, `train(cfg)` and the
sweep report. Needs the ``recipes`` extra (hydra-core, timm, torchvision, mlxtend, matplotlib);
`smoothprune` itself never imports this package.

The command-line entry points are ``recipes/train.py`` and ``recipes/report.py`` at the top of
the repository; the configs are in ``conf/``.
"""
