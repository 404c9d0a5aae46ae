"""The popular Lightning template (lightning.pytorch): a network passed to the LightningModule's
constructor and saved with its hyperparameters. A module of its own, not a test module: the
checkpoints pickle the network by its class's module path, and a fresh process that loads them
(tests/lightning/test_integration.py) imports it from here."""

import lightning.pytorch as L
import torch


class Net(torch.nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(24, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                          torch.nn.ReLU(), torch.nn.Linear(width, 4))

    def forward(self, x):
        return self.layers(x)


class Classifier(L.LightningModule):
    """The popular template: the network is a constructor argument saved with the hyperparameters."""

    def __init__(self, net: torch.nn.Module, lr: float = 0.05, extras=None):
        super().__init__()
        self.save_hyperparameters()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def _loss(self, batch):
        x, y = batch
        logits = self(x)
        return torch.nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    def training_step(self, batch, batch_idx):
        loss, _ = self._loss(batch)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc = self._loss(batch)
        self.log("val_loss", loss)
        self.log("val_acc", acc)

    def test_step(self, batch, batch_idx):
        loss, acc = self._loss(batch)
        self.log("test_acc", acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
