"""dlcpu.faults: single-bit fault injection into the weights and activations of dlcpu.nn models,
statistical campaigns that survive interruption, and their reports.

    from dlcpu import faults
    camp = faults.Campaign(model, inputs, target="activations", bits="exponent", seed=1)
    state = camp.run("results.jsonl", resume=True)      # n from the statistical sample size
    rows = faults.summarize(faults.read_results("results.jsonl")[1], by="layer")

One room per concern: bitflip (the fault models on raw arrays, over the dlcpu._ext.faults
kernel), sites (layers, weight tensors, logical -> stored offsets), inject (golden run, batched
activation faults, weight faults, outcomes), campaign (sampling, JSONL records, resume), stats
(sample size, Wilson intervals), report (rates by layer/bit/target, heatmap), compress (the int8
variant and the pruned/quantized resilience study).
"""
from .bitflip import (
    BIT_CLASSES,
    Flips,
    bit_error_flips,
    fixed_point_flip,
    flip,
    flip_bits,
    parse_bits,
    random_flips,
    storage_width,
)
from .campaign import Campaign, CampaignState, open_results
from .inject import FAULT_MODELS, OUTCOMES, GoldenRun, activation_faults, classify, weight_fault
from .report import heatmap, plot_heatmap, read_results, summarize
from .sites import ActivationFormat, LayerRef, WeightTensor, find_layer, model_layers, weight_tensors
from .stats import sample_size, wilson_interval, z_for_confidence

__all__ = [
    "BIT_CLASSES",
    "FAULT_MODELS",
    "OUTCOMES",
    "ActivationFormat",
    "Campaign",
    "CampaignState",
    "Flips",
    "GoldenRun",
    "LayerRef",
    "WeightTensor",
    "activation_faults",
    "bit_error_flips",
    "classify",
    "find_layer",
    "fixed_point_flip",
    "flip",
    "flip_bits",
    "heatmap",
    "model_layers",
    "open_results",
    "parse_bits",
    "plot_heatmap",
    "random_flips",
    "read_results",
    "sample_size",
    "storage_width",
    "summarize",
    "weight_fault",
    "weight_tensors",
    "wilson_interval",
    "z_for_confidence",
]
