"""Calibration: statistics from params (weights) and data (activations), reduced into quantizer state."""

from jq.calib.max import calibrate_weights, replay_weight, weight_operand
