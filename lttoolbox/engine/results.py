"""The results dict a run writes to results.json."""
from __future__ import annotations

import time

from ..recipe import recipe_hash
from .provenance import machine_info


class RunResults:
    """``results.json``'s content (a mixin of :class:`~lttoolbox.engine.trainer.Trainer`)."""

    def _results(self, metrics: dict, history: list, seconds: float, images: int) -> dict:
        final = self.phases[-1].recipe
        return {
            **metrics,
            "epochs": sum(s.recipe["train"]["epochs"] for s in self.phases),
            "seconds": round(seconds, 2),  # training time, compilation excluded
            "images_per_second": round(images / seconds, 1) if seconds else 0.0,
            "compile_seconds": round(sum(r.get("compile_seconds", 0.0) for r in history), 2),
            "class_names": list(self.data.train.classes),
            "seed": final["train"]["seed"],
            "commit": self._commits[0],
            "commits": self._commits,
            "machine": machine_info(self.device),
            "processes": self.world.size,
            "protocol": self.recipe.get("meta", {}).get("protocol"),
            "recipe_hash": recipe_hash(self.recipe),
            "data": self.data.meta,
            "selection": self.selection,
            **({"reused": self._reused} if self._reused else {}),
            "phases": [{"name": s.name, "epochs": s.recipe["train"]["epochs"],
                        "final_loss": next((r["loss"] for r in reversed(history)
                                            if r["phase"] == s.name), None),
                        **({"generated": self.generated[s.name]}
                           if s.name in self.generated else {})}
                       for s in self.phases],
            "history": history,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
