"""Quantizing a checkpoint larger than what the process may hold.

A 24-layer MLP of 4096x4096 Linear layers (ReLU between, biases; 1.6 GB in
float32) is saved as one safetensors file and as a sharded copy (4 shards and
their ``model.safetensors.index.json``). Each run, in a fresh process, builds the
model on the meta device, imports and warms up torch and skquant (a small
quantization), resets the peak resident memory (``/proc/self/clear_refs``) and
runs ``quantize_model(meta_model, quantizer, X, checkpoint=..., output=...)`` on
256 rows; it reports the peak resident memory above the warmed-up footprint
(``VmHWM`` against ``VmRSS`` before the call) and the seconds. Then the same
model is quantized in memory (loaded whole) and every layer's codes are compared
with those of the file, read back into a meta-built model with ``load_into``.

``--model lm`` measures a language model's shape instead: an embedding of
32000 x 2048 tied to its decoder (an ``nn.Linear(2048, 32000)``), 8 Linear layers
of 2048 x 2048 with ReLU between, the checkpoint storing the tied weight once
under the embedding's name (as published checkpoints do), ``skip=["emb"]``: the
embedding stays float (read at the start and held once in the walk) while the
decoder is quantized.

``--model blocks`` is a stack of residual MLP blocks (768 -> 3072 -> 768, GELU)
in an ``nn.ModuleList`` that the forward loops over, as language models' are,
on 16 sequences of 256 tokens (4096 rows a layer, ``max_rows``' default): a
module that is not a sequence, whose layers' sampled inputs come from float
passes. ``--held-rows-bytes`` sets the most bytes of those inputs the walk holds
(``skquant.torch._capture.HELD_ROWS_BYTES``; ``all`` for one pass that holds
every layer's, as before it had a bound); one row per value.

Run (about 15 minutes; 5 GB of disk in a temporary folder):
    PYTHONPATH=. .venv/bin/python benchmarks/bench_checkpoint.py \\
        --json benchmarks/results/bench_checkpoint.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_checkpoint.py --model lm \\
        --quantizers gpfq-4 --json benchmarks/results/bench_checkpoint_lm.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_checkpoint.py --model blocks \\
        --quantizers gptq-4 --forms file \\
        --held-rows-bytes all default 67108864 \\
        --json benchmarks/results/bench_checkpoint_blocks.json
    # the docs' table, from the stored rows:
    PYTHONPATH=. .venv/bin/python benchmarks/bench_checkpoint.py \\
        --json benchmarks/results/bench_checkpoint.json --rst
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skquant import GPTQQuantizer, GreedyPathQuantizer, UniformQuantizer

N_LAYERS, WIDTH, ROWS = 24, 4096, 256
QUANTIZERS = {
    "uniform-4": lambda: UniformQuantizer(n_bits=4),
    "gpfq-4": lambda: GreedyPathQuantizer(n_bits=4),
    "gptq-4": lambda: GPTQQuantizer(n_bits=4),
}


LM_VOCAB, LM_WIDTH, LM_LAYERS = 32000, 2048, 8


def build_lm(n_layers=LM_LAYERS, width=LM_WIDTH, vocab=LM_VOCAB):
    """An embedding tied to its decoder, Linear layers between."""
    import torch

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, width)
            self.body = build(n_layers, width)
            self.dec = torch.nn.Linear(width, vocab, bias=False)
            self.dec.weight = self.emb.weight

        def forward(self, tokens):
            return self.dec(torch.relu(self.body(self.emb(tokens))))

    return LM()


BLOCKS, BLOCK_WIDTH, BLOCK_TOKENS = 12, 768, (16, 256)


def build_blocks(n_blocks=BLOCKS, width=BLOCK_WIDTH):
    """Residual MLP blocks in an nn.ModuleList that the forward loops over."""
    import torch
    from torch import nn

    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(
                nn.ModuleDict(
                    {
                        "up": nn.Linear(width, 4 * width),
                        "down": nn.Linear(4 * width, width),
                    }
                )
                for _ in range(n_blocks)
            )

        def forward(self, x):
            for block in self.blocks:
                x = x + block["down"](torch.nn.functional.gelu(block["up"](x)))
            return x

    return Blocks()


def build(n_layers=N_LAYERS, width=WIDTH):
    import torch

    layers = []
    for i in range(n_layers):
        layers.append(torch.nn.Linear(width, width))
        if i < n_layers - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


MODELS = {"mlp": build, "lm": build_lm, "blocks": build_blocks}
SKIP = {"mlp": [], "lm": ["emb"], "blocks": []}
LAYERS = {"mlp": N_LAYERS, "lm": LM_LAYERS, "blocks": BLOCKS}
WEIGHT_LAYERS = {"mlp": lambda n: n, "lm": lambda n: n + 1, "blocks": lambda n: 2 * n}


def calibration(kind, width=WIDTH, rows=ROWS):
    import torch

    gen = torch.Generator().manual_seed(0)
    if kind == "lm":  # rows tokens: 4 sequences of rows // 4
        return torch.randint(0, LM_VOCAB, (4, rows // 4), generator=gen)
    if kind == "blocks":
        return torch.randn(*BLOCK_TOKENS, BLOCK_WIDTH, generator=gen)
    return torch.randn(rows, width, generator=gen)


def write_checkpoints(folder, kind, n_layers):
    """The float model as one file and as 4 shards with their index (a tied
    weight stored once, under its first name)."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = MODELS[kind](n_layers)
    with torch.no_grad():  # weights at a scale that keeps activations alive
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.weight.shape[0] == m.in_features:
                m.weight.mul_(1.7)
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if not (kind == "lm" and k == "dec.weight")
    }
    single = folder / "model.safetensors"
    save_file(state, single)
    shards = folder / "sharded"
    shards.mkdir()
    keys = list(state)
    per = -(-len(keys) // 4)
    weight_map = {}
    for i in range(4):
        name = f"model-{i + 1:05d}-of-00004.safetensors"
        part = {k: state[k] for k in keys[i * per : (i + 1) * per]}
        save_file(part, shards / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {}, "weight_map": weight_map}
    (shards / "model.safetensors.index.json").write_text(json.dumps(index))
    return single, shards, single.stat().st_size


def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)  # pragma: no cover


