"""Monotone curve fitting for noisy benchmark measurements.

Real benchmark sweeps are noisy and not monotone: a longer prompt occasionally measures faster
than a shorter one, and a larger decode batch occasionally shows a lower TPOT. Interpolating that
noise would make the planner's answers jump around, so every curve the planner evaluates is first
fitted under the physical constraint it must obey (latency never decreases with more work).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import isotonic_regression, nnls

FloatArray = npt.NDArray[np.float64]


def isotonic_increasing(y: FloatArray, weights: FloatArray | None = None) -> FloatArray:
    r"""Least-squares non-decreasing fit of ``y`` (isotonic regression).

    Solves :math:`\min_z \sum_i w_i (y_i - z_i)^2` subject to :math:`z_1 \le z_2 \le \dots`
    with SciPy's pool-adjacent-violators solver (:func:`scipy.optimize.isotonic_regression`,
    SciPy >= 1.12). Each fitted value is the weighted mean of a block of adjacent observations.

    Parameters
    ----------
    y : ndarray
        Observations ordered by their abscissa.
    weights : ndarray, optional
        Positive weights (default all ones).

    Returns
    -------
    ndarray
        The fitted non-decreasing sequence, same length as ``y``.

    References
    ----------
    Barlow, Bartholomew, Bremner, Brunk, *Statistical Inference under Order Restrictions*
    (1972), the pool-adjacent-violators algorithm.

    Examples
    --------
    >>> isotonic_increasing(np.array([1.0, 3.0, 2.0, 4.0])).tolist()
    [1.0, 2.5, 2.5, 4.0]
    """
    values = np.asarray(y, dtype=np.float64)
    if values.size == 0:
        return values.copy()
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return np.asarray(isotonic_regression(values, weights=w, increasing=True).x, dtype=np.float64)


@dataclass(frozen=True)
class PolynomialTimeFit:
    r"""Non-negative polynomial latency model :math:`t(x) = \sum_k c_k x^k`, all :math:`c_k \ge 0`.

    Non-negative coefficients make the curve non-decreasing for :math:`x \ge 0`, so the fit
    removes measurement noise while keeping the physics: a fixed cost, a per-token cost and,
    for prefill, an attention cost quadratic in the prompt length.

    Attributes
    ----------
    coefficients : tuple of float
        :math:`c_0, c_1, \dots` (lowest power first).
    max_abs_residual : float
        Largest absolute residual on the fitted points, in the units of ``t``.
    """

    coefficients: tuple[float, ...]
    max_abs_residual: float

    def __call__(self, x: FloatArray | float) -> FloatArray:
        xs = np.asarray(x, dtype=np.float64)
        out = np.zeros_like(xs)
        for power, coefficient in enumerate(self.coefficients):
            out = out + coefficient * xs**power
        return out


def fit_nonnegative_polynomial(x: FloatArray, t: FloatArray, degree: int = 2) -> PolynomialTimeFit:
    r"""Fit :math:`t(x) = c_0 + c_1 x + \dots + c_d x^d` with :math:`c_k \ge 0` by NNLS.

    Columns are scaled to unit maximum before solving so that the quadratic term does not
    dominate the conditioning.

    Examples
    --------
    >>> x = np.array([1.0, 2.0, 3.0, 4.0])
    >>> fit = fit_nonnegative_polynomial(x, 0.5 + 2.0 * x, degree=1)
    >>> [round(c, 6) for c in fit.coefficients]
    [0.5, 2.0]
    """
    xs = np.asarray(x, dtype=np.float64)
    ts = np.asarray(t, dtype=np.float64)
    columns = np.stack([xs**k for k in range(degree + 1)], axis=1)
    scale = np.maximum(np.abs(columns).max(axis=0), 1e-300)
    solution, _ = nnls(columns / scale, ts)
    coefficients = tuple(float(v) for v in solution / scale)
    fit = PolynomialTimeFit(coefficients, 0.0)
    residual = float(np.max(np.abs(fit(xs) - ts))) if xs.size else 0.0
    return PolynomialTimeFit(coefficients, residual)


def interp_clamped(x: FloatArray | float, xp: FloatArray, fp: FloatArray) -> FloatArray:
    """Piecewise-linear interpolation, extended linearly beyond the last point.

    Below the first point the value is clamped to the first value (latency at a smaller load
    than measured is taken as the smallest measured latency, a conservative choice); above the
    last point the last segment's slope continues, so extra load keeps costing latency.

    Examples
    --------
    >>> interp_clamped(np.array([0.0, 1.5, 4.0]), np.array([1.0, 2.0, 3.0]),
    ...                np.array([10.0, 20.0, 40.0])).tolist()
    [10.0, 15.0, 60.0]
    """
    xs = np.asarray(x, dtype=np.float64)
    out = np.interp(xs, xp, fp)
    if xp.size >= 2:
        slope = max((fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), 0.0)
        beyond = xs > xp[-1]
        out = np.where(beyond, fp[-1] + slope * (xs - xp[-1]), out)
    return np.asarray(out, dtype=np.float64)
