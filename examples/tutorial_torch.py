"""The training loop of the regularization tutorial, in PyTorch.

An MLP on the digits, cross-entropy plus the tutorial's L2 term written as PyTorch users
write it -- ``l2_lambda * sum(p.pow(2.0).sum() for p in model.parameters())`` -- SGD with
momentum, a tqdm progress bar and the training accuracy. Its JAX port is
``tutorial_jax.py``; ``python examples/tutorial_torch.py`` trains it.
"""

from __future__ import annotations

import digits
import torch
from tqdm import tqdm

L2_LAMBDA = 0.001  # the tutorial's l2_lambda
LR, MOMENTUM = 0.05, 0.9


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def make(dtype=torch.float64, seed=0):
    """``(model, train_step, stats)``; ``train_step(inputs, labels) -> loss`` is one step
    of the tutorial's loop and counts correct predictions into ``stats``."""
    torch.manual_seed(seed)
    model = Net().to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    stats = {"correct": 0, "total": 0}

    def train_step(inputs, labels):
        model.train()
        outputs = model(inputs)
        loss = loss_fn(outputs, labels)
        # Replaces pow(2.0) with abs() for L1 regularization
        l2_norm = sum(p.pow(2.0).sum() for p in model.parameters())
        loss = loss + L2_LAMBDA * l2_norm
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _, predicted = outputs.max(1)
        stats["total"] += labels.size(0)
        stats["correct"] += predicted.eq(labels).sum().item()
        return loss.item()

    return model, train_step, stats


def to_torch(batch, dtype=torch.float64):
    x, y = batch
    return torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=torch.long)


def main(epochs=3):
    x_train, y_train, _, _ = digits.load()
    model, train_step, stats = make()
    for epoch in range(epochs):
        print(f"\nEpoch : {epoch}")
        stats.update(correct=0, total=0)
        losses = [
            train_step(*to_torch(b))
            for b in tqdm(digits.batches(x_train, y_train, epochs=1, seed=epoch))
        ]
        accu = 100.0 * stats["correct"] / stats["total"]
        print(f"Train Loss: {sum(losses) / len(losses):.3f} | Accuracy: {accu:.3f}")


if __name__ == "__main__":
    main()
