"""Static TensorFlow-"same" padding for timm EfficientNets, as efficientnet_pytorch does it.

Why: the official VersaMammo student is efficientnet_pytorch's B5, whose convolutions fix their
"same" pads at construction for ``image_size=456`` (``Conv2dStaticSamePadding``) and keep those
pads when fed 512x512 images. timm's ``tf_`` models compute the pads from the actual input
instead. For stride-1 convs with odd kernels both give the same symmetric pad at every size, but
for stride-2 convs on odd-sized stages of the 456 trace (B5: 57 and 29 pixels) the 456 pads
differ from the 512 ones (e.g. (1, 1) instead of (0, 1)), which shifts every later feature.

``apply_static_same_padding`` records each dynamic-padding conv's input size during one forward
at the reference size (forward pre-hooks; run on the meta device, so it costs nothing), computes
the TF-same pads for those sizes and swaps the convs for ``StaticSamePadConv2d`` modules that
apply exactly those pads at any input size. Parameters are shared, so state-dict keys and values
do not change.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
from torch import nn
from torch.func import functional_call

_DYNAMIC_SAME = (Conv2dSame, Conv2dSameExport)


def tf_same_pads(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """TF "SAME" pads for an input of ``size`` (H, W), in ``F.pad`` order (left, right, top, bottom).

    The total pad makes the output ceil(size / stride); an odd total puts the extra pixel
    right/bottom.
    """
    totals = []
    for length, k, s, d in zip(size, kernel, stride, dilation):
        out = math.ceil(length / s)
        totals.append(max((out - 1) * s + (k - 1) * d + 1 - length, 0))
    pad_h, pad_w = totals
    return (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)


class StaticSamePadConv2d(nn.Conv2d):
    """Conv2d with fixed (left, right, top, bottom) zero pads computed for a reference input size.

    Equivalent to efficientnet_pytorch's ``Conv2dStaticSamePadding``; the pads do not depend on
    the input shape, which keeps ONNX export simple.
    """

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int], reference_size: tuple[int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                         conv.dilation, conv.groups, conv.bias is not None, device="meta")
        self.weight = conv.weight
        self.bias = conv.bias
        self.static_pads = tuple(int(p) for p in pads)
        self.reference_size = tuple(int(s) for s in reference_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.static_pads):
            x = F.pad(x, self.static_pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, static_pads={self.static_pads}, reference_size={self.reference_size}"


def trace_conv_input_sizes(model: nn.Module, image_size: int, in_chans: int = 3,
                           types: tuple[type, ...] = _DYNAMIC_SAME) -> dict[str, tuple[int, int]]:
    """Input (H, W) of every module of ``types`` in one ``forward_features`` at ``image_size``.

    Runs on the meta device through ``torch.func.functional_call``, so no arithmetic is done and
    the model's own tensors and running statistics are untouched.
    """
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, types):
            def hook(_mod: nn.Module, args: tuple, _name: str = name) -> None:
                sizes[_name] = (int(args[0].shape[-2]), int(args[0].shape[-1]))
            handles.append(module.register_forward_pre_hook(hook))
    tensors = {k: torch.empty_like(v, device="meta") for k, v in model.named_parameters()}
    tensors.update({k: torch.empty_like(v, device="meta") for k, v in model.named_buffers()})
    x = torch.empty(1, in_chans, image_size, image_size, device="meta")
    forward = getattr(model, "forward_features", None)
    try:
        with torch.no_grad():
            if forward is not None:
                # functional_call swaps the tensors for the duration of a module call; call the
                # module itself through a tiny wrapper so forward_features sees the meta tensors.
                functional_call(_ForwardFeatures(model), {f"model.{k}": v for k, v in tensors.items()}, (x,))
            else:
                functional_call(model, tensors, (x,))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


class _ForwardFeatures(nn.Module):
    """Wrapper whose forward is the wrapped model's ``forward_features`` (for functional_call)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def apply_static_same_padding(model: nn.Module, image_size: int, in_chans: int = 3) -> dict[str, tuple[int, ...]]:
    """Replace the dynamic "same" convs of ``model`` in place by static ones fixed for ``image_size``.

    Returns {module name: pads} for every replaced conv. A model without dynamic-padding convs is
    left as is.
    """
    sizes = trace_conv_input_sizes(model, image_size, in_chans)
    replaced: dict[str, tuple[int, ...]] = {}
    for name, size in sizes.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, child)
        pads = tf_same_pads(size, conv.kernel_size, conv.stride, conv.dilation)
        setattr(parent, child, StaticSamePadConv2d(conv, pads, size))
        replaced[name] = pads
    return replaced
