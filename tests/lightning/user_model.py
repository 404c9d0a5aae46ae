"""A user's own LightningModule, written without smoothprune in mind, for either Lightning flavour."""

import torch
from torch.utils.data import DataLoader, TensorDataset


def make_data(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 24, generator=g)
    y = (x[:, :4] @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).long() + 2 * (x[:, 4] > 0).long()
    return x, y


def loader(n=512, seed=0, batch_size=64):
    return DataLoader(TensorDataset(*make_data(n, seed)), batch_size=batch_size, shuffle=False)


def make_module_class(L):
    """`L` is `lightning.pytorch` or `pytorch_lightning`."""

    class UserClassifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Sequential(torch.nn.Linear(24, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU())
            self.head = torch.nn.Linear(64, 4)

        def forward(self, x):
            return self.head(self.encoder(x))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def predict_step(self, batch, batch_idx):
            return self(batch[0]).argmax(1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return UserClassifier


def accuracy(model, n=1024, seed=1):
    x, y = make_data(n, seed)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
