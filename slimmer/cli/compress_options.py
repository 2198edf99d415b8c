"""The options of ``slimmer compress``, one Typer declaration each, grouped by help panel.

:func:`slimmer.cli.compress.compress_command` takes each of them as the default of its parameter of the
same name; the order of its parameters is the order of ``--help``. The choices of every registry-backed
option (``--method``, ``--criterion``, ``--schedule``, ``--regularizer``, ``--exporter``, ``--optimizer``,
``--scope``) are read from the registries (:mod:`slimmer.choices`), so help and validation cannot drift.
"""

from __future__ import annotations

import typer

from slimmer import choices

INPUT, PRUNING, RECOVERY, EXPORT, OUTPUT = "Input", "Pruning", "Recovery", "Export and verification", "Output"


def _one_of(option: str) -> str:
    return "one of: " + ", ".join(choices.REGISTRY_OPTIONS[option]())


# the argument
model = typer.Argument(
    None,
    help="checkpoint: .pt/.pth/.bin state_dict (or a dict wrapping one), .safetensors, or a Hugging Face model "
    "folder (config.json + weights) (optional with --replay)",
    show_default=False,
)

# Input
arch = typer.Option(
    None,
    "--arch",
    help="architecture: built-in name, torchvision:NAME, timm:NAME or pkg.module:callable",
    rich_help_panel=INPUT,
)
input_shape = typer.Option(
    None,
    "--input-shape",
    help="one float input, batch first, e.g. 1,3,224,224 (default: the architecture's)",
    rich_help_panel=INPUT,
)
input_spec = typer.Option(
    None,
    "--input",
    help="one named input of forward(), repeatable: NAME:DTYPE[SHAPE][:LOW..HIGH|:CONSTANT], e.g. "
    "input_ids:int64[1,128]:0..30521 and attention_mask:int64[1,128]:1",
    rich_help_panel=INPUT,
    show_default=False,
)
example_inputs = typer.Option(
    None,
    "--example-inputs",
    help=".npz or .safetensors of named arrays: the real inputs of forward(), batch first",
    rich_help_panel=INPUT,
)
dynamic_axis = typer.Option(
    None,
    "--dynamic-axis",
    help="NAME:DIM, repeatable: another dynamic axis of the ONNX graph (e.g. input_ids:1, a sequence "
    "length); verified at its size and at half of it",
    rich_help_panel=INPUT,
    show_default=False,
)
output_name = typer.Option(
    None,
    "--output-name",
    help="the output leaf used as logits for distillation and accuracy (default: the first floating one)",
    rich_help_panel=INPUT,
)
data = typer.Option(
    None,
    "--data",
    help="fine-tuning / calibration / evaluation data: a .npz (x, y), a folder of IDX files, a folder of "
    "class subfolders of images, fashion-mnist, or text for a Hugging Face folder (.txt: one text per line; "
    ".jsonl: text and optional label)",
    rich_help_panel=INPUT,
)
mean = typer.Option(None, "--mean", help="input normalization mean (one value or per channel)", rich_help_panel=INPUT)
std = typer.Option(None, "--std", help="input normalization std (one value or per channel)", rich_help_panel=INPUT)
eval_samples = typer.Option(
    None,
    "--eval-samples",
    help="evaluation samples used for accuracy (default: the whole test split of fashion-mnist, an IDX folder "
    "or an image folder's val/; 2000 of a split held out of --data)",
    rich_help_panel=INPUT,
)
val_fraction = typer.Option(
    0.1, "--val-fraction", help="fraction of a .npz held out for evaluation", rich_help_panel=INPUT
)
max_length = typer.Option(
    None,
    "--max-length",
    help="text --data (.txt / .jsonl): tokens per text, longer texts are truncated (default: 128 or the "
    "model's positions if fewer)",
    rich_help_panel=INPUT,
)
expect_sha256 = typer.Option(
    None, "--expect-sha256", help="refuse a checkpoint whose sha256 differs", rich_help_panel=INPUT
)
trust_remote_code = typer.Option(
    False,
    "--trust-remote-code",
    help="allow formats that run code when loaded (pickled modules, TorchScript, .pt2)",
    rich_help_panel=INPUT,
)
task = typer.Option(
    None,
    "--task",
    help="Hugging Face folder: feature-extraction (AutoModel) or sequence-classification "
    "(default: what config.json names)",
    rich_help_panel=INPUT,
)

