"""Torch models and training shared by the MNIST benchmarks (cached on disk)."""

import os
import time
from pathlib import Path

import torch
from torch import nn

from skquant.datasets import get_data_home, load_mnist


def mlp(sizes=(784, 500, 300, 10)):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def fashion_cnn():
    """Two conv layers and two linear ones; the first linear layer holds 95% of
    the weights."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def vgg8():
    """A small VGG-style net: six 3x3 conv layers (with BatchNorm) in three stages
    and two linear layers, 8 weight layers from 144 to 74k weights."""
    layers, c_in = [], 1
    for c_out, pool in (
        (16, False),
        (16, True),
        (32, False),
        (32, True),
        (64, False),
        (64, True),
    ):
        layers += [
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        c_in = c_out
    layers += [nn.Flatten(), nn.Linear(64 * 3 * 3, 128), nn.ReLU(), nn.Linear(128, 10)]
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a skip (a 1x1 conv where the shape
    changes), as in ResNet."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = (
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNetStyle(nn.Module):
    """A small ResNet for 1-channel images: a stem and three stages of two
    residual blocks (16, 32, 64 channels, stride 2 between stages); its
    ``forward`` is not a sequence."""

    def __init__(self, widths=(16, 32, 64), classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [ResidualBlock(c, w, 1 if i == 0 else 2), ResidualBlock(w, w, 1)]
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mnist_tensors(dataset="mnist", image=False):
    out = []
    for subset in ("train", "test"):
        X, y = load_mnist(subset, dataset=dataset, return_X_y=True)
        X = torch.from_numpy(X)
        if image:
            X = X.reshape(-1, 1, 28, 28)
        out += [X, torch.from_numpy(y)]
    return out  # Xtr, ytr, Xte, yte


@torch.no_grad()
def accuracy(model, X, y, batch=2000):
    model.eval()
    correct = 0
    for i in range(0, len(X), batch):
        correct += (model(X[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / len(X)


def train(model, X, y, *, epochs, lr=1e-3, batch=128, seed=0, verbose=True):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        t = time.perf_counter()
        perm = torch.randperm(len(X), generator=g)
        total = 0.0
        for i in range(0, len(X), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if verbose:
            print(
                f"  epoch {epoch + 1}/{epochs} loss {total / len(X):.4f} "
                f"({time.perf_counter() - t:.1f}s)",
                flush=True,
            )
    return model


def trained(
    name, dataset="mnist", epochs=None, seed=0, verbose=True, recipe="constant"
):
    """A trained model, cached under <data home>/models/ (fixed seed).

    ``recipe="constant"``: Adam at a constant rate (:func:`train`, the models of
    the data-driven benchmarks); ``"cosine"``: :func:`skquant.torch.train_baseline`
    (Adam, the rate decayed from 1e-3 to 1e-5 on a cosine, 15 epochs by default),
    the better-trained float baselines of the adaptive-precision benchmark.
    """
    make, image, default_epochs = {
        "mlp": (mlp, False, 10),
        "lenet5": (lenet5, True, 8),
        "cnn": (fashion_cnn, True, 8),
        "vgg8": (vgg8, True, 5),
    }[name]
    if recipe not in ("constant", "cosine"):
        raise ValueError(f"recipe must be 'constant' or 'cosine', got {recipe!r}")
    if recipe == "cosine":
        default_epochs = 15
    epochs = epochs or default_epochs
    tag = "" if recipe == "constant" else "-cos"
    cache = (
        Path(get_data_home()) / "models" / f"{dataset}-{name}-e{epochs}-s{seed}{tag}.pt"
    )
    torch.manual_seed(seed)
    model = make()
    Xtr, ytr, Xte, yte = mnist_tensors(dataset, image=image)
    if cache.exists() and not os.environ.get("SKQUANT_RETRAIN"):
        model.load_state_dict(torch.load(cache))
    elif recipe == "cosine":
        from skquant.torch import train_baseline

        if verbose:
            print(
                f"training {name} on {dataset} ({epochs} epochs, cosine, seed {seed})"
            )
        train_baseline(
            model,
            (Xtr, ytr),
            alphabet="float",
            epochs=epochs,
            random_state=seed,
            verbose=verbose,
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    else:
        if verbose:
            print(f"training {name} on {dataset} ({epochs} epochs, seed {seed})")
        train(model, Xtr, ytr, epochs=epochs, seed=seed, verbose=verbose)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    model.eval()
    return model, (Xtr, ytr, Xte, yte)
