"""Exports of the embedded teachers' students: the merged network and its conditioner, in plain files."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from tdd_lab.conditioner import CLIPTextConditioner, LabelConditioner
from tdd_lab.denoiser import Denoiser
from tdd_lab.export.student import ExportedStudent, Exporter
from tdd_lab.schedules import schedule_from_config


class DigitsExporter(Exporter):
    """``unet/`` (diffusers), ``text_encoder/`` and ``tokenizer/`` of the digits student's conditioner."""

    def __init__(self, conditioner: CLIPTextConditioner):
        self.conditioner = conditioner

    def write(self, directory, net, factory, kohya=False, fused=False):
        directory.mkdir(parents=True, exist_ok=True)
        factory.export_network(net).unet.save_pretrained(directory / "unet")
        self.conditioner.text_encoder.save_pretrained(directory / "text_encoder")
        self.conditioner.tokenizer.save_pretrained(directory / "tokenizer")

    @classmethod
    def load(cls, directory, meta, device="cpu"):
        from diffusers import UNet2DConditionModel

        from tdd_lab.data.digits import digit_prompt
        from tdd_lab.nets.unet import UNetDenoiser
        from tdd_lab.utils.images import save_digit_grid

        unet = UNet2DConditionModel.from_pretrained(directory / "unet").eval()
        denoiser = Denoiser(UNetDenoiser(unet), schedule_from_config(meta["schedule"]), meta["prediction_type"])
        conditioner = CLIPTextConditioner.from_pretrained(directory, [digit_prompt(i) for i in range(10)])
        return ExportedStudent(denoiser.to(device), conditioner.to(device), tuple(meta["sample_shape"]),
                               save_digit_grid, meta)


class MLPExporter(Exporter):
    """``mlp.safetensors`` and ``gmm_teacher.json`` (the mixture and the MLP's settings) of a gmm2d student."""

    def __init__(self, teacher_description: dict):
        self.teacher_description = teacher_description

    def write(self, directory, net, factory, kohya=False, fused=False):
        directory.mkdir(parents=True, exist_ok=True)
        net = factory.export_network(net)
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(directory / "mlp.safetensors"))
        (directory / "gmm_teacher.json").write_text(json.dumps({**self.teacher_description, "net": net.config}, indent=2))

    @classmethod
    def load(cls, directory, meta, device="cpu"):
        from tdd_lab.nets.mlp import MLPDenoiser
        from tdd_lab.utils.images import save_scatter

        info = json.loads((Path(directory) / "gmm_teacher.json").read_text())
        net = MLPDenoiser(**info["net"])
        net.load_state_dict(load_file(str(Path(directory) / "mlp.safetensors")))
        denoiser = Denoiser(net.eval(), schedule_from_config(meta["schedule"]), meta["prediction_type"])
        conditioner = LabelConditioner(info["net"]["num_classes"])  # label -1: the null condition
        return ExportedStudent(denoiser.to(device), conditioner, tuple(meta["sample_shape"]), save_scatter, meta)