# Pruning
method = typer.Option(
    "unstructured",
    "--method",
    help=f"{_one_of('--method')}; comma-separated to combine (e.g. channel,nm)",
    rich_help_panel=PRUNING,
)
sparsity = typer.Option(
    None,
    "--sparsity",
    help="fraction of weights (or channels) to remove, in [0, 1); default 0.5",
    rich_help_panel=PRUNING,
)
macs_target = typer.Option(
    None, "--macs-target", help="channel, search: keep this fraction of the MACs, in (0, 1]", rich_help_panel=PRUNING
)
nm = typer.Option("2:4", "--nm", help="N:M pattern for --method nm", rich_help_panel=PRUNING)
criterion = typer.Option(
    None,
    "--criterion",
    help=f"importance criterion, {_one_of('--criterion')} (snip, grasp, taylor need --data; l1, l2, "
    "bn-scale rank channels); default lamp for --method unstructured alone, else magnitude",
    rich_help_panel=PRUNING,
)
scope = typer.Option("global", "--scope", help=_one_of("--scope"), rich_help_panel=PRUNING)
schedule = typer.Option(
    "oneshot",
    "--schedule",
    help=f"{_one_of('--schedule')} (all but oneshot spread pruning over fine-tuning)",
    rich_help_panel=PRUNING,
)
round_to = typer.Option(
    None,
    "--round-to",
    help="channel: kept channel counts are multiples of this; relative (the default): each layer to the largest "
    "of 16/8/4/2/1 within a quarter of its width (16 from 64 channels up, which onnxruntime runs fastest)",
    rich_help_panel=PRUNING,
)
prune_parts = typer.Option(
    None,
    "--prune",
    help="channel: what to prune, heads (attention heads), ffn (every other channel group) or heads,ffn (default)",
    rich_help_panel=PRUNING,
)
speedup = typer.Option(
    None,
    "--speedup",
    help="channel: prune until onnxruntime (CPU, 1 thread, batch 1) measures this speedup, e.g. 2.0 "
    "(latency-aware ranking; exit 5 when it cannot be reached)",
    rich_help_panel=PRUNING,
)
latency_aware = typer.Option(
    False,
    "--latency-aware",
    help="channel: prune first the channels that cost more time than their MACs suggest (depthwise convs, "
    "wide activations at high resolution); same MACs target",
    rich_help_panel=PRUNING,
)
latency_costs = typer.Option(
    None,
    "--latency-costs",
    help="with --latency-aware or --speedup: the cost model's constants measured on this machine by "
    "`slimmer bench --calibrate -o FILE` (default: built-in ones)",
    rich_help_panel=PRUNING,
)
sparsity_tolerance = typer.Option(
    0.01, "--sparsity-tolerance", help="exit 5 when achieved sparsity falls short by more", rich_help_panel=PRUNING
)
regularizer = typer.Option(
    None,
    "--regularizer",
    help=f"train with a penalty before the final pruning, {_one_of('--regularizer')}; needs --data",
    rich_help_panel=PRUNING,
)
reg_steps = typer.Option(
    None,
    "--reg-steps",
    help="optimizer steps of the --regularizer phase (default: as many as --finetune-steps)",
    rich_help_panel=PRUNING,
)
search_steps = typer.Option(
    200,
    "--search-steps",
    help="search: bi-level steps (one weight step on half of --data, one architecture step on the other)",
    rich_help_panel=PRUNING,
)

