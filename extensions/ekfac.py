"""EKFAC (George et al. 2018): Kronecker eigenbases and the per-sample eigenvalue correction.

For a layer with KFAC factors ``B`` (output, ``[out, out]``) and ``A`` (input, ``[K, K]``) and
eigenvectors ``Q_B``, ``Q_A``, the corrected eigenvalues are the second moment of the
per-(column, sample) weight gradients in the Kronecker eigenbasis::

    lam[o, k] = sum_{v,n} (Q_B^T G_{v,n} Q_A)[o, k] ** 2,    G_{v,n} = sum_s s_{v,n,s} u_{n,s}^T

with ``s`` the backpropagated loss-Hessian columns at the layer output (already scaled by
``1/sqrt(N)`` / ``1/sqrt(M)``) and ``u`` the unfolded input patches (``S`` positions; one for
``Linear``). The bias: ``lam_b = sum_{v,n} (Q_B^T sum_s s_{v,n,s}) ** 2``. No per-sample gradient
is stored: the columns and the patches are rotated, and ``G`` is formed in sample chunks.
A ``Linear`` layer's factors with fewer rows than half their size (``A = x^T x / N`` for ``N``
samples) get their basis from a QR of the rows and a small ``eigh`` (:func:`eigenbasis_of_rows`).

The basis needs ``B`` of the whole batch. When the propagated columns fit the memory budget in
one chunk, ``B``, the eigenbasis and the correction are all formed when the columns reach the
layer (one propagation, inside the one autograd backward). Otherwise the columns are propagated
twice (first ``B``, then the correction), still inside the same backward (no extra forward or
autograd backward) -- see :class:`EkfacTarget`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from extensions import derivatives, device_defaults, per_sample

#: elements of one chunk of rotated per-(column, sample) weight gradients ``[V, n, out, K]`` on
#: the CPU (other devices: :data:`extensions.device_defaults.TABLE`)
CORRECTION_CHUNK_ELEMENTS = device_defaults.CPU["CORRECTION_CHUNK_ELEMENTS"]  # 2**21


def eigenbasis(factor: Tensor) -> Tensor:
    """Eigenvectors (columns, ascending eigenvalues) of a symmetric Kronecker factor."""
    with record_function("extensions::ekfac::eigh"):
        return torch.linalg.eigh(factor).eigenvectors


def rows_basis_is_cheaper(rows: Tensor) -> bool:
    """Whether :func:`eigenbasis_of_rows` beats ``eigh`` of the ``[K, K]`` factor: ``2 r <= K``.

    Measured on 2 CPU threads (float32, r = 128): K = 1152 takes 6 ms instead of 68 ms, K = 512
    3 ms instead of 10 ms, K = 256 about the same (1.6 vs 1.8 ms).
    """
    return 2 * rows.shape[0] <= rows.shape[1]


def complete_householder_q(h: Tensor, tau: Tensor) -> Tensor:
    """Return the complete ``[K, K]`` ``Q`` of :func:`torch.geqrf`'s ``(h [K, r], tau [r])``.

    ``torch.linalg.qr(mode="complete")`` (LAPACK ``orgqr``) takes 5-6 ms on 2 CPU threads for
    ``K = 1152``, ``r = 32..128``; the compact WY form ``Q = I - Y T Y^T`` (Joffrain et al. 2006:
    ``T^{-1} = diag(1 / tau) + strictly-upper(Y^T Y)``) is one ``[K, r] x [r, K]`` product (0.8-3
    ms). A reflector with ``tau = 0`` is the identity: its column of ``Y`` is zeroed.
    """
    k, r = h.shape
    live = tau != 0
    y = (h.tril(-1) + torch.eye(k, r, dtype=h.dtype, device=h.device)) * live
    inv_tau = torch.where(live, 1 / tau, torch.ones_like(tau))
    t_inv = (y.mT @ y).triu_(1) + torch.diag(inv_tau)
    eye_r = torch.eye(r, dtype=h.dtype, device=h.device)
    t = torch.linalg.solve_triangular(t_inv, eye_r, upper=True)
    q = y @ (t @ y.mT)
    q.neg_().diagonal().add_(1)
    return q


def eigenbasis_of_rows(rows: Tensor) -> Tensor:
    """Eigenvectors (ascending eigenvalues) of ``F = rows^T rows`` without ``eigh`` of ``[K, K]``.

    With ``r < K`` rows ``F`` has rank ``<= r``. A complete QR of ``rows^T = Q_1 T`` (``Q =
    [Q_1, Q_2]``, ``[K, K]``, Householder: :func:`complete_householder_q`) gives ``F = Q_1 (T
    T^T) Q_1^T``: the eigenvectors of the small ``T T^T`` (``[r, r]``) rotated by ``Q_1``, and
    ``Q_2``, an orthonormal basis of ``F``'s null space (eigenvalue 0, put first). Any positive
    multiple of ``F`` has the same basis. Only the null space differs from ``eigh(F)``'s basis:
    it is degenerate, so any orthonormal basis of it is one, and EKFAC's correction vanishes on
    it (``G q = 0`` for ``q`` orthogonal to the rows). Used for ``Linear`` layers: ``A = x^T x /
    N`` (rows: the inputs) and, when the columns run in one chunk, ``B`` (rows: the columns).

    Args:
        rows: ``[r, K]`` with ``r < K`` (see :func:`rows_basis_is_cheaper`).

    """
    r = rows.shape[0]
    h, tau = torch.geqrf(rows.t())
    q = complete_householder_q(h, tau)
    t = h[:r].triu()  # [r, r] upper triangular: rows^T = q[:, :r] @ t
    w = torch.linalg.eigh(t @ t.t()).eigenvectors
    # column-major like eigh's eigenvectors (torch.kron fails on mixed layouts, torch 2.13)
    return torch.cat([q[:, r:].mT, w.mT @ q[:, :r].mT]).mT


def _columns_and_patches(
    rec: Any, mat: Tensor, scratch: per_sample.Scratch = per_sample.fresh_scratch
) -> tuple[Tensor, Tensor | None]:
    """``s [V, n, S, out]`` and the patches ``u [n, S, K]`` (``None`` without a weight).

    A conv's patches are copied into ``scratch``'s ``"patches"`` temporary, contiguous, so that
    rotating them is one ``[n S, K] x [K, K]`` product (All-CNN-C conv7: ``S = 36`` rows a sample
    ran at 77 GMAC/s as a batched product).
    """
    m = rec.module
    if isinstance(m, nn.Conv2d):
        s = mat.flatten(3).transpose(2, 3)  # [V, n, S, out]
        patches = per_sample.conv2d_patches(rec.input, m)  # [n, c, kh, kw, ho, wo]
        n, c, kh, kw, ho, wo = patches.shape
        permuted = patches.permute(0, 4, 5, 1, 2, 3)  # [n, ho, wo, c, kh, kw]
        u = scratch("patches", permuted.numel(), rec.input).view(permuted.shape).copy_(permuted)
        u = u.view(n, ho * wo, c * kh * kw)
    else:
        s = mat.unsqueeze(2)
        u = rec.input.unsqueeze(1)
    return s, u


def corrections(
    rec: Any,
    mat: Tensor,
    q_b: Tensor,
    q_a: Tensor | None,
    max_elements: int | None = None,
    scratch: per_sample.Scratch = per_sample.fresh_scratch,
) -> tuple[Tensor | None, Tensor]:
    """``(lam [out, K] or None without q_a, lam_b [out])`` of one chunk of columns.

    Args:
        rec: the layer's record (``module``, ``input`` of the same samples as ``mat``).
        mat: the columns at the layer output, ``[V, n, out]`` or ``[V, n, out, H, W]``.
        q_b: output eigenbasis ``[out, out]``.
        q_a: input eigenbasis ``[K, K]`` (``None``: only the bias term).
        max_elements: bound on the elements of one chunk of rotated per-sample gradients
            (the memory budget's); the device's chunk size bounds it too (``None``: only that).
        scratch: gives the large temporaries (rotated patches, chunks of per-sample gradients).

    """
    m = rec.module
    conv = isinstance(m, nn.Conv2d)
    lam_b = ((mat.sum((3, 4)) if conv else mat) @ q_b).square().sum((0, 1))
    if q_a is None:
        return None, lam_b
    v, n, out = mat.shape[:3]
    positions = mat[0, 0, 0].numel()
    k = q_a.shape[0]
    chunk = device_defaults.tuned(
        "CORRECTION_CHUNK_ELEMENTS", mat.device, CORRECTION_CHUNK_ELEMENTS
    )
    if max_elements is not None:
        chunk = min(chunk, max_elements)
    if conv and gradients_first(v, positions, out, k):
        return _gradients_first_lam(rec, mat, q_b, q_a, chunk, scratch), lam_b
    s, u = _columns_and_patches(rec, mat, scratch)
    if positions == 1:  # (s_o u_k)^2 = s_o^2 u_k^2: no per-sample tensor at all
        s_rot, u_rot = s[:, :, 0] @ q_b, u[:, 0] @ q_a
        lam = torch.einsum("vno,nk->ok", s_rot.square(), u_rot.square())
        return lam, lam_b
    s_rot = (s @ q_b).transpose(-1, -2)  # [V, n, out, S]
    u_rot = scratch("u_rot", u.numel(), u).view(u.shape)  # [n, S, K]
    torch.mm(u.flatten(0, 1), q_a, out=u_rot.view(-1, k))
    lam = s_rot.new_zeros(out, k)
    step = device_defaults.thread_balanced(max(1, chunk // max(1, v * out * k)), mat.device)
    for n0 in range(0, n, step):
        s_c, u_c = s_rot[:, n0 : n0 + step], u_rot[n0 : n0 + step]
        g = scratch("rotated", v * s_c.shape[1] * out * k, u).view(v, s_c.shape[1], out, k)
        torch.matmul(s_c, u_c, out=g)  # [V, n, out, K]
        lam += g.square_().sum((0, 1))
        del g
    return lam, lam_b


def gradients_first(v: int, positions: int, out: int, k: int) -> bool:
    """Whether forming ``G`` and then rotating it costs fewer flops than rotating the patches.

    Per sample, rotating the patches first costs ``S K^2 + V S out^2`` multiply-adds (then ``G``
    of the rotated factors, ``V S out K``); forming ``G = s^T u`` first (``V S out K`` too) and
    then rotating it costs ``V out K^2`` for ``Q_A`` and ``V out^2 min(S, K)`` for ``Q_B`` (on the
    columns before or on ``G`` after, whichever is cheaper). 3C3D: conv1 (S 784, out 64, K 75)
    and conv2 (S 144, out 96, K 576) form ``G`` first, conv3 (S 36, out 128, K 864) does not.
    """
    patches = positions * k * k + v * positions * out * out
    gradients = v * out * k * k + v * out * out * min(positions, k)
    return gradients < patches


def _gradients_first_lam(
    rec: Any,
    mat: Tensor,
    q_b: Tensor,
    q_a: Tensor,
    chunk: int,
    scratch: per_sample.Scratch = per_sample.fresh_scratch,
) -> Tensor:
    """``lam`` of a conv from ``G = s^T u`` rotated afterwards (:func:`gradients_first`).

    ``G`` comes from :func:`extensions.per_sample.conv2d_weight_chunks` in cache-sized sample
    chunks (each unfolds only its own samples' patches and flattens only its own columns);
    ``G`` and its rotation live at once, so ``chunk`` (elements) bounds twice a chunk of ``G``.
    """
    v, n, out = mat.shape[:3]
    positions = mat[0, 0, 0].numel()
    k = q_a.shape[0]
    left_first = positions <= k  # rotate the columns by Q_B before, else G after
    step = per_sample.conv2d_chunk_size(rec.input, rec.module, mat[0], rows=v)
    step = max(1, min(step, chunk // max(1, 2 * v * out * k)))
    step = device_defaults.thread_balanced(step, mat.device)
    lam = mat.new_zeros(out, k)
    for n0 in range(0, n, step):
        # [V, n, out, S]: a chunk-sized copy where mat is a cropped view (after a ZeroPad2d)
        cols = mat[:, n0 : n0 + step].flatten(3)
        if left_first:
            cols = q_b.mT @ cols
        cols = cols.reshape(-1, out, *mat.shape[3:])
        x = rec.input[n0 : n0 + step]
        chunks = per_sample.conv2d_weight_chunks(x, cols, rec.module, step, scratch=scratch)
        for _, _, g in chunks:
            rotated = scratch("rotated", g.numel(), g).view(g.shape)
            torch.matmul(g, q_a, out=rotated)  # [V, n, out, K]
            del g
            if not left_first:
                rotated = q_b.mT @ rotated
            lam += rotated.square_().sum((0, 1))
            del rotated
    return lam


def _is_linear_with_few(rec: Any, rows: Tensor) -> bool:
    """Whether ``rec`` is a ``Linear`` layer whose factor of ``rows`` is cheaper from the rows."""
    return isinstance(rec.module, nn.Linear) and rows_basis_is_cheaper(rows)


@dataclass
class EkfacTarget:
    """What one EKFAC quantity collects on one stream of columns.

    Per layer (record position): ``B`` accumulated over chunks, then the bases, then the
    correction. :meth:`extract` does all three at once when ``single_pass`` (the stream runs in
    one chunk); otherwise the first propagation fills ``B`` and :meth:`needs_second_pass` tells
    the engine to propagate the same columns again for the correction.

    Args:
        conv: the factorisation of ``B`` and ``A`` (``"backpack"`` / ``"expand"``).
        results: ``{parameter name: value}`` to fill (see :class:`extensions.quantities.EKFAC`).

    """

    conv: str
    results: dict[str, Any]
    factors: dict[int, Tensor] = field(default_factory=dict)
    bases: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)
    lam: dict[int, list[Tensor | None]] = field(default_factory=dict)

    def extract(self, engine: Any, rec: Any, mat: Tensor, single_pass: bool) -> None:
        """Feed the columns ``mat`` reaching ``rec`` (a chunk of them unless ``single_pass``)."""
        pos = rec.position
        if pos not in self.bases and single_pass and isinstance(rec.module, nn.Linear):
            columns = mat.flatten(0, 1)  # B = c^T c
            if rows_basis_is_cheaper(columns):
                q_b = eigenbasis_of_rows(columns)
            else:
                q_b = eigenbasis(engine.output_factor(rec, mat, self.conv))
            self.bases[pos] = (q_b, self._input_basis(engine, pos))
        elif pos not in self.bases:
            b = engine.output_factor(rec, mat, self.conv)
            self.factors[pos] = self.factors[pos] + b if pos in self.factors else b
            if not single_pass:
                return
            self.form_basis(engine, pos)
        q_b, q_a = self.bases[pos]
        with record_function("extensions::ekfac::correction"):
            elements = engine.extraction_elements(mat)
            scratch = derivatives.scratch_for(rec)
            lam, lam_b = corrections(rec, mat, q_b, q_a, elements, scratch)
        if pos in self.lam:
            old = self.lam[pos]
            self.lam[pos] = [None if lam is None else old[0] + lam, old[1] + lam_b]
        else:
            self.lam[pos] = [lam, lam_b]

    def form_basis(self, engine: Any, pos: int) -> None:
        """Eigenbases of the layer at ``pos`` from its complete ``B`` and its ``A``."""
        self.bases[pos] = (eigenbasis(self.factors.pop(pos)), self._input_basis(engine, pos))

    @staticmethod
    def _input_basis(engine: Any, pos: int) -> Tensor | None:
        """``Q_A`` of the layer at ``pos`` (whole batch; ``None`` without a weight to curve)."""
        rec = engine.views[pos]
        if engine.names.get(id(rec.module.weight)) is None:
            return None
        if _is_linear_with_few(rec, rec.input):  # A = x^T x / N
            return eigenbasis_of_rows(rec.input)
        return eigenbasis(engine.input_factor(pos))

    def needs_second_pass(self, engine: Any) -> bool:
        """After a chunked propagation: form the bases; whether the correction still runs."""
        pending = [pos for pos in self.factors if pos not in self.bases]
        for pos in pending:
            self.form_basis(engine, pos)
        return bool(pending)

    def write(self, engine: Any) -> None:
        """Put ``[Q_B, Q_A, lam]`` / ``[Q_B, lam_b]`` into :attr:`results` by parameter name."""
        for pos, (q_b, q_a) in self.bases.items():
            m = engine.views[pos].module
            lam, lam_b = self.lam[pos]
            w_key = engine.names.get(id(m.weight))
            b_key = engine.names.get(id(m.bias)) if m.bias is not None else None
            if w_key is not None:
                self.results[w_key] = [q_b, q_a, lam]
            if b_key is not None:
                self.results[b_key] = [q_b, lam_b]