def child(args):
    """One measured run (in its own process)."""
    import torch

    from skquant.torch import _capture, quantize_model

    (held,) = args.held_rows_bytes
    if held != "default":
        _capture.HELD_ROWS_BYTES = float("inf") if held == "all" else int(held)
    quantizer = QUANTIZERS[args.quantizer]()
    # warm up: the kernels this run will use, on a small model
    small = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    quantize_model(small, quantizer, torch.randn(32, 64))
    with torch.device("meta"):
        model = MODELS[args.model](args.layers)
    X = calibration(args.model)
    Path("/proc/self/clear_refs").write_text("5")
    base = status("VmRSS")
    start = time.perf_counter()
    quantize_model(
        model,
        quantizer,
        X,
        checkpoint=args.checkpoint,
        output=args.out,
        skip=SKIP[args.model],
    )
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    print(json.dumps({"base": base, "peak": peak, "seconds": seconds}))


def in_memory_codes(kind, single, quantizer_name, out, n_layers):
    """Every layer's codes quantized in memory, and those of the file."""
    import torch
    from safetensors.torch import load_file

    from skquant.torch import load_into, quantize_model

    quantizer = QUANTIZERS[quantizer_name]()
    model = MODELS[kind](n_layers)
    model.load_state_dict(load_file(single), strict=kind != "lm")  # (tie stored once)
    start = time.perf_counter()
    ref = quantize_model(model, quantizer, calibration(kind), skip=SKIP[kind])
    seconds = time.perf_counter() - start
    del model
    with torch.device("meta"):
        skeleton = MODELS[kind](n_layers)
    got = dict(load_into(skeleton, out).named_modules())
    layers = {n: m for n, m in ref.named_modules() if hasattr(m, "weight_codes")}
    same = len(layers) == WEIGHT_LAYERS[kind](n_layers) and all(
        torch.equal(m.weight_codes, got[n].weight_codes)
        and torch.equal(m.weight_scale, got[n].weight_scale)
        for n, m in layers.items()
    )
    got = got[""]
    x = calibration(kind)[:8]
    outputs = torch.equal(ref(x), got(x))
    return same, outputs, seconds


