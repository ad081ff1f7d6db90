"""CMO's minority-weighted distribution Q, in its official-code and its paper form."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..registry import SAMPLERS
from .base import LTSampler, check_real

WEIGHTINGS = ("image", "class")


@SAMPLERS.register("cmo_weighted")
class CMOWeightedSampler(LTSampler):
    """The minority-weighted sampling that CMO draws its foreground (pasted) images from.

    Park et al., "The Majority Can Help the Minority: Context-rich Minority Oversampling for
    Long-tailed Classification", CVPR 2022, Sec. 3.2. The paper writes the class probability
    ``q(r, k) = n_k^(-r) / sum_k' n_k'^(-r)``. The official code instead gives every *image* the
    weight ``n_k^(-r)`` (a ``WeightedRandomSampler`` over the data set, N draws with
    replacement), so a class is drawn with probability proportional to ``n_k * n_k^(-r) =
    n_k^(1-r)``: uniform over classes for the default r = 1, where the paper's form would be
    proportional to 1 / n_k. Both are here:

    * ``weighting: image`` (default): the official code, ``p_k ∝ n_k^(1-r)``. It produced the
      published numbers, hence the default.
    * ``weighting: class``: the paper's equation, ``p_k ∝ n_k^(-r)``.

    In both an image is then drawn uniformly within its class. On its own this sampler is a
    re-sampler like the others; CMO itself pairs it with an ``instance`` background stream in
    the augmentation family.

    Recipe::

        sampler: {name: cmo_weighted}                            # official code, r = 1
        sampler: {name: cmo_weighted, weighting: class, r: 1.0}  # the paper's q(r, k)

    Args:
        r: The exponent, ``>= 0`` (the code's ``weighted_alpha``; default 1 as there).
        weighting: ``"image"`` (official code) or ``"class"`` (paper), see above.
        *args, **base: The labels (also positionally), the context, ``num_samples``,
            ``start_epoch`` and ``end_epoch``: see :class:`~lttoolbox.samplers.base.LTSampler`.

    Example:
        >>> import numpy as np
        >>> labels = np.array([0] * 4 + [1])
        >>> CMOWeightedSampler(labels).class_probabilities()          # n^(1-1): uniform
        array([0.5, 0.5])
        >>> CMOWeightedSampler(labels, weighting="class").class_probabilities()  # ∝ 1/n
        array([0.2, 0.8])
    """

    def __init__(self, *args: Any, r: float = 1.0, weighting: str = "image", **base: Any):
        super().__init__(*args, **base)
        self.r = check_real("r", r)
        if self.r < 0:  # both forms would then favour the majority classes over the minority
            raise ConfigError(f"r must be at least 0, got {r!r}: a negative r weights the frequent "
                              f"classes up, the opposite of minority oversampling")
        if weighting not in WEIGHTINGS:
            raise ConfigError(
                f"weighting must be 'image' (official code: class probability ∝ n^(1-r)) or "
                f"'class' (paper: ∝ n^(-r)), got {weighting!r}")
        self.weighting = weighting

    @property
    def class_exponent(self) -> float:
        """The power of n_k the class probability is proportional to."""
        return 1.0 - self.r if self.weighting == "image" else -self.r

    def _active_weights(self) -> np.ndarray:
        log_w = self.class_exponent * np.log(self.class_counts)
        return np.exp(log_w - log_w.max())
