"""Engine: the per-worker pieces of training. ``step`` and ``local_run`` are plain torch (no Ray);
the Ray Train loop, the clustering service and tracking will be built on top of them."""
from hierclr.engine.step import embed_features, hcsc_train_step

__all__ = ["embed_features", "hcsc_train_step"]
