"""Per-example gradient clipping for DP-SGD in one backward pass, without Opacus' hooks.

DP-SGD needs, for every example i of a batch, the norm of its *full* gradient g_i (all
trainable parameters together), the clip factor ``c_i = min(1, C / (||g_i|| + 1e-6))``
(Opacus' formula) and the sum ``sum_i c_i g_i``, to which the optimizer then adds Gaussian
noise. Opacus' default ("hooks") materialises every g_i for every parameter (batch size x
number of weights floats; 1.4 GB for a ResNet-18 at batch 32), falls back to functorch for
layers it has no rule for (the U-Net's transposed convolutions) and also lets autograd
compute the ordinary weight gradients it then throws away.

:class:`FusedClipper` computes the same two quantities exactly, per layer, from the layer's
input ``a`` and the gradient ``b`` of the loss with respect to the layer's output (both kept
by hooks during one ordinary forward and backward pass, the "book-keeping" technique of Bu
et al., 2023):

* during that backward pass the weights are frozen, so autograd only propagates activation
  gradients (the weight gradients are computed here, once, already clipped);
* for convolutions, transposed convolutions and linear layers an example's weight gradient
  is a product ``M_i = L_i R_i^T`` of two matrices over the layer's T output positions.
  Its squared norm is either computed from M_i, formed by the backend's own weight-gradient
  kernel with the batch folded into groups (L x R floats per example; right for large
  feature maps and few channels), or, without forming it, as ``<L_i^T L_i, R_i^T R_i>``
  (the "ghost norm", T^2 x (L + R) operations; right for small feature maps and many
  channels; mixed ghost clipping, Bu et al., 2022). Both are the exact norm. With
  ``r = T (L + R) / (L R)``, strategy ``"auto"`` takes the ghost norm for r < 1/3 (M_i
  would need over 3x the floats of the layer's own activations and gradients), forms M_i
  for r >= 1, and in between times both on the layer's first step and keeps the faster
  (which wins depends on the kernels: on CPU, grouped convolutions over a batch of 32 are
  slow, over a batch of 4 fast);
* norm layers (GroupNorm, InstanceNorm) have one weight per channel; their per-example
  gradients are formed directly;
* once every example's total norm is known, each layer's gradient is set to
  ``sum_i c_i g_i`` (a weighted matrix product, or a weighted sum of the per-example
  gradients already formed).

Augmentation multiplicity: with ``group = K`` the batch holds K consecutive rows (augmented
copies) per example, and an example's gradient is the *mean* over its K rows, clipped
once. Each rule then sums its rows' factors per example before any norm: formed
per-example gradients are added up per group, and for the ghost norm the group's K x T
positions are put side by side (``sum_k L_k R_k^T = [L_1 .. L_K][R_1 .. R_K]^T``), so the
norm is again exact.

Only layers with a rule here may have trainable weights; :func:`unsupported_layers` names
the others (the caller then uses Opacus). Like Opacus' ``loss_reduction="mean"``, the loss
must be the mean over the batch of per-example losses, and no layer may mix examples
(no BatchNorm). All of the clipping arithmetic is float32 (no TF32), also under autocast:
the clip factors come from the same float32 tensors as the sum they scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from opacus.utils.tensor_utils import unfold3d
from torch import nn

__all__ = ["FusedClipper", "Strategy", "UnsupportedModelError", "unsupported_layers"]

#: Summer: clip factors (n,) -> sum over examples of the clipped per-example gradients.
_Summer = Callable[[torch.Tensor], dict[nn.Parameter, torch.Tensor]]
_Rule = Callable[[Any, torch.Tensor, torch.Tensor, bool, int], tuple[torch.Tensor, _Summer]]
Strategy = Literal["auto", "ghost", "formed"]

_CONVS = (nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose2d, nn.ConvTranspose3d)
_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
#: "auto": with r = T * (L + R) / (L * R), ghost norms below the band, formed per-example
#: gradients above it, and inside it whichever runs faster the first time (both are exact;
#: which wins depends on the backend's kernels, e.g. grouped convolutions on CPU).
_TIMED_BAND = (1 / 3, 1.0)
_EPS = 1e-6  # Opacus' DPOptimizer: c_i = (C / (norm_i + 1e-6)).clamp(max=1)


class UnsupportedModelError(ValueError):
    """The model has trainable layers (or shared weights) that FusedClipper has no rule for."""


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _layer_problem(module: nn.Module) -> str | None:
    """Why FusedClipper cannot handle this module's own trainable weights, or None."""
    kind = type(module)
    if kind in _CONVS or kind in _TRANSPOSED:
        conv: Any = module
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return f"{kind.__name__} with groups, string padding or non-zero padding mode"
        if kind in _TRANSPOSED and any(
            o >= s for o, s in zip(conv.output_padding, conv.stride, strict=True)
        ):
            return f"{kind.__name__} with output_padding >= stride"
        return None
    if kind is nn.Linear or kind is nn.GroupNorm:
        return None
    if kind in _INSTANCE_NORMS:
        return None if not module.track_running_stats else "InstanceNorm with running stats"
    return f"no per-example rule for {kind.__name__}"


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names (with the reason) of the trainable parts of `model` FusedClipper cannot clip."""
    problems = []
    for name, module in model.named_modules():
        if _trainable(module):
            problem = _layer_problem(module)
            if problem:
                problems.append(f"{name or type(module).__name__}: {problem}")
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            problems.append(f"{name}: shared with another layer")
        seen.add(id(parameter))
    return problems


def _geometry(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int]:
    """(T, L, R) of a layer whose per-example weight gradient is M = L R^T over T positions
    (forming M: T * L * R operations and L * R floats per example; its ghost norm:
    T^2 * (L + R) operations); (0, 0, 0) for norm layers."""
    if isinstance(module, _TRANSPOSED):
        return a[0, 0].numel(), a.shape[1], module.weight[0].numel()
    if isinstance(module, _CONVS):
        return b[0, 0].numel(), b.shape[1], module.weight[0].numel()
    if isinstance(module, nn.Linear):
        return a[0].numel() // a.shape[-1], b.shape[-1], a.shape[-1]
    return 0, 0, 0


def _group_sum(rows: torch.Tensor, k: int) -> torch.Tensor:
    """(n, ...) per-row values -> (n / k, ...) sums over each example's k rows."""
    if k == 1:
        return rows
    return rows.reshape(rows.shape[0] // k, k, *rows.shape[1:]).sum(dim=1)


def _group_positions(rows: torch.Tensor, k: int) -> torch.Tensor:
    """(n, L, T) -> (n / k, L, k * T): an example's k rows side by side, so that
    ``left @ right^T`` of the result is the sum of its rows' products."""
    if k == 1:
        return rows
    n, size, positions = rows.shape
    grouped = rows.reshape(n // k, k, size, positions).permute(0, 2, 1, 3)
    return grouped.reshape(n // k, size, k * positions)


def _row_factors(clip: torch.Tensor, k: int) -> torch.Tensor:
    """Per-example factors (m,) -> per-row factors (m * k,)."""
    return clip if k == 1 else clip.repeat_interleave(k)


def _gram_norms(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norms of left_i @ right_i^T, i.e. <L^T L, R^T R>, without it."""
    gram_l = torch.bmm(left.transpose(1, 2), left)
    gram_r = torch.bmm(right.transpose(1, 2), right)
    return (gram_l * gram_r).sum(dim=(1, 2)).clamp_min(0.0)


def _bias_rule(
    bias: nn.Parameter | None, grads: torch.Tensor, k: int
) -> tuple[torch.Tensor, dict[nn.Parameter, torch.Tensor]]:
    """Per-example bias gradients (n / k, O) from output gradients (n, O, ...)."""
    if bias is None or not bias.requires_grad:
        return grads.new_zeros(grads.shape[0] // k), {}
    rows = grads.reshape(grads.shape[0], grads.shape[1], -1).sum(dim=2)
    per_example = _group_sum(rows, k)
    return per_example.square().sum(dim=1), {bias: per_example}


def _weighted_per_example(
    clip: torch.Tensor, per_example: dict[nn.Parameter, torch.Tensor]
) -> dict[nn.Parameter, torch.Tensor]:
    return {p: (clip @ g.reshape(g.shape[0], -1)).view_as(p) for p, g in per_example.items()}


def _unfold(x: torch.Tensor, conv: Any) -> torch.Tensor:
    """(n, C, *spatial) -> (n, C * prod(kernel), positions), the convolution's patches."""
    if x.ndim == 4:
        return F.unfold(
            x,
            kernel_size=conv.kernel_size,
            dilation=conv.dilation,
            padding=conv.padding,
            stride=conv.stride,
        )
    patches: torch.Tensor = unfold3d(
        x,
        kernel_size=conv.kernel_size,
        padding=conv.padding,
        stride=conv.stride,
        dilation=conv.dilation,
    )
    return patches


def _weight_gradient(
    conv: Any, a: torch.Tensor, b: torch.Tensor, groups: int, weight_shape: tuple[int, ...]
) -> torch.Tensor:
    """The convolution's weight gradient from input `a` and output gradient `b` (the
    backend's own kernel). With the batch folded into `groups`, one weight per example."""
    transposed = isinstance(conv, _TRANSPOSED)
    weight = conv.weight.detach().to(a.dtype)
    if groups > 1:
        weight = weight.repeat(groups, *([1] * (weight.ndim - 1)))
    gradient: torch.Tensor = torch.ops.aten.convolution_backward(
        b,
        a,
        weight,
        None,
        list(conv.stride),
        list(conv.padding),
        list(conv.dilation),
        transposed,
        list(conv.output_padding) if transposed else [0] * (a.ndim - 2),
        groups,
        [False, True, False],
    )[1]
    return gradient.reshape(weight_shape)


def _conv_rule(
    conv: Any, a: torch.Tensor, b: torch.Tensor, ghost: bool, k: int
) -> tuple[torch.Tensor, _Summer]:
    """Conv2d/3d and ConvTranspose2d/3d (groups=1). The weight gradient of one example is
    M = L R^T over the T output positions; for a convolution L = b (O, T) and R = the input
    patches (I*K, T); for a transposed convolution L = a (I, T_in) and R = the patches of
    the output gradient at the input positions (O*K, T_in)."""
    n = a.shape[0]
    transposed = isinstance(conv, _TRANSPOSED)
    left_size = a.shape[1] if transposed else b.shape[1]
    bias_squared, per_example = _bias_rule(conv.bias, b, k)
    weight: nn.Parameter = conv.weight
    if not weight.requires_grad:
        return bias_squared, lambda clip: _weighted_per_example(clip, per_example)
    if ghost:
        # Ghost norm from T x T Gram matrices; the clipped sum from the backend's kernel.
        if transposed:
            left, right = a.reshape(n, left_size, -1), _unfold(b, conv)
        else:
            left, right = b.reshape(n, left_size, -1), _unfold(a, conv)
        if left.shape[2] != right.shape[2]:
            raise UnsupportedModelError(f"{type(conv).__name__}: unexpected geometry")
        squared = _gram_norms(_group_positions(left, k), _group_positions(right, k))
        del left, right

        def weighted(clip: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
            result = _weighted_per_example(clip, per_example)
            scaled = b * _row_factors(clip, k).view(n, *([1] * (b.ndim - 1)))
            result[weight] = _weight_gradient(conv, a, scaled, 1, tuple(weight.shape))
            return result

        return squared + bias_squared, weighted
    # Form every example's weight gradient: one grouped weight-gradient kernel.
    folded_a = a.reshape(1, -1, *a.shape[2:])
    folded_b = b.reshape(1, -1, *b.shape[2:])
    formed = _weight_gradient(conv, folded_a, folded_b, n, (n, *weight.shape))
    per_example[weight] = _group_sum(formed, k)
    squared = per_example[weight].reshape(n // k, -1).square().sum(dim=1)
    return squared + bias_squared, lambda clip: _weighted_per_example(clip, per_example)


def _linear_rule(
    linear: Any, a: torch.Tensor, b: torch.Tensor, ghost: bool, k: int
) -> tuple[torch.Tensor, _Summer]:
    """Linear layers, also over extra (e.g. sequence) dimensions: M = b^T a per example."""
    n = a.shape[0]
    inputs = a.reshape(n, -1, a.shape[-1]).transpose(1, 2)  # (n, in, T)
    outputs = b.reshape(n, -1, b.shape[-1]).transpose(1, 2)  # (n, out, T)
    bias_squared, per_example = _bias_rule(linear.bias, outputs, k)
    weight: nn.Parameter = linear.weight
    if not weight.requires_grad:
        return bias_squared, lambda clip: _weighted_per_example(clip, per_example)
    if ghost:
        squared = _gram_norms(_group_positions(outputs, k), _group_positions(inputs, k))

        def weighted(clip: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
            result = _weighted_per_example(clip, per_example)
            factors = _row_factors(clip, k).view(n, 1, 1)
            result[weight] = torch.einsum("not,nit->oi", outputs * factors, inputs)
            return result

        return squared + bias_squared, weighted
    per_example[weight] = _group_sum(torch.bmm(outputs, inputs.transpose(1, 2)), k)
    squared = per_example[weight].reshape(n // k, -1).square().sum(dim=1)
    return squared + bias_squared, lambda clip: _weighted_per_example(clip, per_example)


def _norm_rule(
    norm: Any, a: torch.Tensor, b: torch.Tensor, ghost: bool, k: int
) -> tuple[torch.Tensor, _Summer]:
    """GroupNorm / InstanceNorm: weight gradient sum_positions(x_hat * b), bias sum(b)
    (one value per channel: always formed, `ghost` is ignored)."""
    del ghost
    n = a.shape[0]
    per_example: dict[nn.Parameter, torch.Tensor] = {}
    if norm.weight is not None and norm.weight.requires_grad:
        if isinstance(norm, nn.GroupNorm):
            normalised = F.group_norm(a, norm.num_groups, eps=norm.eps)
        else:
            normalised = F.instance_norm(a, eps=norm.eps)
        rows = (normalised * b).reshape(n, b.shape[1], -1).sum(dim=2)
        per_example[norm.weight] = _group_sum(rows, k)
    if norm.bias is not None and norm.bias.requires_grad:
        per_example[norm.bias] = _group_sum(b.reshape(n, b.shape[1], -1).sum(dim=2), k)
    squared = sum((g.square().sum(dim=1) for g in per_example.values()), start=a.new_zeros(n // k))

    def summed(clip: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        return _weighted_per_example(clip, per_example)

    return squared, summed


def _rule_for(module: nn.Module) -> _Rule:
    if isinstance(module, (*_CONVS, *_TRANSPOSED)):
        return _conv_rule
    if isinstance(module, nn.Linear):
        return _linear_rule
    return _norm_rule


@contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    """No autocast, no TF32 / reduced-precision float32 kernels: the norms and the clipped
    sum are computed to full float32 (or the parameters' wider) precision."""
    precision = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


class FusedClipper:
    """Computes, in one forward and backward pass, the sum of the clipped per-example
    gradients of `model` (Opacus' flat clipping to `max_grad_norm`) into each ``p.grad``.

    The model is not wrapped (its ``state_dict`` keys are unchanged) and only forward
    hooks are added; :meth:`close` removes them.
    """

    def __init__(
        self, model: nn.Module, max_grad_norm: float, *, strategy: Strategy = "auto"
    ) -> None:
        problems = unsupported_layers(model)
        if problems:
            raise UnsupportedModelError("; ".join(problems))
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
        if strategy not in ("auto", "ghost", "formed"):
            raise ValueError(f"strategy must be 'auto', 'ghost' or 'formed', got {strategy!r}")
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.strategy = strategy
        self._timed: dict[tuple[nn.Module, tuple[int, ...], int], bool] = {}
        self.per_sample_norms: torch.Tensor | None = None
        self._layers = [m for m in model.modules() if _trainable(m)]
        self._parameters = [p for m in self._layers for p in _trainable(m)]
        if not self._parameters:
            raise ValueError("the model has no trainable parameters")
        self._inputs: dict[nn.Module, torch.Tensor] = {}
        self._grads: dict[nn.Module, torch.Tensor] = {}
        self._capturing = False
        self._handles = [m.register_forward_hook(self._keep_input) for m in self._layers]

    def close(self) -> None:
        """Remove the hooks; the model is a plain module again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._inputs.clear()
        self._grads.clear()

    def _keep_input(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not self._capturing:
            return
        if module in self._inputs:
            raise RuntimeError(
                f"{type(module).__name__} ran twice in one step; per-example clipping of a "
                "reused layer is not supported"
            )
        self._inputs[module] = inputs[0].detach()
        if isinstance(output, torch.Tensor) and output.requires_grad:

            def keep_grad(grad: torch.Tensor) -> None:
                self._grads[module] = grad.detach()

            output.register_hook(keep_grad)

    @contextmanager
    def _frozen(self) -> Iterator[None]:
        """Freeze the weights: autograd then computes activation gradients only."""
        self._inputs.clear()
        self._grads.clear()
        for parameter in self._parameters:
            parameter.requires_grad_(False)
        self._capturing = True
        try:
            yield
        finally:
            self._capturing = False
            for parameter in self._parameters:
                parameter.requires_grad_(True)

    def step(
        self,
        inputs: torch.Tensor,
        loss_of: Callable[[torch.Tensor], torch.Tensor],
        *,
        group: int = 1,
    ) -> float:
        """Forward `inputs`, ``loss = loss_of(outputs)`` (the batch mean of per-row
        losses), backward, and leave ``sum_i c_i g_i`` in every trainable ``p.grad``
        (replacing what was there). With `group` = K, every K consecutive rows are copies
        of one example and g_i is the mean of their gradients. Returns the loss."""
        n = inputs.shape[0]
        if n == 0:
            raise ValueError("an empty batch has no per-example gradients")
        if group < 1 or n % group:
            raise ValueError(f"a batch of {n} rows is not made of groups of {group} copies")
        try:
            with self._frozen():
                loss = loss_of(self.model(inputs.detach().requires_grad_(True)))
                loss.backward()
            self._clip(n, group)
        finally:
            self._inputs.clear()
            self._grads.clear()
        return float(loss.detach())

    def _clip(self, n: int, k: int) -> None:
        first = self._parameters[0]
        device, dtype = first.device, torch.promote_types(first.dtype, torch.float32)
        examples = n // k
        squared = torch.zeros(examples, device=device, dtype=dtype)
        summers: list[_Summer] = []
        with _full_precision(device), torch.no_grad():
            for module in self._layers:
                grad = self._grads.get(module)
                if grad is None:  # not reached by the loss: zero gradient for every example
                    continue
                a, b = self._inputs[module].to(dtype), grad.to(dtype)
                ghost = self._ghost(module, a, b, k)
                layer_squared, summer = _rule_for(module)(module, a, b, ghost, k)
                squared += layer_squared
                summers.append(summer)
            # The loss is the mean over n = examples * k rows: an example's gradient (the
            # mean over its k rows) is `examples` times the sum the rules computed from b
            # (Opacus' loss_reduction="mean" scales the same way).
            norms = squared.sqrt() * examples
            clip = (self.max_grad_norm / (norms + _EPS)).clamp(max=1.0)
            for parameter in self._parameters:
                parameter.grad = torch.zeros_like(parameter)
            for summer in summers:
                for parameter, total in summer(clip * examples).items():
                    parameter.grad = total.to(parameter.dtype)
        self.per_sample_norms = norms

    def _ghost(self, module: nn.Module, a: torch.Tensor, b: torch.Tensor, k: int) -> bool:
        """Ghost norm (True) or formed per-example gradients (False) for this layer."""
        if self.strategy != "auto":
            return self.strategy == "ghost"
        positions, left, right = _geometry(module, a, b)
        if not positions:
            return False
        ratio = k * positions * (left + right) / (left * right)  # an example's k rows
        if ratio < _TIMED_BAND[0] or ratio >= _TIMED_BAND[1]:
            return ratio < _TIMED_BAND[0]
        key = (module, tuple(a.shape), k)
        if key not in self._timed:
            self._timed[key] = _ghost_is_faster(module, a, b, k)
        return self._timed[key]


def _ghost_is_faster(module: nn.Module, a: torch.Tensor, b: torch.Tensor, k: int) -> bool:
    """Time both exact computations for this layer (best of two runs each)."""
    rule = _rule_for(module)
    probe = torch.ones(a.shape[0] // k, device=a.device, dtype=a.dtype)
    best = {True: math.inf, False: math.inf}
    for _ in range(2):
        for ghost in (True, False):
            _synchronize(a.device)
            started = time.perf_counter()
            _, summer = rule(module, a, b, ghost, k)
            summer(probe)
            _synchronize(a.device)
            best[ghost] = min(best[ghost], time.perf_counter() - started)
    return best[True] < best[False]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
