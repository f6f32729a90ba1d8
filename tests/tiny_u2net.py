"""Tiny ONNX models with U^2-Net's signature, written with the `onnx` helper API.

rembg's u2net.onnx takes one image `input.1` [1, 3, 320, 320] and gives seven side outputs, each
[1, 1, 320, 320] after a sigmoid, the first being the fused mask. These files have exactly that
signature, so `droplet3d.segment.U2NetSegmenter` loads and runs them through onnxruntime as it would
the released weights, in milliseconds:

- `random_u2net`: two 3x3 convolutions with random weights (what a wrong or untrained model gives);
- `brightness_u2net`: one 1x1 convolution chosen so the fused output is sigmoid(k * (brightness - 0.5)),
  i.e. a real segmenter of bright objects on dark backgrounds. It checks that our normalisation,
  orientation and resizing put the mask where the object is;
- `constant_u2net`: zero weights, so the mask is constant (a model that finds nothing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIDE = 320
SIDE_OUTPUTS = 7  # d0 (fused) .. d6
INPUT_NAME = "input.1"
OPSET = 11
IR_VERSION = 7  # readable by every onnxruntime release of the last years
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
BRIGHTNESS_GAIN = 20.0


def _write(path: Path, nodes: list, weights: dict[str, np.ndarray], fused: str) -> Path:
    """A graph whose outputs are `fused` and six sigmoid side outputs derived from it."""
    nodes = list(nodes)
    outputs = ["d0"]
    nodes.append(helper.make_node("Sigmoid", [fused], ["d0"]))
    for i in range(1, SIDE_OUTPUTS):
        nodes.append(helper.make_node("Sigmoid", [fused], [f"d{i}"]))
        outputs.append(f"d{i}")
    graph = helper.make_graph(
        nodes,
        "tiny_u2net",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, SIDE, SIDE]) for name in outputs],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def random_u2net(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.3, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4),
        "w2": rng.normal(0, 0.3, (1, 4, 3, 3)), "b2": rng.normal(0, 0.1, 1),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["logit"], pads=[1, 1, 1, 1]),
    ]
    return _write(path, nodes, weights, "logit")


def brightness_u2net(path: Path) -> Path:
    """Input x_c = (p_c - mean_c) / std_c, so sum_c std_c / 3 * x_c + mean(mean) is the brightness p."""
    weights = {
        "w": (BRIGHTNESS_GAIN * IMAGENET_STD / 3).reshape(1, 3, 1, 1),
        "b": np.array([BRIGHTNESS_GAIN * (IMAGENET_MEAN.mean() - 0.5)]),
    }
    nodes = [helper.make_node("Conv", [INPUT_NAME, "w", "b"], ["logit"])]
    return _write(path, nodes, weights, "logit")


def constant_u2net(path: Path) -> Path:
    weights = {"w": np.zeros((1, 3, 1, 1)), "b": np.zeros(1)}
    nodes = [helper.make_node("Conv", [INPUT_NAME, "w", "b"], ["logit"])]
    return _write(path, nodes, weights, "logit")
