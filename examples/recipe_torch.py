"""A realistic PyTorch recipe: the kind of script a port has to reproduce exactly.

A digits CNN with BatchNorm; L1 on the conv weights plus the tutorial's L2 term over
every parameter, both added to the loss; AdamW with a no-decay param group (biases and
BatchNorm parameters); linear warm-up then cosine (``SequentialLR``); gradient clipping
(``clip_grad_norm_``). Its JAX port is ``recipe_jax.py``.
"""

from __future__ import annotations

import digits
import torch
import torch.nn.functional as F
from tqdm import tqdm

L1_ALPHA, L2_LAMBDA = 1e-4, 1e-3
LR, WEIGHT_DECAY, MAX_NORM = 3e-3, 0.05, 1.0
WARMUP, EPOCHS, BATCH = 10, 3, 64
STEPS_PER_EPOCH = 1347 // BATCH  # the digits training split, whole batches
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False)  # BatchNorm follows
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):  # (N, 1, 8, 8)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def make(dtype=torch.float64, seed=0):
    """``(model, optimizer, train_step, stats)``."""
    torch.manual_seed(seed)
    model = CNN().to(dtype)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=LR,
    )
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=WARMUP),
            torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=TOTAL_STEPS - WARMUP, eta_min=1e-5
            ),
        ],
        milestones=[WARMUP],
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    stats = {"correct": 0, "total": 0}

    def train_step(inputs, labels):
        model.train()
        outputs = model(inputs)
        loss = loss_fn(outputs, labels)
        l1 = sum(m.weight.abs().sum() for m in (model.conv1, model.conv2))
        l2 = sum(p.pow(2.0).sum() for p in model.parameters())
        loss = loss + L1_ALPHA * l1 + L2_LAMBDA * l2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        optimizer.step()
        scheduler.step()
        stats["total"] += labels.size(0)
        stats["correct"] += outputs.argmax(1).eq(labels).sum().item()
        return loss.item()

    return model, optimizer, train_step, stats


def to_torch(batch, dtype=torch.float64):
    x, y = batch
    return torch.tensor(x[:, None], dtype=dtype), torch.tensor(y, dtype=torch.long)


def main():
    x_train, y_train, x_test, y_test = digits.load()
    model, _, train_step, stats = make()
    for b in tqdm(digits.batches(x_train, y_train, BATCH, EPOCHS)):
        train_step(*to_torch(b))
    model.eval()
    with torch.no_grad():
        test_acc = model(to_torch((x_test, y_test))[0]).argmax(1).eq(torch.tensor(y_test))
    print(f"train accuracy {100 * stats['correct'] / stats['total']:.2f}%, "
          f"test accuracy {100 * test_acc.double().mean().item():.2f}%")  # fmt: skip


if __name__ == "__main__":
    main()
