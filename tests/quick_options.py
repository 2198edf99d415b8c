"""Options that make a test's ``compress`` run quicker where what they change is not under test."""

QUICK_EXPORT = ("--exporter", "legacy")
"""For tests whose subject is not the export (fine-tuning, schedules, criteria, int8 gating): the
TorchScript exporter writes resnet20 in about a twentieth of the default exporter's time (0.2 s against
4-5 s here), and the verification after it is the same. The default (torch.export-based) exporter stays
under test wherever the ONNX graph is the subject: test_compress_cli, test_any_model, test_transformers,
test_hf_folder, the demo and the README commands."""
