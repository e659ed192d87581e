"""Named regions per image (boxes, masks), attribution shares in them, and region removal."""

from .masks import RegionSpec, box_mask, load_mask, parse_region, region_mask
from .removal import RemovalConfig, region_removal_effects, remove_region
from .shares import RegionShare, attribution_share

__all__ = [
    "RegionShare",
    "RegionSpec",
    "RemovalConfig",
    "attribution_share",
    "box_mask",
    "load_mask",
    "parse_region",
    "region_mask",
    "region_removal_effects",
    "remove_region",
]
