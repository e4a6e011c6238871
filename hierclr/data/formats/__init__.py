"""Readers of the three shard formats. Each lists its input into *read units* (JSON descriptors of
a file or a chunk of files, with the id range they hold) and reads one unit into rows of the common
schema ``id, image, label, shard``; :mod:`hierclr.data.source` turns units into a ``ray.data.Dataset``."""