# Recovery
max_accuracy_drop = typer.Option(
    None,
    "--max-accuracy-drop",
    help="exit 5, with no ONNX file written, when the final model's accuracy is more than this many points "
    "below the original's (needs labelled --data)",
    rich_help_panel=RECOVERY,
)
finetune_steps = typer.Option(
    0, "--finetune-steps", help="optimizer steps of fine-tuning (needs --data)", rich_help_panel=RECOVERY
)
batch_size = typer.Option(128, "--batch-size", help="fine-tuning batch size", rich_help_panel=RECOVERY)
lr = typer.Option(
    None,
    "--lr",
    help="peak learning rate (cosine with warm-up), > 0 (default: 0.1 for SGD fine-tuning after unstructured or "
    "channel pruning, where the model set recovered most; 0.01 otherwise)",
    rich_help_panel=RECOVERY,
)
optimizer = typer.Option(
    "sgd", "--optimizer", help=f"{_one_of('--optimizer')} (sgd: Nesterov momentum)", rich_help_panel=RECOVERY
)
kd = typer.Option(
    None,
    "--kd/--no-kd",
    help="distil from the original model while fine-tuning (default: on, except after unstructured or channel "
    "pruning alone on labelled data with no --kd-weight or --kd-layers, where cross-entropy alone recovered more; "
    "a --regularizer phase distils unless the method is channel alone)",
    rich_help_panel=RECOVERY,
)
kd_weight = typer.Option(
    None,
    "--kd-weight",
    help="with labels, distillation's share of the loss, in (0, 1]; the rest is cross-entropy "
    "(without labels: distillation only); default 0.5, 0.9 with --method search (TAS's transfer)",
    rich_help_panel=RECOVERY,
)
kd_layers = typer.Option(
    0.0,
    "--kd-layers",
    help="weight of layer-wise distillation: every Conv/Linear output also learns the original's "
    "(normalized squared error); 0 = logits only",
    rich_help_panel=RECOVERY,
)
regrow = typer.Option(
    False,
    "--regrow/--no-regrow",
    help="unstructured: fine-tune from the weights before masking and re-choose each layer's largest "
    "weights every step (pruned by mistake can come back; counts per layer stay)",
    rich_help_panel=RECOVERY,
)
nm_fixed_mask = typer.Option(
    False,
    "--nm-fixed-mask",
    help="hold the one-shot N:M pattern fixed while fine-tuning (default: SR-STE may move it)",
    rich_help_panel=RECOVERY,
)
reconstruct = typer.Option(
    None,
    "--reconstruct/--no-reconstruct",
    help="re-solve each pruned layer by least squares to match the original's outputs (needs --data); "
    "default: only when no fine-tuning follows",
    show_default=False,
    rich_help_panel=RECOVERY,
)
fold_latency_gate = typer.Option(
    "measure",
    "--fold-latency-gate",
    help="layer folding: measure (keep only the merges onnxruntime does not measure slower) or off (keep all)",
    rich_help_panel=RECOVERY,
)
fold_alpha_start = typer.Option(
    0.05,
    "--fold-alpha-start",
    help="layer folding: the linearized activations' starting α, in (0, 1] (1 = already linear)",
    rich_help_panel=RECOVERY,
)
recon_samples = typer.Option(
    512, "--recon-samples", help="training inputs used by --reconstruct", rich_help_panel=RECOVERY
)
augment = typer.Option(
    False,
    "--augment/--no-augment",
    help="pad-crop-flip augmentation while fine-tuning (off by default: a brief fine-tune recovers more "
    "accuracy on the images as they are)",
    rich_help_panel=RECOVERY,
)
progress_every = typer.Option(
    10.0, "--progress-every", help="seconds between fine-tuning progress lines", rich_help_panel=RECOVERY
)
amp = typer.Option(
    True, "--amp/--no-amp", help="mixed precision when fine-tuning on CUDA (ignored on CPU)", rich_help_panel=RECOVERY
)
device = typer.Option(
    "auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N", rich_help_panel=RECOVERY
)

