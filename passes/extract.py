"""ExtractSubnet and RecalibrateBn: from the supernet to a static float subnet with its own BN statistics."""

from __future__ import annotations

from pydantic import Field

from bitnas.config import StrictModel
from bitnas.errors import UserError
from bitnas.pipeline import Pass, PassContext
from bitnas.space import Candidate
from bitnas.supernets.evaluate import calibration_batches
from bitnas.supernets.static import StaticNet, recalibrate_bn


class ExtractSubnet(Pass):
    """The candidate's static sub-network with weights inherited from the supernet."""

    class Config(StrictModel):
        pass

    def run(self, model: Candidate, ctx: PassContext) -> StaticNet:
        from bitnas.problem import quantization_aware

        supernet = ctx.need("supernet", self.name)
        candidate = supernet.space.validate(model)
        if quantization_aware(supernet):
            raise UserError(f"{self.name}: space '{supernet.space.name}' is trained with its own quantizers (LSQ "
                            "weights, BatchQuant activations); lowering those learned quantizers into a QDQ "
                            "artifact is not built yet, and post-training quantization of its weights would not "
                            "be the network the search measured: compile a space quantized after training")
        ctx.inputs["candidate"] = candidate
        return supernet.extract(candidate)


class RecalibrateBn(Pass):
    """Re-estimate BatchNorm statistics of the subnet on a few training batches (as once-for-all does)."""

    class Config(StrictModel):
        batches: int = Field(4, ge=1, description="training batches forwarded")
        batch_size: int = Field(64, ge=1, description="images per batch")

    def run(self, model: StaticNet, ctx: PassContext) -> StaticNet:
        data = ctx.need("data", self.name)
        calib = calibration_batches(data, self.config.batches, self.config.batch_size, ctx.seed)
        return recalibrate_bn(model, calib)
