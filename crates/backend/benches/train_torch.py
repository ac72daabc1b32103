"""PyTorch's half of nasc's training benchmark (crates/backend/benches/train.rs).

One process per model, shape and batch, so that its peak memory is that
model's. The benchmark runs it right after nasc's own process on the same row
and passes the number of timed steps nasc ran:

    python3 train_torch.py --model resnet18 --shape 32 --batch 64 --steps 10 --threads 2

Models: tests/reference/torch_zoo.py's ZOO (parameter counts held equal to
zoo/*.arch) and the benchmark's two extra models, written here again.
Protocol, as nasc's: synthetic images (uniform bytes through (x/255 - 0.5) /
0.25), 10 classes, SGD with momentum 0.9, lr 0.01, no weight decay;
2 warm-up steps, then --steps timed steps (forward, loss, backward, step);
evaluation of 512 images at batch 256 in eval mode without gradients.
Prints one JSON line: params, steps, train_img_s, eval_img_s, peak_rss_mib,
or {"error": ...} when the model does not build or run.
"""
import argparse
import json
import pathlib
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "tests" / "reference"))
from torch_zoo import ZOO  # noqa: E402

WARMUP_STEPS = 2
EVAL_IMAGES = 512
EVAL_BATCH = 256


def smallcnn(cin, classes, hw):
    side = hw // 4
    return nn.Sequential(
        nn.Conv2d(cin, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, classes))


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + x)


def bnres(cin, classes, hw):
    return nn.Sequential(
        nn.Conv2d(cin, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        Res(32),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


MODELS = dict(ZOO, smallcnn=smallcnn, bnres=bnres)
SHAPES = {"28": (1, 28), "32": (3, 32)}


def images(n, cin, hw, gen):
    x = torch.randint(0, 256, (n, cin, hw, hw), generator=gen, dtype=torch.uint8)
    return (x.float() / 255.0 - 0.5) / 0.25, torch.randint(0, 10, (n,), generator=gen)


def run(a):
    cin, hw = SHAPES[a.shape]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = MODELS[a.model](cin, 10, hw)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    model.train()
    xw, yw = images(WARMUP_STEPS * a.batch, cin, hw, gen)
    for i in range(WARMUP_STEPS):
        step(xw[i * a.batch:(i + 1) * a.batch], yw[i * a.batch:(i + 1) * a.batch])
    x, y = images(a.steps * a.batch, cin, hw, gen)
    start = time.perf_counter()
    for i in range(a.steps):
        step(x[i * a.batch:(i + 1) * a.batch], y[i * a.batch:(i + 1) * a.batch])
    train_s = time.perf_counter() - start

    model.eval()
    xe, _ = images(EVAL_IMAGES, cin, hw, gen)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, EVAL_IMAGES, EVAL_BATCH):
            model(xe[i:i + EVAL_BATCH]).argmax(1)
    eval_s = time.perf_counter() - start
    return {
        "params": params,
        "steps": a.steps,
        "train_img_s": a.steps * a.batch / train_s,
        "eval_img_s": EVAL_IMAGES / eval_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=sorted(MODELS))
    ap.add_argument("--shape", default="28", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    try:
        print(json.dumps(run(a)))
    except RuntimeError as e:
        print(json.dumps({"error": str(e).splitlines()[0]}))


if __name__ == "__main__":
    main()
