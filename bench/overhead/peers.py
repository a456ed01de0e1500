"""The peer curvature libraries as backends: ``curvlinops``, ``asdl`` and ``nngeometry``.

A step is everything a user of the library does for one batch to have both ``.grad`` and the
quantity. curvlinops and nngeometry never fill ``.grad``: their step adds the plain backward
(timed). Results are converted to BackPACK 1.7.1's conventions (``extensions.quantities``):

* per-sample gradients ``g_n / N`` of the mean loss (nngeometry's Jacobian gives ``g_n``: / N;
  ASDL's ``OP_BATCH_GRADS`` of the mean loss is already ``g_n / N``); ``BatchL2Grad``,
  ``SumGradSquared`` and ``Variance`` are derived from them (BackPACK's formulas);
* diagonals ``1/N sum_n J_n^T S_n S_n^T J_n`` (ASDL and nngeometry Fisher diagonals: factor 1);
* Kronecker factors weight ``[B, A]``, bias ``[B]``, with ``A = 1/N sum_n x xᵀ`` and
  ``B = 1/N sum_n g gᵀ`` on linear layers (curvlinops and ASDL: factor 1 each; nngeometry
  rescales ``A`` by ``sqrt(#outputs)`` and ``B`` by ``1/sqrt(#outputs)``, undone here, and stacks
  the bias into ``A``'s last row/column, split off here);
* ``EKFAC``: weight ``[Q_B, Q_A, S]`` (eigenvectors of ``B`` and ``A`` and the corrected
  eigenvalues ``S[i, j] = 1/N sum_n (Q_Bᵀ G_n Q_A)_ij²``), bias ``[Q_B, s]`` (curvlinops'
  ``EKFACLinearOperator``'s convention: weight and bias apart).

Rows that are not the same quantity as ours are labelled ``differs: <why>`` in ``note``
(:meth:`PeerBackend.note`); :func:`same_quantity` says which of ours' rows a peer's row is
compared with. The peers' conv Kronecker factors are KFC "expand"
(``B = 1/N sum_{c,n,s} g gᵀ``, ``A = 1/(N S) sum_{n,s} x xᵀ``; nngeometry moves the ``1/S``
to ``B``, the same product; BackPACK's are
``B = 1/N sum_{c,n} (sum_s g)(sum_s g)ᵀ``, ``A = 1/N sum_{n,s} x xᵀ``): ours times them too, as
backend ``ours_expand`` (``ours_perstep_expand``), whose rows they are compared with. ASDL's
conv diagonal switches to ``sum x² g²`` on small output maps, nngeometry's EKFAC eigenbasis joins
weight and bias. Methods that loop over the classes (``C`` backward passes) are bounded like
BackPACK's KFRA: on its first call a step times its plain gradient step and refuses
(:class:`StepOverBudget`, a ``bounded`` row) when ``passes x that time`` exceeds
:data:`CLASS_LOOP_BOUND_S`.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from bench.overhead.step_base import BaseBackend, PerParam, Step

#: Quantities beyond ``bench.spec.QUANTITIES`` the peers have (ours once ``extensions`` has them).
EKFAC = "EKFAC"
NEW_QUANTITIES = (EKFAC,)
#: Estimated seconds per step above which a class-looping step refuses to run.
CLASS_LOOP_BOUND_S = 20.0
KRONECKER = ("KFAC", "KFLR", EKFAC)
PEER_BACKEND_NAMES = ("curvlinops", "asdl", "nngeometry")
EXPAND_CONV = (
    "differs: conv layers get KFC-expand factors (B = 1/N sum_{c,n,s} g g^T, "
    "A = 1/(N S) sum_{n,s} x x^T; nngeometry moves the 1/S to B), not BackPACK's; "
    "the same quantity as ours_expand's row"
)
#: the quantities ours also times with the KFC "expand" conv factors (backend ``ours_expand``)
EXPAND_QUANTITIES = ("KFAC", "KFLR")
#: the ``note`` of an ``ours_expand`` row on a network with convolutions
EXPAND_OURS = (
    "KFC-expand conv factors (extensions conv='expand'): the peers' KFAC/KFLR, not BackPACK's"
)


def same_quantity(ours_backend: str, peer_note: str) -> bool:
    """Whether a peer's row (its ``note``) computes what ``ours_backend``'s row of it computes.

    A row labelled ``differs`` is not ours' quantity, except a KFC-expand row (:data:`EXPAND_CONV`)
    against ours with the same factors (``ours_expand``, ``ours_perstep_expand``).
    """
    if not peer_note.startswith("differs"):
        return True
    return ours_backend.endswith("_expand") and peer_note == EXPAND_CONV


#: CPU defaults (``make overhead`` <= 15 min): the peers run only here, architecture ->
#: (batch size, quantities); ``--backends ...`` times them everywhere.
CPU_DEFAULT_PEER_RUNS = {"3c3d": (32, ("BatchGrad", "DiagGGNMC", "KFAC", EKFAC))}


def cpu_default_allows(backend: str, arch: str, batch_size: int, quantity: str) -> bool:
    """Whether the CPU default plan times ``backend``/``quantity`` at this size (peers: rarely)."""
    if backend not in PEER_BACKEND_NAMES:
        return True
    size, quantities = CPU_DEFAULT_PEER_RUNS.get(arch, (None, ()))
    return batch_size == size and quantity in quantities


def cpu_default_peer_note() -> str:
    """Describe :data:`CPU_DEFAULT_PEER_RUNS` for the run's log."""
    runs = "; ".join(f"{a} N={n}: {'/'.join(qs)}" for a, (n, qs) in CPU_DEFAULT_PEER_RUNS.items())
    return f"peers ({', '.join(PEER_BACKEND_NAMES)}) only at {runs} (pass --backends for more)"


