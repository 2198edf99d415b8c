"""Layer-wise distillation: the pruned network's layer outputs learn the original's, not only its logits.

Kurtic et al., "Sparse Fine-tuning for Inference Acceleration of Large Language Models" (2023),
recover heavily sparsified models with *SquareHead* distillation: on top of the logit loss, every
block's output in the student is pulled towards the teacher's output at the same place by a
normalized squared error, ``MSE(s, t) / MSE(t, 0)``, so that layers of any scale weigh the same.
Logit distillation gives one signal per image; the layer terms give one per feature map, which is
what a short fine-tuning budget lacks.

Here the matched places are layers (Conv/Linear outputs, before BatchNorm), found by name in the
student and the teacher. After channel surgery a layer's output may keep only some of the
teacher's channels: ``kept`` names them, and the teacher's output is read at those channels.
Layers whose shapes still disagree are skipped (the caller lists the pairs it wants).
"""

from __future__ import annotations

import torch
from torch import nn

from slimmer.train.hooks import TrainHook

EPS = 1e-8


class FeatureDistillHook(TrainHook):
    """Adds ``weight · mean over layers of ‖s − t‖² / ‖t‖²`` to the loss of every step.

    ``teacher`` must be the same module the loop distils from (its forward runs every step, before
    :meth:`loss` is called). ``layers`` are module names present in both models; ``kept`` maps a
    layer name to the teacher's output channels (dim 1) the student's layer still has.
    """

    def __init__(
        self,
        teacher: nn.Module,
        layers: list[str],
        kept: dict[str, torch.Tensor] | None = None,
        weight: float = 1.0,
    ) -> None:
        if not layers:
            raise ValueError("layer-wise distillation needs at least one layer")
        self.teacher = teacher
        self.layers = list(layers)
        self.kept = dict(kept or {})
        self.weight = weight
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        self.remove()
        student_modules = dict(model.named_modules())
        teacher_modules = dict(self.teacher.named_modules())
        missing = [n for n in self.layers if n not in student_modules or n not in teacher_modules]
        if missing:
            raise ValueError(f"layer-wise distillation: no layer named {missing[0]!r} in both models")
        for name in self.layers:
            self._handles.append(student_modules[name].register_forward_hook(self._keep(self._student, name)))
            self._handles.append(teacher_modules[name].register_forward_hook(self._keep(self._teacher, name, True)))

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str, detach: bool = False):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                store[name] = output.detach() if detach else output

        return hook

    def loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        terms = []
        for name in self.layers:
            s, t = self._student.get(name), self._teacher.get(name)
            if s is None or t is None:
                continue
            if name in self.kept:
                t = t.index_select(1, self.kept[name].to(t.device))
            if s.shape != t.shape:
                continue
            s, t = s.float(), t.float()
            terms.append(((s - t) ** 2).mean() / (t**2).mean().clamp_min(EPS))
        self._student.clear()
        self._teacher.clear()
        if not terms:
            return None
        return self.weight * torch.stack(terms).mean()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._student.clear()
        self._teacher.clear()

    def on_end(self, model: nn.Module) -> None:
        self.remove()


def matched_layers(student: nn.Module, teacher: nn.Module, kept: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Conv and Linear layers of ``student`` that ``teacher`` has under the same name with the same
    output width (after reading the teacher at ``kept`` channels where given)."""
    kept = kept or {}
    reference = dict(teacher.named_modules())
    names = []
    for name, layer in student.named_modules():
        other = reference.get(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or type(other) is not type(layer):
            continue
        width = len(kept[name]) if name in kept else other.weight.shape[0]
        if layer.weight.shape[0] == width:
            names.append(name)
    return names
