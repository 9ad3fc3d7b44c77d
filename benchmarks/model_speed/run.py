"""Speed of our SegFormer-B0 against transformers' SegFormer-B0 with identical weights, on the CPU.

    python benchmarks/model_speed/run.py            # 512x512, batch 2 (a few minutes on 2 cores)
    python benchmarks/model_speed/run.py --small    # 256x256, fewer repeats (a quick check)

Measures, in one process and interleaved (so both see the same machine load): eval forward
(no grad) and one training step (forward, cross-entropy with ignore 255 on full-resolution
logits, backward, AdamW step). Reports medians and ratios, checks the two models give the same
logits, and writes the "Model speed" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402



def build_pair(num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from segformer.model import SegFormer, create_backbone, load_into
    from segformer.model.checkpoints import convert_state_dict

    torch.manual_seed(0)
    hf = SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_classes))
    ours = SegFormer(create_backbone("mit_b0", layer_norm_eps=1e-5), num_classes=num_classes, embed_dim=256)
    missing, unexpected = load_into(ours, convert_state_dict(hf.state_dict(), "hf"), strict=True)
    return ours, hf


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine() -> str:
    """The shared machine description (benchmarks.common) plus this benchmark's torch threads."""
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:  # run as a script: python benchmarks/model_speed/run.py
        sys.path.insert(0, root)
    from benchmarks.common import machine_line

    return f"{machine_line()} torch threads: {torch.get_num_threads()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="256x256 and fewer repeats")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    size = 256 if args.small else 512
    repeats = args.repeats or (3 if args.small else 5)
    batch, num_classes = 2, 150

    ours, hf = build_pair(num_classes)
    torch.manual_seed(1)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, num_classes, (batch, size, size))
    labels[:, :8] = 255

    # ---- identical outputs (eval mode)
    ours.eval(), hf.eval()
    with torch.no_grad():
        diff = (ours(images) - hf(images).logits).abs().max().item()

    def forward(model: torch.nn.Module, is_hf: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                out = model(images)
                _ = out.logits if is_hf else out
        return run

    def train_step(model: torch.nn.Module, is_hf: bool) -> Callable[[], None]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def run() -> None:
            out = model(images)
            logits = out.logits if is_hf else out
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, labels, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    results: dict[str, dict[str, float]] = {}
    for phase, make, mode in (("forward", forward, "eval"), ("train step", train_step, "train")):
        ours.train(mode == "train"), hf.train(mode == "train")
        runs = {"ours": make(ours, False), "transformers": make(hf, True)}
        for fn in runs.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):  # interleaved so both see the same load
            for name, fn in runs.items():
                times[name].append(timed(fn))
        results[phase] = {name: statistics.median(t) for name, t in times.items()}
        r = results[phase]
        print(f"{phase:10s} ours {r['ours']:.3f}s  transformers {r['transformers']:.3f}s  "
              f"speed-up {r['transformers'] / r['ours']:.2f}x", flush=True)
    print(f"max |logits difference| (eval) = {diff:.2e}")

    if not args.no_write:
        write_results(size, batch, repeats, results, diff)
    return 0


def write_results(size: int, batch: int, repeats: int, results: dict[str, dict[str, float]], diff: float) -> None:
    rows = "\n".join(
        f"| {phase} | {r['ours']:.3f} | {r['transformers']:.3f} | **{r['transformers'] / r['ours']:.2f}x** |"
        for phase, r in results.items()
    )
    section = f"""## Model speed

`python benchmarks/model_speed/run.py{' --small' if size != 512 else ''}` — our SegFormer-B0 against transformers'
SegformerForSemanticSegmentation (B0, 150 classes) with identical weights, {size}x{size}, batch {batch},
median of {repeats} interleaved repeats after one warm-up; {time.strftime('%Y-%m-%d %H:%M')}.
Machine: {machine()} Other processes shared the CPU; ratios are measured in one run.

| phase | ours (s) | transformers (s) | speed-up |
|---|---|---|---|
{rows}

Identical outputs: max |logits difference| in eval mode = {diff:.1e}.

What made the difference (see `segformer/model/head.py`, `segformer/model/backbones/mit.py`):
- Decode head re-association: projection, bilinear upsampling and the 1x1 fuse conv are linear,
  so `W @ concat(up(P_i x_i))` is computed as `sum_i up((W_i P_i) x_i)`. The 4x256-channel map at
  1/4 resolution and the 1024->256 fuse conv on it (about half of B0's multiply-adds at 512x512)
  are never built; parameters and gradients are those of the published layers. In eval mode the
  BatchNorm is folded into the same weights.
- Tokens stay in NHWC memory: the token<->image switches around the depthwise and
  spatial-reduction convs are free permutes of channels_last tensors instead of copies.
- One fused key/value projection and `F.scaled_dot_product_attention` instead of three
  projections and an explicit softmax(QK^T)V.
"""
    from benchmarks.common import write_section  # importable: machine() put the root on sys.path

    write_section("Model speed", section)


if __name__ == "__main__":
    raise SystemExit(main())
