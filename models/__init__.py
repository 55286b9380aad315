"""The Oracle model: Benter two-stage conditional logit, ONNX scoring, online updates, registry."""
