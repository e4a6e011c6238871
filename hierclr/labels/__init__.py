"""Label hierarchies: class names per level and parent maps (:class:`LabelHierarchy`), read from JSON, edge
lists (WordNet style) or the built-in CIFAR-100 table. A domain object shared by data, eval, models and viz."""
from hierclr.labels.cifar100 import cifar100
from hierclr.labels.edge_list import from_edge_list, load_hierarchy
from hierclr.labels.hierarchy import HierarchyError, LabelHierarchy

__all__ = ["HierarchyError", "LabelHierarchy", "cifar100", "from_edge_list", "load_hierarchy"]