def print_rst(rows):
    from bench_runtime import print_rst_table

    held = any("held_rows_bytes" in r for r in rows)  # (rows stored before it)
    cols = [
        "quantizer",
        "checkpoint",
        *(["rows held"] if held else []),
        "peak above footprint",
        "of the checkpoint",
        "seconds",
        "in memory s",
        "file MB",
        "codes as in memory",
    ]
    lines = [
        [
            r["quantizer"],
            r["checkpoint"],
            *([r.get("held_rows_bytes", "default")] if held else []),
            f"{r['above_bytes'] / 1e9:.2f} GB",
            f"{r['above_bytes'] / r['checkpoint_bytes']:.2f}",
            f"{r['seconds']:.0f}",
            f"{r['in_memory_seconds']:.0f}",
            f"{r['file_bytes'] / 1e6:.0f}",
            "yes" if r["same_codes"] and r["same_outputs"] else "no",
        ]
        for r in rows
    ]
    size = rows[0]["checkpoint_bytes"] / 1e9
    foot = max(r["footprint_bytes"] for r in rows) / 1e9
    print_rst_table(
        f"{size:.2f} GB float32 checkpoint, footprint at most {foot:.2f} GB",
        cols,
        lines,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=Path("bench_checkpoint.json"))
    p.add_argument("--quantizers", nargs="+", default=list(QUANTIZERS))
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--layers", type=int, default=None, help="default: the model's")
    p.add_argument("--forms", nargs="+", default=["file", "shards"])
    p.add_argument(
        "--held-rows-bytes",
        nargs="+",
        default=["default"],
        help="bounds on the sampled inputs a walk holds: bytes, 'all' or 'default'",
    )
    p.add_argument("--rst", action="store_true", help="print --json's rows as reST")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quantizer", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.rst:
        print_rst(json.loads(args.json.read_text()))
        return
    if args.layers is None:
        args.layers = LAYERS[args.model]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        single, shards, size = write_checkpoints(folder, args.model, args.layers)
        print(f"checkpoint: {size / 1e9:.2f} GB float32", flush=True)
        forms = {"file": single, "shards": shards}
        for qname, form, held in (
            (q, f, h)
            for q in args.quantizers
            for f in args.forms
            for h in args.held_rows_bytes
        ):
            ckpt = forms[form]
            out = folder / f"{qname}-{form}.skq"
            res = subprocess.run(
                [sys.executable, __file__, "--child", "--quantizer", qname]
                + ["--model", args.model, "--layers", str(args.layers)]
                + ["--checkpoint", str(ckpt), "--out", str(out)]
                + ["--held-rows-bytes", held],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": os.getcwd()},
            )
            if res.returncode:
                raise RuntimeError(res.stderr)
            run = json.loads(res.stdout.strip().splitlines()[-1])
            same, outputs, mem_seconds = in_memory_codes(
                args.model, single, qname, out, args.layers
            )
            row = {
                "model": args.model,
                "quantizer": qname,
                "checkpoint": form,
                "held_rows_bytes": held,
                "checkpoint_bytes": size,
                "file_bytes": out.stat().st_size,
                "footprint_bytes": run["base"],
                "peak_bytes": run["peak"],
                "above_bytes": run["peak"] - run["base"],
                "seconds": run["seconds"],
                "in_memory_seconds": mem_seconds,
                "same_codes": same,
                "same_outputs": outputs,
            }
            rows.append(row)
            print(
                f"{qname:<10} {form:<7} rows held {held:<8} "
                f"footprint {run['base'] / 1e9:.2f} GB, "
                f"peak +{row['above_bytes'] / 1e9:.2f} GB "
                f"({row['above_bytes'] / size:.2f} of the checkpoint), "
                f"{run['seconds']:.0f} s (in memory {mem_seconds:.0f} s), "
                f"file {row['file_bytes'] / 1e6:.0f} MB, codes "
                f"{'equal' if same else 'DIFFERENT'}, outputs "
                f"{'equal' if outputs else 'DIFFERENT'}",
                flush=True,
            )
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
