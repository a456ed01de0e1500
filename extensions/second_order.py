"""Second-order quantities from a forward :class:`~extensions.trace.Trace` (BackPACK 1.7.1).

Entry points: :func:`compute_second_order` and :func:`check_supported`.

The backward pass propagates *streams* of columns ``[V, N, *shape]`` from the loss down the
recorded modules with the rules of :mod:`extensions.derivatives`:

* the exact loss sqrt-Hessian (C columns), shared by DiagGGNExact, KFLR, EKFACExact and
  DiagHessian;
* Monte-Carlo columns (M per distinct ``mc_samples``), shared by DiagGGNMC, KFAC and EKFAC;
* for DiagHessian, the positive and negative residual factors of every activation with a nonzero
  second derivative (width = the activation's size), started where the residual arises.

At Linear / Conv2d layers each stream contributes to the weight/bias diagonal (``sum`` of squared
per-(column, sample) gradients), to the Kronecker output factor ``B`` (BackPACK's or the KFC
"expand" factorisation) and to EKFAC's eigenvalue correction (:mod:`extensions.ekfac`: the basis
is formed when the columns reach the layer, so one propagation suffices unless the columns are
chunked, then a second propagation of the same columns follows). Columns (and, if one
column of the whole batch does not fit, samples) are processed in chunks sized from
``memory_budget``, so the C-column quantities run where BackPACK's single allocation fails.
KFRA propagates one dense ``h x h`` matrix; it is refused with :class:`MemoryBudgetError`
*before* allocating when that matrix would not fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from extensions import derivatives, kronecker, losses, per_sample
from extensions.buffers import BufferPool
from extensions.ekfac import EkfacTarget
from extensions.errors import MemoryBudgetError, UnsupportedModuleError
from extensions.quantities import DEFAULT_MEMORY_BUDGET, Quantity, resolve
from extensions.trace import Record, Trace

PARAM_MODULES = (nn.Linear, nn.Conv2d)
#: the quantities fed by Monte-Carlo columns (one draw per distinct ``mc_samples``)
MC_QUANTITIES = ("DiagGGNMC", "KFAC", "EKFAC")
KRON_QUANTITIES = ("KFAC", "KFLR", "KFRA", "EKFAC", "EKFACExact")
#: Share of the budget for the propagated columns; the rest is for extraction temporaries.
_STREAM_SHARE = 0.5


# ---------------------------------------------------------------------------------------------
# Support checks
# ---------------------------------------------------------------------------------------------


def _leaf_modules(obj: Trace | Sequence[Record] | nn.Module) -> list[tuple[nn.Module, Any]]:
    """Return ``(module, record or None)`` pairs in forward order."""
    if isinstance(obj, Trace):
        return [(r.module, r) for r in obj.records]
    if isinstance(obj, nn.Module):
        leaves = [m for m in obj.modules() if not list(m.children())]
        return [(m, None) for m in leaves]
    return [(r.module, r) for r in obj]


def _supported_names() -> str:
    return ", ".join(cls.__name__ for cls in derivatives.RULES)


def check_supported(
    records_or_model: Trace | Sequence[Record] | nn.Module,
    quantities: Iterable[str | Quantity],
) -> None:
    """Raise :class:`UnsupportedModuleError` if a quantity cannot be computed for these modules.

    Args:
        records_or_model: A trace, its records, or a model (its leaf modules in registration
            order; shape-dependent checks then wait for the trace).
        quantities: Names or configured quantities (first-order ones are ignored).

    """
    qs = [q for q in (resolve(q) for q in quantities) if q.is_second_order]
    if not qs:
        return
    for position, (module, rec) in enumerate(_leaf_modules(records_or_model)):
        for q in qs:
            _check_module(module, rec, position, q.name)
    if isinstance(records_or_model, Trace) and records_or_model.loss is not None:
        for q in qs:
            losses.check_loss_supported(records_or_model.loss.module, q.name)


def _check_module(module: nn.Module, rec: Record | None, position: int, quantity: str) -> None:
    def fail(msg: str) -> None:
        raise UnsupportedModuleError(msg, module=module, position=position, quantity=quantity)

    rule = derivatives.rule_for(module)
    if rule is None:
        fail(f"no second-order rule for {type(module).__name__}; supported: {_supported_names()}")
    if quantity == "KFRA" and rule.kfra is None:
        fail(f"KFRA has no rule for {type(module).__name__}")
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            fail(f"grouped convolutions (groups={module.groups}) are not supported")
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            fail("only explicit integer zero padding is supported (use nn.ZeroPad2d for 'same')")
    if (
        isinstance(module, nn.Linear)
        and quantity in KRON_QUANTITIES
        and rec is not None
        and rec.input.dim() > 2
    ):
        fail(
            f"{quantity} for Linear is only defined for 2-d inputs [N, in] (as in BackPACK), got "
            f"input shape {tuple(rec.input.shape)}"
        )


def _check_chain(trace: Trace) -> None:
    recs = trace.records
    if trace.loss is None:
        raise ValueError("the trace has no loss record; second-order quantities need the loss")
    for a, b in zip(recs, recs[1:]):
        if a.output.shape != b.input.shape:
            raise UnsupportedModuleError(
                f"the recorded modules do not form a chain: output {tuple(a.output.shape)} of "
                f"position {a.position} feeds input {tuple(b.input.shape)}",
                module=b.module,
                position=b.position,
            )
    if recs and recs[-1].output.shape != trace.loss.input.shape:
        raise UnsupportedModuleError(
            "the last module's output is not the loss input", module=recs[-1].module
        )


# ---------------------------------------------------------------------------------------------
# Record views (sample slices) and chunk sizing
# ---------------------------------------------------------------------------------------------


def _view(rec: Record, sl: slice | None = None) -> Record:
    """Return a copy of ``rec`` (own ``extra`` dict) restricted to samples ``sl``."""
    if sl is None:
        return Record(rec.name, rec.position, rec.module, rec.input, rec.output, dict(rec.extra))
    n = rec.input.shape[0]
    extra = {
        k: (v[sl] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v)
        for k, v in rec.extra.items()
    }
    return Record(rec.name, rec.position, rec.module, rec.input[sl], rec.output[sl], extra)


def _elem_bytes(t: Tensor) -> int:
    return t.element_size()


def _chunks(total: int, step: int) -> list[tuple[int, int]]:
    step = max(1, step)
    return [(i, min(total, i + step)) for i in range(0, total, step)]


@dataclass
class _Stream:
    """Columns to propagate from the output of ``records[start]`` downwards."""

    n_columns: int
    make: Callable[[int, int, int, int], Tensor]  # (v0, v1, n0, n1) -> [v, n, *shape]
    start: int
    diag_targets: list[tuple[dict[str, Tensor], float]] = field(default_factory=list)
    kron_targets: list[tuple[dict[str, Tensor], str]] = field(default_factory=list)  # (B, conv)
    ekfac_targets: list[EkfacTarget] = field(default_factory=list)


class _Engine:
    """Holds the record views and the budget while the streams run."""

    def __init__(self, trace: Trace, memory_budget: int, buffers: BufferPool | None = None):
        self.trace = trace
        self.views = [_view(r) for r in trace.records]
        for view in self.views:
            if buffers is not None:
                view.extra["_buffers"] = buffers
        self.budget = int(memory_budget)
        self.names = trace.param_names
        self.n = trace.loss.input.shape[0]
        params = [i for i, r in enumerate(self.views) if isinstance(r.module, PARAM_MODULES)]
        self.lowest_param = min(params) if params else None
        self._input_factors: dict[int, Tensor] = {}

    def input_factor(self, position: int) -> Tensor:
        """BackPACK's ``A`` of the layer at ``position`` (whole batch; computed once)."""
        if position not in self._input_factors:
            rec = self.views[position]
            with _label("input_factor", rec):
                self._input_factors[position] = _input_factor(rec)
        return self._input_factors[position]

    def extraction_elements(self, like: Tensor) -> int:
        """Elements an extraction temporary may have (the budget's non-stream share)."""
        return max(1, int(self.budget * (1 - _STREAM_SHARE)) // _elem_bytes(like))

    def output_factor(self, rec: Record, mat: Tensor, conv: str) -> Tensor:
        """``B`` of one chunk of columns, factorisation ``conv`` (see :func:`_output_factor`)."""
        return _output_factor(rec, mat, conv)

    def prepare(self, widths: Sequence[int], residuals: bool) -> None:
        """Precompute per-record state; activation derivatives only if columns pass twice.

        Args:
            widths: column counts of the streams that start at the top (exact, MC draws).
            residuals: whether DiagHessian's residual streams run too (more passes).

        """
        top = len(self.views) - 1
        passes = sum(
            math.ceil(w / v_step) * math.ceil(self.n / n_step)
            for w in widths
            if w > 0  # (an invalid mc_samples is reported by the MC stream itself)
            for v_step, n_step in [self.chunking(_Stream(w, _no_columns, top))]
        )
        multipliers = residuals or passes > 1
        for view in self.views:
            derivatives.prepare(view, multipliers)

    # -- chunk sizes -------------------------------------------------------------------------

    def _bytes_per_column_sample(self, start: int) -> int:
        stop = self.lowest_param if self.lowest_param is not None else 0
        sizes = [
            r.input[0].numel() + r.output[0].numel() for r in self.views[stop : start + 1]
        ] or [1]
        # input + output of a rule, plus one temporary (mask products, scatter targets)
        return 3 * max(sizes) * _elem_bytes(self.views[start].output)

    def chunking(self, stream: _Stream) -> tuple[int, int]:
        """(columns per chunk, samples per chunk) fitting the stream share of the budget."""
        per = self._bytes_per_column_sample(stream.start)
        allowed = max(1, int(self.budget * _STREAM_SHARE) // per)
        if stream.n_columns * self.n <= allowed:
            return stream.n_columns, self.n
        if self.n <= allowed:
            return max(1, allowed // self.n), self.n
        return 1, allowed

    # -- propagation -------------------------------------------------------------------------

    def run(self, stream: _Stream) -> None:
        """Propagate ``stream`` (twice if EKFAC targets need a second, chunked pass)."""
        self._run(stream)
        second = [t for t in stream.ekfac_targets if t.needs_second_pass(self)]
        if second:
            self._run(_Stream(stream.n_columns, stream.make, stream.start, ekfac_targets=second))
        for target in stream.ekfac_targets:
            target.write(self)

    def _run(self, stream: _Stream) -> None:
        """Propagate ``stream`` in chunks, feeding its targets at every parameter layer."""
        if self.lowest_param is None or stream.start < self.lowest_param:
            return
        v_step, n_step = self.chunking(stream)
        single_pass = v_step >= stream.n_columns and n_step >= self.n
        stop = self.lowest_param
        for n0, n1 in _chunks(self.n, n_step):
            sl = None if (n0, n1) == (0, self.n) else slice(n0, n1)
            views = self.views if sl is None else [_view(r, sl) for r in self.views]
            for v0, v1 in _chunks(stream.n_columns, v_step):
                mat = stream.make(v0, v1, n0, n1)
                for idx in range(stream.start, stop - 1, -1):
                    rec = views[idx]
                    if isinstance(rec.module, PARAM_MODULES):
                        with _label("extract", rec):
                            self._extract(rec, mat, stream, single_pass)
                    if idx > stop:
                        mat = _jac_t(rec, mat)
                del mat

    def _extract(self, rec: Record, mat: Tensor, stream: _Stream, single_pass: bool) -> None:
        m = rec.module
        if stream.diag_targets:
            diags = _param_diagonals(rec, mat)
            for name_param, value in diags:
                key = self.names.get(id(name_param))
                if key is None:
                    continue
                for target, sign in stream.diag_targets:
                    _accumulate(target, key, value if sign > 0 else -value)
        b_of: dict[str, Tensor] = {}
        for target, conv in stream.kron_targets:
            if conv not in b_of:
                b_of[conv] = _output_factor(rec, mat, conv)
            for p in (m.weight, m.bias):
                key = self.names.get(id(p)) if p is not None else None
                if key is not None:
                    _accumulate(target, key, b_of[conv])
        for ekfac in stream.ekfac_targets:
            with _label("ekfac", rec):
                ekfac.extract(self, rec, mat, single_pass)


def _label(phase: str, rec: Record) -> record_function:
    """Open a profiler range ``extensions::<phase>::<module class>`` (read by profile_step)."""
    return record_function(f"extensions::{phase}::{type(rec.module).__name__}")


def _jac_t(rec: Record, mat: Tensor) -> Tensor:
    """Apply ``rec``'s transposed Jacobian to the columns ``mat`` (a labelled profiler range)."""
    with _label("jac_t", rec):
        return derivatives.RULES[type(rec.module)].jac_t(rec, mat)


def _no_columns(v0: int, v1: int, n0: int, n1: int) -> Tensor:
    raise AssertionError("a planning stream is never run")


def _accumulate(target: dict[str, Tensor], key: str, value: Tensor) -> None:
    if key in target:
        target[key] = target[key] + value
    else:
        target[key] = value


# ---------------------------------------------------------------------------------------------
# Parameter extraction (Linear, Conv2d)
# ---------------------------------------------------------------------------------------------


def _param_diagonals(rec: Record, mat: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``(parameter, sum over columns and samples of squared per-sample gradients)`` pairs."""
    m = rec.module
    out: list[tuple[Tensor, Tensor]] = []
    if isinstance(m, nn.Linear):
        flat = mat.reshape(-1, *mat.shape[2:])  # [V*N, ..., out], V-major rows
        out.append((m.weight, per_sample.linear_weight_sum_sq(rec.input, flat)))
        if m.bias is not None:
            out.append((m.bias, per_sample.linear_bias(flat).square().sum(0)))
        return out
    # Conv2d
    out.append((m.weight, _conv2d_weight_diagonal(rec, mat)))
    if m.bias is not None:
        out.append((m.bias, (mat.sum((3, 4)) ** 2).sum((0, 1))))
    return out


def _conv2d_weight_diagonal(rec: Record, mat: Tensor) -> Tensor:
    """``sum_{v,n} (per-(column, sample) weight gradient)^2``, in cache-sized sample chunks."""
    return per_sample.conv2d_weight_sum_sq(rec.input, mat, rec.module)  # no copy of ``mat``


def _output_factor(rec: Record, mat: Tensor, conv: str = "backpack") -> Tensor:
    """``B = sum_{v,n} s s^T`` of the columns ``s`` (:class:`~extensions.quantities.KFAC`).

    Conv: ``conv="backpack"`` sums the columns over spatial positions first (BackPACK), ``"expand"``
    sums the outer products over them (KFC / curvlinops' expand).
    """
    if isinstance(rec.module, nn.Conv2d) and conv != "backpack":
        return _expand_output_factor(mat)
    s = mat.sum((3, 4)) if isinstance(rec.module, nn.Conv2d) else mat
    s = s.reshape(-1, s.shape[-1])
    return s.t() @ s


#: elements of one chunk of per-(column, sample) ``[out, out]`` products in the expand ``B``
_EXPAND_CHUNK_ELEMENTS = 2**22


def _expand_output_factor(mat: Tensor) -> Tensor:
    """``B = sum_{v,n,s} s s^T`` of conv columns ``mat [V, n, out, H, W]``, without a copy.

    Laid out as ``[V n, out, S]`` (a view), ``B`` is the sum of the per-(column, sample) products
    ``m m^T``: batched matmuls over sample chunks. Transposing to ``[V n S, out]`` for one big
    matmul would copy the whole column tensor (257 MB for 3C3D's first conv with 10 columns at
    N = 128) -- more time than the products themselves.
    """
    v, n, out = mat.shape[:3]
    m = mat.reshape(v * n, out, -1)
    step = max(1, _EXPAND_CHUNK_ELEMENTS // (out * out))
    b = None
    for i in range(0, m.shape[0], step):
        chunk = m[i : i + step]
        part = torch.bmm(chunk, chunk.transpose(1, 2)).sum(0)
        b = part if b is None else b.add_(part)
    return b


def _spatial_positions(rec: Record) -> int:
    """``S``, the output positions of a convolution (1 for ``Linear``)."""
    return rec.output[0, 0].numel() if isinstance(rec.module, nn.Conv2d) else 1


def _input_factor(rec: Record) -> Tensor:
    if isinstance(rec.module, nn.Linear):
        return kronecker.linear_input_factor(rec.input)
    return kronecker.conv2d_input_factor(rec.input, rec.module, derivatives.scratch_for(rec))


# ---------------------------------------------------------------------------------------------
# KFRA
# ---------------------------------------------------------------------------------------------


def kfra_required_bytes(trace: Trace) -> tuple[int, Record | None]:
    """Largest memory one KFRA step needs, and the record where it occurs.

    A step holds ``G_out [h_out^2]``, the intermediate ``[h_out x h_in]`` and ``G_in [h_in^2]``.
    """
    recs = trace.records
    params = [i for i, r in enumerate(recs) if isinstance(r.module, PARAM_MODULES)]
    if not params:
        return 0, None
    worst, where = 0, None
    for i in range(min(params), len(recs)):
        r = recs[i]
        h_out = r.output[0].numel()
        h_in = r.input[0].numel() if i > min(params) else 0
        need = (h_out * h_out + h_out * h_in + h_in * h_in) * r.output.element_size()
        if need > worst:
            worst, where = need, r
    return worst, where


def _kfra(engine: _Engine, trace: Trace) -> dict[str, Tensor]:
    """Output factors ``B`` of KFRA per parameter name (weights and biases)."""
    need, where = kfra_required_bytes(trace)
    if need > engine.budget:
        h = where.output[0].numel()
        raise MemoryBudgetError(
            f"KFRA propagates a dense {h:,} x {h:,} matrix here and would need about "
            f"{need:,} bytes ({need / 2**30:.1f} GiB) for one step, more than the memory budget "
            f"of {engine.budget:,} bytes ({engine.budget / 2**30:.1f} GiB)",
            module=where.module,
            position=where.position,
            quantity="KFRA",
        )
    if engine.lowest_param is None:
        return {}
    g = losses.sum_hessian(trace.loss)
    factors: dict[str, Tensor] = {}
    for idx in range(len(engine.views) - 1, engine.lowest_param - 1, -1):
        rec = engine.views[idx]
        m = rec.module
        if isinstance(m, PARAM_MODULES):
            if isinstance(m, nn.Conv2d):
                c = rec.output.shape[1]
                b = g.reshape(c, -1, c, g.shape[0] // c).sum((1, 3))
            else:
                b = g
            for p in (m.weight, m.bias):
                key = engine.names.get(id(p)) if p is not None else None
                if key is not None:
                    factors[key] = b
        if idx > engine.lowest_param:
            g = derivatives.RULES[type(m)].kfra(rec, g)
    return factors


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def compute_second_order(
    trace: Trace,
    quantities: Sequence[str | Quantity],
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    buffers: BufferPool | None = None,
) -> dict[str, dict[str, Any]]:
    """Compute the requested second-order quantities from a recorded forward pass.

    Args:
        trace: The forward trace (leaf-module records in forward order and the loss record).
        quantities: Second-order quantities (names or configured instances); first-order ones
            are ignored.
        memory_budget: Bound in bytes on the temporaries allocated here (propagated columns and
            extraction buffers are chunked to fit; KFRA is refused if its dense matrix does not).
        buffers: a pool for large scratch buffers reused across calls (a session's).

    Returns:
        ``{quantity name: {parameter name: value}}``. Diagonals have the parameter's shape; for
        KFAC/KFLR/KFRA a weight maps to ``[B, A]`` (``kron(B, A)`` approximates the block of the
        row-major flattened weight) and a bias to ``[B]``; for EKFAC/EKFACExact a weight maps to
        ``[Q_B, Q_A, lam]`` and a bias to ``[Q_B, lam_b]`` (:class:`~extensions.quantities.EKFAC`).

    Raises:
        UnsupportedModuleError: a module or the loss has no rule for a requested quantity.
        MemoryBudgetError: KFRA's dense matrices exceed ``memory_budget`` (before allocating).

    """
    qs = [q for q in (resolve(q) for q in quantities) if q.is_second_order]
    if not qs:
        return {}
    _check_chain(trace)
    check_supported(trace, qs)
    by_name = {q.name: q for q in qs}
    if len(by_name) != len(qs):
        raise ValueError("each second-order quantity may be requested once")
    engine = _Engine(trace, memory_budget, buffers)
    names = {q.name for q in qs}
    widths = []
    if names & {"DiagGGNExact", "DiagHessian", "KFLR", "EKFACExact"}:
        widths.append(trace.loss.input[0].numel())  # C columns of the loss sqrt-Hessian
    widths += sorted({by_name[n].mc_samples for n in MC_QUANTITIES if n in by_name})
    engine.prepare(widths, residuals="DiagHessian" in names and _has_curved(engine))
    results: dict[str, dict[str, Any]] = {name: {} for name in by_name}

    kfra_b = _kfra(engine, trace) if "KFRA" in names else None
    with torch.no_grad():
        b_factors: dict[str, dict[str, Tensor]] = {n: {} for n in ("KFAC", "KFLR") if n in names}
        _run_exact_stream(engine, trace, by_name, results, b_factors)
        _run_mc_streams(engine, trace, by_name, results, b_factors)
        if "DiagHessian" in names:
            _run_residual_streams(engine, trace, results["DiagHessian"])
        if kfra_b is not None:
            b_factors["KFRA"] = kfra_b
        if b_factors:
            _assemble_kronecker(engine, b_factors, by_name, results)
    for name in ("DiagGGNExact", "DiagGGNMC", "DiagHessian"):
        if name in results:
            _fill_missing_diagonals(engine, results[name])
    return results


def _kron_targets(
    members: Sequence[str],
    by_name: dict[str, Quantity],
    results: dict[str, dict[str, Any]],
    b_factors: dict[str, dict[str, Tensor]],
) -> dict[str, Any]:
    """Return the Kronecker and EKFAC targets of the quantities ``members`` of one stream."""
    return {
        "kron_targets": [(b_factors[n], by_name[n].conv) for n in members if n in b_factors],
        "ekfac_targets": [
            EkfacTarget(by_name[n].conv, results[n]) for n in members if n.startswith("EKFAC")
        ],
    }


def _run_exact_stream(
    engine: _Engine,
    trace: Trace,
    by_name: dict[str, Quantity],
    results: dict[str, dict[str, Any]],
    b_factors: dict[str, dict[str, Tensor]],
) -> None:
    names = set(by_name)
    diag_targets = [(results[n], 1.0) for n in ("DiagGGNExact", "DiagHessian") if n in names]
    members = [n for n in ("KFLR", "EKFACExact") if n in names]
    if not diag_targets and not members:
        return
    sqrt_h = losses.sqrt_hessian(trace.loss)  # [C, N, C]
    stream = _Stream(
        n_columns=sqrt_h.shape[0],
        make=lambda v0, v1, n0, n1: sqrt_h[v0:v1, n0:n1].clone(),
        start=len(engine.views) - 1,
        diag_targets=diag_targets,
        **_kron_targets(members, by_name, results, b_factors),
    )
    engine.run(stream)


def _run_mc_streams(
    engine: _Engine,
    trace: Trace,
    by_name: dict[str, Quantity],
    results: dict[str, dict[str, Any]],
    b_factors: dict[str, dict[str, Tensor]],
) -> None:
    """One MC draw per distinct ``mc_samples`` (DiagGGNMC, KFAC, EKFAC share it when equal)."""
    groups: dict[int, list[str]] = {}
    for name in MC_QUANTITIES:
        if name in by_name:
            groups.setdefault(by_name[name].mc_samples, []).append(name)
    for mc_samples, members in groups.items():
        sqrt_h = losses.sqrt_hessian_sampled(trace.loss, mc_samples)
        stream = _Stream(
            n_columns=mc_samples,
            make=lambda v0, v1, n0, n1, s=sqrt_h: s[v0:v1, n0:n1].clone(),
            start=len(engine.views) - 1,
            diag_targets=[(results["DiagGGNMC"], 1.0)] if "DiagGGNMC" in members else [],
            **_kron_targets(members, by_name, results, b_factors),
        )
        engine.run(stream)


def _curved_positions(engine: _Engine) -> list[int]:
    """Return the records above the lowest parameter layer with a curved activation."""
    return [
        i
        for i, r in enumerate(engine.views)
        if derivatives.RULES[type(r.module)].second_derivative is not None
        and engine.lowest_param is not None
        and i > engine.lowest_param
    ]


def _has_curved(engine: _Engine) -> bool:
    return bool(_curved_positions(engine))


def _run_residual_streams(engine: _Engine, trace: Trace, target: dict[str, Tensor]) -> None:
    """DiagHessian's residual terms ``diag(sigma'' * grad)`` of every curved activation."""
    views = engine.views
    curved = _curved_positions(engine)
    if not curved:
        return
    grads: dict[int, Tensor] = {}
    wanted = set(curved)

    def keep(idx: int, mat: Tensor) -> None:
        if idx in wanted:
            grads[idx] = mat[0].clone()  # later rules work in place

    grad_stream = _Stream(
        n_columns=1,
        make=lambda v0, v1, n0, n1: losses.output_gradient(trace.loss)[n0:n1].unsqueeze(0),
        start=len(views) - 1,
    )
    _run_keep(engine, grad_stream, keep, stop=min(curved))
    for idx in curved:
        rec = views[idx]
        residual = derivatives.RULES[type(rec.module)].second_derivative(rec) * grads[idx]
        residual = residual.flatten(1)  # [N, h]
        for sign in (1.0, -1.0):
            root = (sign * residual).clamp(min=0).sqrt_()
            if not bool(root.any()):
                continue
            stream = _Stream(
                n_columns=root.shape[1],
                make=_diagonal_columns(root, rec.input.shape[1:]),
                start=idx - 1,
                diag_targets=[(target, sign)],
            )
            engine.run(stream)


def _run_keep(
    engine: _Engine, stream: _Stream, keep: Callable[[int, Tensor], None], stop: int
) -> None:
    """Propagate one column over the whole batch, handing ``keep`` the columns at each output."""
    mat = stream.make(0, stream.n_columns, 0, engine.n)
    for idx in range(stream.start, stop - 1, -1):
        keep(idx, mat)
        if idx > stop:
            mat = _jac_t(engine.views[idx], mat)


def _diagonal_columns(root: Tensor, shape: torch.Size) -> Callable[[int, int, int, int], Tensor]:
    """Column ``j`` of sample ``n`` is ``root[n, j] e_j`` (a diagonal factor), reshaped."""

    def make(v0: int, v1: int, n0: int, n1: int) -> Tensor:
        v = v1 - v0
        out = root.new_zeros(v, n1 - n0, root.shape[1])
        cols = torch.arange(v0, v1, device=root.device)
        out[torch.arange(v, device=root.device), :, cols] = root[n0:n1, v0:v1].t()
        return out.reshape(v, n1 - n0, *shape)

    return make


def _assemble_kronecker(
    engine: _Engine,
    b_factors: dict[str, dict[str, Tensor]],
    by_name: dict[str, Quantity],
    results: dict[str, dict[str, Any]],
) -> None:
    """``[B, A]`` per weight and ``[B]`` per bias; A computed once per layer and shared."""
    for rec in engine.views:
        m = rec.module
        if not isinstance(m, PARAM_MODULES):
            continue
        w_key = engine.names.get(id(m.weight))
        b_key = engine.names.get(id(m.bias)) if m.bias is not None else None
        a = engine.input_factor(rec.position) if w_key is not None else None
        for qname, factors in b_factors.items():
            if w_key is not None:
                expand = getattr(by_name.get(qname), "conv", "backpack") == "expand"
                results[qname][w_key] = [
                    factors[w_key],
                    a / _spatial_positions(rec) if expand else a,
                ]
            if b_key is not None:
                results[qname][b_key] = [factors[b_key]]


def _fill_missing_diagonals(engine: _Engine, target: dict[str, Tensor]) -> None:
    """Zero diagonals for parameters no stream reached (e.g. DiagHessian residual-only parts)."""
    for rec in engine.views:
        for p in rec.module.parameters(recurse=False):
            key = engine.names.get(id(p))
            if key is not None and key not in target:
                target[key] = torch.zeros_like(p)