# Export and verification
opset = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)", rich_help_panel=EXPORT)
dynamic_batch = typer.Option(
    True, "--dynamic-batch/--static-batch", help="dynamic batch axis in the ONNX graph", rich_help_panel=EXPORT
)
exporter = typer.Option(
    "dynamo",
    "--exporter",
    help=f"{_one_of('--exporter')} (dynamo: torch.export-based, the default; legacy: TorchScript tracing)",
    rich_help_panel=EXPORT,
)
quantize = typer.Option(
    None,
    "--quantize",
    help="int8: after the float file is verified, static int8 (onnxruntime QDQ, per-channel weights), "
    "calibrated on --data and gated on accuracy, agreement and measured latency (<output>.int8.onnx)",
    rich_help_panel=EXPORT,
)
calibration_method = typer.Option(
    "minmax", "--calibration-method", help="int8: minmax, entropy or percentile", rich_help_panel=EXPORT
)
calibration_samples = typer.Option(
    128, "--calibration-samples", help="int8: calibration inputs from --data", rich_help_panel=EXPORT
)
max_quantization_drop = typer.Option(
    1.0,
    "--max-quantization-drop",
    help="int8: exit 5 when int8 accuracy is more than this many points below float",
    rich_help_panel=EXPORT,
)
min_agreement = typer.Option(
    0.9, "--min-agreement", help="int8: least top-1 agreement with the float file", rich_help_panel=EXPORT
)
min_cosine = typer.Option(
    0.99, "--min-cosine", help="int8: least output cosine with the float file", rich_help_panel=EXPORT
)
quantize_anyway = typer.Option(
    False,
    "--quantize-anyway",
    help="int8: keep the int8 file even when onnxruntime measures it no faster than float",
    rich_help_panel=EXPORT,
)
measure_latency = typer.Option(
    False,
    "--measure-latency",
    help="time the original's export against the pruned file in onnxruntime (paired, interleaved; CPU, "
    "1 thread, batch 1) and report both, with the file sizes",
    rich_help_panel=EXPORT,
)
latency_pairs = typer.Option(30, "--latency-pairs", help="paired runs of --measure-latency", rich_help_panel=EXPORT)
atol = typer.Option(1e-4, "--atol", help="verification absolute tolerance", rich_help_panel=EXPORT)
rtol = typer.Option(1e-3, "--rtol", help="verification relative tolerance", rich_help_panel=EXPORT)
keep_failed = typer.Option(
    False, "--keep-failed", help="keep an artifact that failed verification, marked as failed", rich_help_panel=EXPORT
)

# Output
output = typer.Option(
    None, "-o", "--output", help="ONNX file (default: <model stem>.slim.onnx beside the model)", rich_help_panel=OUTPUT
)
report = typer.Option(None, "--report", help="JSON report (default: <output>.report.json)", rich_help_panel=OUTPUT)
save_pretrained = typer.Option(
    None,
    "--save-pretrained",
    help="Hugging Face folder input: also write the pruned model as a folder (weights, plan, config, tokenizer)",
    rich_help_panel=OUTPUT,
)
replay = typer.Option(
    None,
    "--replay",
    help="run again with the config a report recorded (options given here override it; "
    "--trust-remote-code is never read from the report)",
    rich_help_panel=OUTPUT,
)
seed = typer.Option(
    0,
    "--seed",
    help="seed for every random choice; byte-identical files need the same seed, inputs, machine, versions "
    "and thread count (OMP_NUM_THREADS)",
    rich_help_panel=OUTPUT,
)
force = typer.Option(False, "--force", help="allow replacing existing outputs", rich_help_panel=OUTPUT)
json_output = typer.Option(
    False, "--json", help="print exactly one JSON object (the report) on stdout", rich_help_panel=OUTPUT
)
debug = typer.Option(False, "--debug", help="show tracebacks", rich_help_panel=OUTPUT)
