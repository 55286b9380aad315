"""ONNX export (SQPE): one graph per model version, built with `onnx.helper`.

Inputs: `features` float32 [n_runners, n_features] in raw units (the graph standardises them)
and `market_probs` float32 [n_runners] (1/odds; normalising them is optional because a constant
factor on π cancels in the final softmax). Outputs: `win_probs` = softmax(α·log f + β·log π)
and `fundamental_probs` = f, both [n_runners], each summing to 1 over the race.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.two_stage import TwoStageModel

OPSET = 17
FEATURES_INPUT = "features"
MARKET_INPUT = "market_probs"
WIN_OUTPUT = "win_probs"
FUNDAMENTAL_OUTPUT = "fundamental_probs"


def _constant(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name=name)


def build_onnx_model(model: TwoStageModel, version: str) -> onnx.ModelProto:
    """standardise → linear utility → log f → α·log f + β·log π → softmax, over the race axis."""
    n_features = len(model.feature_names)
    initializers = [
        _constant("feature_mean", model.standardizer.mean),
        _constant("feature_scale", model.standardizer.scale),
        _constant("stage1_weights", model.weights),
        _constant("alpha", model.alpha),
        _constant("beta", model.beta),
    ]
    nodes = [
        helper.make_node("Sub", [FEATURES_INPUT, "feature_mean"], ["centred"]),
        helper.make_node("Div", ["centred", "feature_scale"], ["standardised"]),
        helper.make_node("MatMul", ["standardised", "stage1_weights"], ["utility"]),
        helper.make_node("LogSoftmax", ["utility"], ["log_f"], axis=0),
        helper.make_node("Softmax", ["utility"], [FUNDAMENTAL_OUTPUT], axis=0),
        helper.make_node("Log", [MARKET_INPUT], ["log_pi"]),
        helper.make_node("Mul", ["log_f", "alpha"], ["weighted_log_f"]),
        helper.make_node("Mul", ["log_pi", "beta"], ["weighted_log_pi"]),
        helper.make_node("Add", ["weighted_log_f", "weighted_log_pi"], ["combined_utility"]),
        helper.make_node("Softmax", ["combined_utility"], [WIN_OUTPUT], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        f"velo_oracle_{version}",
        inputs=[
            helper.make_tensor_value_info(
                FEATURES_INPUT, TensorProto.FLOAT, ["n_runners", n_features]
            ),
            helper.make_tensor_value_info(MARKET_INPUT, TensorProto.FLOAT, ["n_runners"]),
        ],
        outputs=[
            helper.make_tensor_value_info(WIN_OUTPUT, TensorProto.FLOAT, ["n_runners"]),
            helper.make_tensor_value_info(FUNDAMENTAL_OUTPUT, TensorProto.FLOAT, ["n_runners"]),
        ],
        initializer=initializers,
    )
    onnx_model = helper.make_model(
        graph,
        producer_name="velo-oracle",
        model_version=1,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    onnx_model.ir_version = 8
    helper.set_model_props(
        onnx_model, {"version": version, "feature_names": ",".join(model.feature_names)}
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model
