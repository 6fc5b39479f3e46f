"""Artifacts given to `transcode check` (issue 22): a SavedModel is shown to hold only ops that
compute before it is loaded (one that writes files is refused, and writes nothing); a TFLite
flatbuffer is validated before the interpreter sees it, and the interpreter runs in a child
process: a malformed file is exit 2 in one line, never a crash of the command."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
tf = pytest.importorskip("tensorflow", reason="needs tensorflow: pip install '.[check]'")

from hostile import one_error_line, run_bounded  # noqa: E402

NET = "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
      "        self.fc = torch.nn.Linear(4, 3)\n    def forward(self, x):\n        return self.fc(x)\n"

#: A SavedModel whose resource initialiser (run by tf.saved_model.load) and serving function
#: (run by the check) each write a file; built in a child so that this process keeps no state.
EVIL = textwrap.dedent("""
    import sys
    import tensorflow as tf

    folder, marks = sys.argv[1], sys.argv[2]

    class Writer(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[])

        def _initialize(self):
            tf.io.write_file(marks + "/at-load", "ran at load")
            return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

    class Evil(tf.Module):
        def __init__(self):
            super().__init__()
            self.writer = Writer()
            self.kernel = tf.Variable(tf.ones((4, 3)))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            tf.io.write_file(marks + "/at-call", "ran at call")
            return {"output_0": tf.matmul(x, self.kernel)}

    evil = Evil()
    tf.saved_model.save(evil, folder, signatures={"serving_default": evil.serve})
""")


@pytest.fixture
def net(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    torch.manual_seed(0)
    torch.save({"fc." + k: v for k, v in torch.nn.Linear(4, 3).state_dict().items()},
               tmp_path / "src.pt")
    return tmp_path


def check(folder, artifact):
    return run_bounded(["check", folder / "src.pt", artifact, "--model", f"{folder / 'net.py'}:Net",
                        "--input-shape", "2,4"], folder, timeout=240, address_mib=16384)


def test_a_savedmodel_that_writes_files_is_refused_before_it_is_loaded(net):
    marks = net / "marks"
    marks.mkdir()
    subprocess.run([sys.executable, "-c", EVIL, net / "evil.savedmodel", marks], check=True,
                   capture_output=True, timeout=240)
    run = check(net, net / "evil.savedmodel")
    assert run.code == 2, run
    line = one_error_line(run.stderr)
    assert "evil.savedmodel" in line and "op WriteFile" in line, line
    assert list(marks.iterdir()) == []     # nothing ran: no file written at load or at call


def linear_tflite() -> bytes:
    """A float32 (None, 4) -> (None, 3) matmul with a serving_default signature."""
    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.ones((4, 3)))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"output_0": tf.matmul(x, self.kernel)}

    module = Linear()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    return converter.convert()


def test_a_tflite_with_a_valid_header_and_junk_is_exit_2_in_one_line(net):
    flatbuffer = linear_tflite()
    rng = random.Random(22)
    junk = net / "junk.tflite"
    junk.write_bytes(flatbuffer[:8] + rng.randbytes(2048))
    run = check(net, junk)
    assert run.code == 2, run
    line = one_error_line(run.stderr)
    assert "junk.tflite" in line and "malformed TFLite flatbuffer" in line, line


def test_flipped_bytes_are_refused_or_run_never_crash(tmp_path):
    """40 flipped bytes, 30 times: each file is refused by the validator, or loads in the
    child; none reaches an interpreter in this process."""
    from transcoder.checks.flatbuffer import validate
    from transcoder.errors import FormatError

    flatbuffer = linear_tflite()
    rng = random.Random(40)
    refused = 0
    for _ in range(30):
        data = bytearray(flatbuffer)
        for _ in range(40):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            validate(tmp_path / "flipped.tflite", bytes(data))
        except FormatError:
            refused += 1
    assert refused >= 25    # the rest are left to the child (see below)
    validate(tmp_path / "intact.tflite", flatbuffer)   # an intact file passes


def test_a_crash_of_the_interpreter_is_one_line_and_exit_2_not_the_command(tmp_path):
    """The interpreter runs in a child: when it dies (SIGSEGV), the check gets one FormatError."""
    import numpy as np

    from transcoder.checks.tflite_child import Child
    from transcoder.errors import FormatError

    child = Child(tmp_path / "m.tflite", linear_tflite())
    out = child.run({"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(out["output_0"], np.full((2, 3), 4.0, np.float32))
    os.kill(child.proc.pid, signal.SIGSEGV)
    with pytest.raises(FormatError, match=r"crashed running it \(signal 11\)"):
        child.run({"x": np.ones((2, 4), np.float32)})
