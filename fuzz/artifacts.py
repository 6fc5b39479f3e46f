"""Fuzzing the artifacts ``transcode check`` runs (issue 22): TFLite flatbuffers and SavedModels.

    python fuzz/artifacts.py --inputs 10000 --seed 22

TFLite: each input is the seed flatbuffer with 1-40 bytes flipped, or cut, or with junk
after its header; it goes through :func:`transcoder.checks.flatbuffer.validate`, and when it
passes, into the interpreter's child process (:class:`~transcoder.checks.tflite_child.Child`,
one at a time, restarted after a crash) and is run once. SavedModel: ``saved_model.pb`` with
bytes flipped or cut, through :func:`~transcoder.checks.artifact_safety.check_saved_model`.
A break: anything but a TranscoderError escaping, or this process dying.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def linear_tflite() -> bytes:
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.ones((4, 3)))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"output_0": tf.nn.relu(tf.matmul(x, self.kernel))}

    module = Linear()
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module).convert(), module


def mutate(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return data[:rng.randrange(8, len(data))]
    if choice == 1:
        return data[:8] + rng.randbytes(rng.randrange(16, 4096))
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 40))):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


#: Inputs that pass the validator and are then loaded and run in a child (each child starts
#: TensorFlow: ~10 s here); the others that pass are counted only.
CHILDREN = 25


def tflite(inputs: int, rng: random.Random, folder: Path) -> Counter:
    from transcoder.checks.flatbuffer import validate
    from transcoder.checks.tflite_child import Child, ChildError
    from transcoder.errors import TranscoderError

    seed, _ = linear_tflite()
    counts: Counter = Counter()
    child = None
    for number in range(inputs):
        data = mutate(rng, seed)
        path = folder / f"tflite-{number}.tflite"
        try:
            validate(path, data)
        except TranscoderError:
            counts["refused by the validator"] += 1
            continue
        if sum(counts[k] for k in counts if k != "refused by the validator") >= CHILDREN:
            counts["passed the validator, not run"] += 1
            continue
        try:
            child = Child(path, data)
            if "serving_default" in child.info["signatures"]:
                child.run({"x": np.ones((2, 4), np.float32)})
            counts["ran"] += 1
        except ChildError:
            counts["interpreter error (exit 2)"] += 1
        except TranscoderError as exc:
            counts["crash contained (exit 2)" if "crashed" in str(exc) else "other exit 2"] += 1
        except Exception as exc:  # noqa: BLE001 - a break
            counts["BREAK"] += 1
            path.write_bytes(data)
            print(f"break: {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            if child is not None:
                child.proc.kill()
                child.proc.wait()
                child = None
    return counts


def savedmodel(inputs: int, rng: random.Random, folder: Path) -> Counter:
    import tensorflow as tf

    from transcoder.checks.artifact_safety import check_saved_model
    from transcoder.errors import TranscoderError

    _, module = linear_tflite()
    seed_dir = folder / "seed.savedmodel"
    tf.saved_model.save(module, str(seed_dir), signatures={"serving_default": module.serve})
    seed = (seed_dir / "saved_model.pb").read_bytes()
    check_saved_model(seed_dir)   # the intact one passes
    counts: Counter = Counter()
    for number in range(inputs):
        (seed_dir / "saved_model.pb").write_bytes(mutate(rng, seed))
        try:
            check_saved_model(seed_dir)
            counts["passed the op check"] += 1
        except TranscoderError as exc:
            counts[type(exc).__name__] += 1
        except Exception as exc:  # noqa: BLE001 - a break
            counts["BREAK"] += 1
            print(f"break: savedmodel {number}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default="tflite,savedmodel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            started = time.perf_counter()
            counts = {"tflite": tflite, "savedmodel": savedmodel}[fmt](
                args.inputs, random.Random(f"{args.seed}-{fmt}"), Path(tmp))
            print(f"{fmt}: {args.inputs} inputs in {time.perf_counter() - started:.0f} s: "
                  f"{dict(sorted(counts.items()))}", flush=True)


if __name__ == "__main__":
    main()