class StepOverBudget(RuntimeError):
    """A class-looping step whose estimated time exceeds the bound (the row is ``bounded``)."""


def derived_first_order(per_sample: PerParam, quantity: str) -> PerParam:
    """``BatchGrad`` (``g_n / N``) or BackPACK's ``BatchL2Grad``/``SumGradSquared``/``Variance``."""
    if quantity == "BatchGrad":
        return per_sample
    out: PerParam = {}
    for name, g in per_sample.items():
        if quantity == "BatchL2Grad":
            out[name] = g.flatten(1).pow(2).sum(1)
        elif quantity == "SumGradSquared":
            out[name] = g.pow(2).sum(0)
        else:  # Variance: (1/N) sum_n (g_n/N)^2 - (grad/N)^2 in BackPACK's scaling
            n = g.shape[0]
            out[name] = g.pow(2).sum(0) / n - (g.sum(0) / n).pow(2)
    return out


def conv_output_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Conv2d, int]:
    """Each ``Conv2d``'s output map size (H x W), from one forward pass of a single sample."""
    sizes: dict[nn.Conv2d, int] = {}
    handles = [
        m.register_forward_hook(lambda mod, _, out: sizes.__setitem__(mod, out[0, 0].numel()))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return sizes


def has_conv(model: nn.Module) -> bool:
    """Whether the model has a convolution (where the peers' Kronecker factors differ)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class PeerStep(Step):
    """A peer library's step: the plain backward (for ``.grad``) plus the library's quantity.

    ``passes(num_classes)`` is the number of class backward passes of the quantity (0: none);
    such steps are bounded on their first call (:data:`CLASS_LOOP_BOUND_S`).
    """

    bound_s = CLASS_LOOP_BOUND_S

    def __init__(self, model: nn.Module, loss_fn: nn.Module, quantity: str):
        super().__init__(model, loss_fn, quantity)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.calls = 0
        self.num_classes = 0
        self._checked = False

    def passes(self, num_classes: int) -> int:
        """Class backward passes of this step's quantity (0 when it does not loop over classes)."""
        return 0

    def plain_backward(self, inputs: Tensor, targets: Tensor) -> None:
        """Forward, mean loss, ``backward()`` (``.grad``); the first call checks the bound."""
        start = time.perf_counter()
        output = self.model(inputs)
        self.loss_fn(output, targets).backward()
        self.num_classes = output.shape[1]
        if not self._checked:
            self._checked = True
            passes = self.passes(output.shape[1])
            estimate = passes * (time.perf_counter() - start)
            if passes and estimate > self.bound_s:
                raise StepOverBudget(
                    f"bounded, not run: {passes} class backward passes x "
                    f"{estimate / passes:.2f} s (this step's gradient step) = ~{estimate:.0f} s "
                    f"per step > {self.bound_s:.0f} s"
                )

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """Run the plain backward, then the library's quantity (``compute``)."""
        self.plain_backward(inputs, targets)
        self.calls += 1
        if self.quantity == "grad":
            return None
        return self.compute(inputs, targets)

    def compute(self, inputs: Tensor, targets: Tensor) -> PerParam:
        """Compute the library's quantity on the batch, in BackPACK's conventions."""
        raise NotImplementedError

    def kron_results(self, factors: dict[str, tuple[Tensor, Tensor]]) -> PerParam:
        """Turn module name -> (B, A) into BackPACK's ``[B, A]`` (weight) and ``[B]`` (bias)."""
        out: PerParam = {}
        for mod_name, module in self.model.named_modules():
            if mod_name not in factors:
                continue
            b, a = factors[mod_name]
            prefix = f"{mod_name}." if mod_name else ""
            if getattr(module, "weight", None) is not None:
                out[prefix + "weight"] = [b, a]
            if getattr(module, "bias", None) is not None:
                out[prefix + "bias"] = [b]
        return out


class PeerBackend(BaseBackend):
    """A peer library: its quantities, labels for the rows that differ from ours."""

    step_class: type[PeerStep] = PeerStep

    def note(self, model: nn.Module, input_shape: tuple[int, ...], quantity: str) -> str:
        """``differs: ...`` where this library's quantity is not ours on ``model``.

        Ours KFAC/KFLR keep BackPACK's conv factors (Fig. 6's meaning), so the peers' expand
        factors differ there; ours EKFAC uses the expand factors like the peers.
        """
        if quantity in KRONECKER and quantity != EKFAC and has_conv(model):
            return EXPAND_CONV
        return ""

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        return self.step_class(model, loss_fn, quantity)


# --------------------------------------------------------------------------------------------
# curvlinops
# --------------------------------------------------------------------------------------------


class CurvlinopsStep(PeerStep):
    """``KFACLinearOperator`` / ``EKFACLinearOperator`` on the batch, factors computed eagerly.

    MC: one backward pass for KFAC, two for EKFAC (factors, then the eigenvalue correction);
    type-2 (KFLR): C passes. ``check_deterministic=False`` (its check adds passes and fails with
    train-mode dropout); the seed changes per step so that MC labels are fresh each step.
    """

    def passes(self, num_classes: int) -> int:  # noqa: D102 (see PeerStep.passes)
        return num_classes if self.quantity == "KFLR" else 0

    def compute(self, inputs: Tensor, targets: Tensor) -> PerParam:  # noqa: D102
        from curvlinops import EKFACLinearOperator, KFACLinearOperator

        cls = EKFACLinearOperator if self.quantity == EKFAC else KFACLinearOperator
        op = cls(
            self.model,
            self.loss_fn,
            self.params,
            [(inputs, targets)],
            check_deterministic=False,
            fisher_type="type-2" if self.quantity == "KFLR" else "mc",
            num_data=inputs.shape[0],
            num_per_example_loss_terms=1,
            seed=2147483647 - self.calls,
        )
        if self.quantity != EKFAC:
            op.compute_kronecker_factors()
            factors = {
                mod: (op._gradient_covariances[mod], op._input_covariances.get(mod))
                for mod in op._mapping
            }
            return self.kron_results(factors)
        op.compute_eigenvalue_correction()
        out: PerParam = {}
        for mod, positions in op._mapping.items():
            q_b = op._gradient_covariances_eigenvectors[mod]
            corrected = op._corrected_eigenvalues[mod]
            prefix = f"{mod}." if mod else ""
            for p_name, pos in positions.items():
                if p_name == "weight":
                    q_a = op._input_covariances_eigenvectors[mod]
                    out[prefix + p_name] = [q_b, q_a, corrected[pos]]
                else:
                    out[prefix + p_name] = [q_b, corrected[pos]]
        return out


class CurvlinopsBackend(PeerBackend):
    """curvlinops 3.x: ``KFACLinearOperator`` (mc / type-2) and ``EKFACLinearOperator``."""

    name = "curvlinops"
    quantities = ("KFAC", "KFLR", EKFAC)
    requires = ("curvlinops",)
    step_class = CurvlinopsStep


# --------------------------------------------------------------------------------------------
# ASDL
# --------------------------------------------------------------------------------------------


class AsdlStep(PeerStep):
    """ASDL: ``asdl.extend(model, OP_BATCH_GRADS)`` around the backward, or a ``FisherMaker``.

    First order: one backward with ASDL's hooks fills ``.grad`` and the batch gradients (the other
    first-order quantities derived from them). Second order: ``get_fisher_maker`` with
    ``forward_and_backward(calc_loss_grad=True)``, which also fills ``.grad``: MC one extra pass,
    exact C passes (the class loop), then the loss backward.
    """

    FIRST = ("BatchGrad", "BatchL2Grad", "SumGradSquared", "Variance")

    def __init__(self, model: nn.Module, loss_fn: nn.Module, quantity: str):
        super().__init__(model, loss_fn, quantity)
        # ASDL's legacy module backward hooks make torch warn on every forward; the console of a
        # long benchmark run would fill with it (the hooks work as ASDL means them to)
        warnings.filterwarnings(
            "ignore", message="Using a non-full backward hook", category=FutureWarning
        )
        self._maker = None
        if quantity in self.FIRST or quantity == "grad":
            return
        from asdl import FisherConfig, get_fisher_maker

        shape = {"DiagGGNMC": "diag", "DiagGGNExact": "diag", EKFAC: "kfe"}.get(quantity, "kron")
        exact = quantity in ("DiagGGNExact", "KFLR")
        config = FisherConfig(
            fisher_type="fisher_exact" if exact else "fisher_mc",
            fisher_shapes=[shape],
            loss_type="cross_entropy",
        )
        self._maker = get_fisher_maker(model, config)

    def passes(self, num_classes: int) -> int:  # noqa: D102 (see PeerStep.passes)
        return num_classes if self.quantity in ("DiagGGNExact", "KFLR") else 0

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """One ASDL call per batch fills ``.grad`` and the quantity."""
        if self.quantity == "grad":
            return super().backward_with_quantity(inputs, targets)
        if not self._checked and self.passes(2):  # bound: time a plain gradient step first
            self.plain_backward(inputs, targets)
            self.model.zero_grad(set_to_none=True)
        if self._maker is None:
            return self._first_order(inputs, targets)
        dummy_output = self._maker.setup_model_call(self.model, inputs)
        self._maker.setup_loss_call(self.loss_fn, dummy_output, targets)
        try:
            self._maker.forward_and_backward(data_size=inputs.shape[0], calc_loss_grad=True)
        except RuntimeError as err:
            if self.quantity == EKFAC and has_conv(self.model) and "view size" in str(err):
                raise NotImplementedError(f"ASDL 0.1a5's conv KFE (N S < c_in k^2): {err}") from err
            raise
        return self._second_order()

    def _first_order(self, inputs: Tensor, targets: Tensor) -> PerParam:
        from asdl import OP_BATCH_GRADS, extend

        with extend(self.model, OP_BATCH_GRADS) as cxt:
            self.loss_fn(self.model(inputs), targets).backward()
            per_sample: PerParam = {}
            for mod_name, module in self.model.named_modules():
                grads = cxt.batch_grads(module)
                for p_name, g in (grads or {}).items():
                    per_sample[f"{mod_name}.{p_name}" if mod_name else p_name] = g
        return derived_first_order(per_sample, self.quantity)

    def _second_order(self) -> PerParam:
        out: PerParam = {}
        factors: dict[str, tuple[Tensor, Tensor]] = {}
        for mod_name, module in self.model.named_modules():
            fisher = getattr(module, "fisher", None)
            if fisher is None or module is self.model:
                continue
            prefix = f"{mod_name}." if mod_name else ""
            if self.quantity in ("DiagGGNMC", "DiagGGNExact"):
                for p_name in ("weight", "bias"):
                    value = getattr(fisher.diag, p_name, None)
                    if value is not None:
                        out[prefix + p_name] = value
            elif self.quantity == EKFAC:
                kfe = fisher.kfe
                scale_w, *scale_b = kfe.scale
                out[prefix + "weight"] = [kfe.Ub, kfe.Ua, scale_w]
                if scale_b:
                    out[prefix + "bias"] = [kfe.Ub, scale_b[0]]
            else:
                factors[mod_name] = (fisher.kron.B, fisher.kron.A)
        return out or self.kron_results(factors)

    def clear(self) -> None:
        """Drop gradients, results and ASDL's ``module.fisher`` attributes."""
        super().clear()
        if self._maker is not None:
            self._maker.zero_fisher()


def asdl_inexact_diagonal(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """List the conv layers where ASDL's ``cov_diag_weight`` takes its ``x² g²`` branch.

    ASDL 0.1a5 (``operations/conv.py``) uses ``sum_{n,s} x² g²`` instead of the squared
    per-sample gradients when ``out_size * (c_out + c_in k_h k_w) < c_out c_in k_h k_w``; that
    drops the cross terms over output positions (exact only for a 1x1 output map).
    """
    names = {m: n for n, m in model.named_modules()}
    out = []
    for conv, out_size in conv_output_sizes(model, input_shape).items():
        c_out, c_in, kh, kw = conv.weight.shape
        if out_size > 1 and out_size * (c_out + c_in * kh * kw) < c_out * c_in * kh * kw:
            out.append(names[conv])
    return out


class AsdlBackend(PeerBackend):
    """ASDL (asdfghjkl 0.1a5): batch gradients, Fisher diagonal / Kronecker / KFE (MC, exact)."""

    name = "asdl"
    quantities = (
        *AsdlStep.FIRST,
        "DiagGGNExact",
        "DiagGGNMC",
        "KFAC",
        "KFLR",
        EKFAC,
    )
    requires = ("asdl",)
    step_class = AsdlStep

    def note(self, model: nn.Module, input_shape: tuple[int, ...], quantity: str) -> str:
        """Conv Kronecker factors (expand) and the inexact conv diagonal on small output maps."""
        if quantity in ("DiagGGNMC", "DiagGGNExact"):
            layers = asdl_inexact_diagonal(model, input_shape)
            if layers:
                return (
                    "differs: ASDL's conv diagonal on small output maps is sum x^2 g^2 "
                    f"(inexact) at layer(s) {', '.join(layers)}"
                )
        if quantity == EKFAC and has_conv(model):  # only its eigenvalue sum is tested
            return "differs: ASDL's conv EKFAC (kfe) is not checked element-wise against ours"
        return super().note(model, input_shape, quantity)


# --------------------------------------------------------------------------------------------
# nngeometry
# --------------------------------------------------------------------------------------------


class NngeometryStep(PeerStep):
    """nngeometry 0.4: ``Jacobian`` of the per-sample losses, ``FIM`` / ``FIM_MonteCarlo``.

    One backward per output of the function nngeometry differentiates: the per-sample loss (1),
    an MC sample (1), or the exact Fisher's Cholesky factor (C - 1 passes); EKFAC is ``PMatEKFAC``
    plus ``update_diag`` (two passes). The plain backward adds ``.grad``.
    """

    def passes(self, num_classes: int) -> int:  # noqa: D102 (see PeerStep.passes)
        return num_classes - 1 if self.quantity in ("DiagGGNExact", "KFLR") else 0

    def compute(self, inputs: Tensor, targets: Tensor) -> PerParam:  # noqa: D102
        from nngeometry.layercollection import LayerCollection
        from nngeometry.metrics import FIM, FIM_MonteCarlo
        from nngeometry.object import PMatDiag, PMatEKFAC, PMatKFAC

        lc = LayerCollection.from_model(self.model)
        examples = (inputs, targets)
        if self.quantity in ("BatchGrad", "BatchL2Grad", "SumGradSquared", "Variance"):
            from nngeometry.jacobian import Jacobian

            def per_sample_loss(x: Tensor, y: Tensor) -> Tensor:
                return nn.functional.cross_entropy(self.model(x), y, reduction="none")

            jac = Jacobian(self.model, examples, function=per_sample_loss, layer_collection=lc)
            flat = jac.to_torch()[0] / inputs.shape[0]  # g_n -> BackPACK's g_n / N
            return derived_first_order(self._split(lc, flat), self.quantity)
        representation = {"DiagGGNMC": PMatDiag, "DiagGGNExact": PMatDiag, EKFAC: PMatEKFAC}
        rep = representation.get(self.quantity, PMatKFAC)
        if self.quantity in ("DiagGGNExact", "KFLR"):
            # nngeometry 0.4's exact-Fisher factor builds a matrix in the default dtype (float64
            # models fail against float32): use the model's dtype while it runs
            default = torch.get_default_dtype()
            torch.set_default_dtype(inputs.dtype)
            try:
                pmat = FIM(self.model, examples, rep, layer_collection=lc)
            finally:
                torch.set_default_dtype(default)
        else:
            pmat = FIM_MonteCarlo(self.model, examples, rep, trials=1, layer_collection=lc)
        if self.quantity in ("DiagGGNMC", "DiagGGNExact"):
            return self._split(lc, pmat.get_diag())
        if self.quantity == EKFAC:
            pmat.update_diag(examples)
            evecs, diags = pmat.data
            return {  # one joint eigenbasis for weight and bias: S is [d_out, d_in + 1]
                f"{lid}.weight": [q_g, q_a, diags[lid].reshape(len(q_g), len(q_a))]
                for lid, (q_a, q_g) in evecs.items()
            }
        n_out = 1 if self.quantity == "KFAC" else self.num_classes - 1  # as nngeometry's FIM
        factors = {}
        for lid, layer in lc.layers.items():
            a, g = pmat.data[lid]
            a = a / n_out**0.5  # nngeometry scales A by sqrt(#outputs) and G by 1/sqrt(#outputs)
            if layer.bias is not None:
                a = a[:-1, :-1]  # the bias row/column of nngeometry's augmented A
            factors[lid] = (g * n_out**0.5, a)
        return self.kron_results(factors)

    def _split(self, lc: Any, flat: Tensor) -> PerParam:
        """Split nngeometry's flat parameter axis (the last) into per-parameter tensors."""
        out: PerParam = {}
        for lid, layer in lc.layers.items():
            start = lc.p_pos[lid]
            for p_name in ("weight", "bias"):
                spec = getattr(layer, p_name, None)
                if spec is None:
                    continue
                size = int(torch.Size(spec.size).numel())
                chunk = flat[..., start : start + size]
                out[f"{lid}.{p_name}"] = chunk.reshape(*flat.shape[:-1], *spec.size)
                start += size
        return out


class NngeometryBackend(PeerBackend):
    """nngeometry 0.4: per-sample Jacobian, ``PMatDiag`` / ``PMatKFAC`` / ``PMatEKFAC`` Fishers."""

    name = "nngeometry"
    quantities = AsdlBackend.quantities
    requires = ("nngeometry",)
    step_class = NngeometryStep

    def note(self, model: nn.Module, input_shape: tuple[int, ...], quantity: str) -> str:
        """Conv factors (expand); EKFAC's eigenbasis joins weight and bias."""
        if quantity == EKFAC:
            return "differs: one eigenbasis for weight and bias together (augmented A)"
        return super().note(model, input_shape, quantity)


#: the peers, in the order tables and figures list them
PEER_BACKENDS = {
    "curvlinops": CurvlinopsBackend,
    "asdl": AsdlBackend,
    "nngeometry": NngeometryBackend,
}
