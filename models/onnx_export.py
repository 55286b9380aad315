"""ONNX export (SQPE): one graph per model version, built with `onnx.helper`.

Inputs: `features` float32 [n_runners, n_features] in raw units (the graph applies the model's
design: standardisation, within-race z-scores, hinges)
and `market_probs` float32 [n_runners] (1/odds; normalising them is optional because a constant
factor on π cancels in the final softmax). Outputs: `win_probs` = softmax(α·log s + β·log π),
s being the stage-1 model chosen for the combination, and `fundamental_probs` = f, the
fundamental model alone; both [n_runners], each summing to 1 over the race.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.design import RACE_STD_FLOOR, Design
from models.two_stage import TwoStageModel

OPSET = 17
FEATURES_INPUT = "features"
MARKET_INPUT = "market_probs"
WIN_OUTPUT = "win_probs"
FUNDAMENTAL_OUTPUT = "fundamental_probs"


def _constant(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name=name)


def _design_nodes(design: Design) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes from raw `features` to the standardised design matrix `design` (see models.design)."""
    n_features = len(design.feature_names)
    initializers = [
        _constant("input_mean", design.inputs.mean),
        _constant("input_scale", design.inputs.scale),
        _constant("output_mean", design.outputs.mean),
        _constant("output_scale", design.outputs.scale),
    ]
    nodes = [
        helper.make_node("Sub", [FEATURES_INPUT, "input_mean"], ["centred_inputs"]),
        helper.make_node("Div", ["centred_inputs", "input_scale"], ["xs"]),
    ]
    blocks = ["xs"]
    if design.race_relative:
        initializers.append(_constant("race_std_floor", RACE_STD_FLOOR))
        nodes += [
            helper.make_node("ReduceMean", ["xs"], ["race_mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["xs", "race_mean"], ["race_centred"]),
            helper.make_node("Mul", ["race_centred", "race_centred"], ["race_sq"]),
            helper.make_node("ReduceMean", ["race_sq"], ["race_var"], axes=[0], keepdims=1),
            helper.make_node("Sqrt", ["race_var"], ["race_std"]),
            helper.make_node("Max", ["race_std", "race_std_floor"], ["race_denominator"]),
            helper.make_node("Div", ["race_centred", "race_denominator"], ["race_z"]),
        ]
        blocks.append("race_z")
    if design.has_hinges:
        n_knots = design.knots.shape[0]
        initializers += [
            _constant("knots", design.knots),
            numpy_helper.from_array(np.array([1], dtype=np.int64), name="knot_axis"),
            numpy_helper.from_array(
                np.array([-1, n_knots * n_features], dtype=np.int64), name="hinge_shape"
            ),
        ]
        nodes += [
            helper.make_node("Unsqueeze", ["xs", "knot_axis"], ["xs_per_knot"]),
            helper.make_node("Sub", ["xs_per_knot", "knots"], ["above_knot"]),
            helper.make_node("Relu", ["above_knot"], ["hinge_cube"]),
            helper.make_node("Reshape", ["hinge_cube", "hinge_shape"], ["hinges"]),
        ]
        blocks.append("hinges")
    nodes += [
        helper.make_node("Concat", blocks, ["expanded"], axis=1),
        helper.make_node("Sub", ["expanded", "output_mean"], ["centred_design"]),
        helper.make_node("Div", ["centred_design", "output_scale"], ["design"]),
    ]
    return nodes, initializers


def build_onnx_model(model: TwoStageModel, version: str) -> onnx.ModelProto:
    """design → linear utility → log s → α·log s + β·log π → softmax, over the race axis."""
    n_features = len(model.feature_names)
    design_nodes, initializers = _design_nodes(model.design)
    initializers += [
        _constant("fundamental_weights", model.fundamental_weights),
        _constant("combination_weights", model.combination_weights),
        _constant("alpha", model.alpha),
        _constant("beta", model.beta),
    ]
    nodes = [
        *design_nodes,
        helper.make_node("MatMul", ["design", "fundamental_weights"], ["fundamental_utility"]),
        helper.make_node("Softmax", ["fundamental_utility"], [FUNDAMENTAL_OUTPUT], axis=0),
        helper.make_node("MatMul", ["design", "combination_weights"], ["stage1_utility"]),
        helper.make_node("LogSoftmax", ["stage1_utility"], ["log_s"], axis=0),
        helper.make_node("Log", [MARKET_INPUT], ["log_pi"]),
        helper.make_node("Mul", ["log_s", "alpha"], ["weighted_log_s"]),
        helper.make_node("Mul", ["log_pi", "beta"], ["weighted_log_pi"]),
        helper.make_node("Add", ["weighted_log_s", "weighted_log_pi"], ["combined_utility"]),
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
