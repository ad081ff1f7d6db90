"""Feature-level sample generators: RSG, the Delta-encoder, the hallucinator and FTL.

Each is a ``GENERATORS`` entry that attaches at a named model point during training only and
extends the batch with generated rare-class samples, usable alone::

    from lttoolbox.batch import Batch
    from lttoolbox.generators import RSG

    rsg = RSG(num_classes=10, class_counts=counts, feature_shape=(32, 16, 16))
    logits, batch = model.forward_hooked(Batch.plain(images, labels), {"layer2": rsg})
    loss = criterion(logits, batch.y_a) + rsg.auxiliary_loss()

See docs/generators.md.
"""
from .base import FeatureGenerator, frequent_classes, generation_count
from .delta_encoder import DeltaEncoder
from .ftl import FTL
from .hallucinator import Hallucinator
from .rsg import RSG

__all__ = ["FeatureGenerator", "RSG", "DeltaEncoder", "Hallucinator", "FTL", "frequent_classes",
           "generation_count"]

# Every module of the package, so that a new entry file registers without being listed here.
from ..registry import import_submodules  # noqa: E402

import_submodules(__name__)
