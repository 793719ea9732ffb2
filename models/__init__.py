"""The model zoo (installed as ``qcompiler.zoo``): torch builders, ONNX export keeping BatchNormalization,
deterministic digits training and evaluation, calibration data.  Needs the ``torch`` extra."""

from . import zoo  # noqa: F401
