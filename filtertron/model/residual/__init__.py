"""Residual connections, chosen when the model is built: x_new = res(x, f(x), y0).

Registry: ``RESIDUALS = {"standard": ..., "generalized": ...}``. A block calls both its
residual slots the same way, so it never asks which kind it has.
"""

from filtertron.model.residual.generalized import GeneralizedResidual
from filtertron.model.residual.standard import StandardResidual

RESIDUALS = {"standard": StandardResidual, "generalized": GeneralizedResidual}

__all__ = ["RESIDUALS", "GeneralizedResidual", "StandardResidual"]
