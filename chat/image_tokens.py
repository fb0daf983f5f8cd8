"""What an image costs in prompt tokens, by the provider's published rule for the model family
(issue #16, "Counting").

Two families of rule, both from OpenAI's vision guide ("Calculating costs",
https://platform.openai.com/docs/guides/images-vision):

- tile-based (gpt-4o, gpt-4.1, gpt-4o-mini, o-series): scale to fit a 2048 px square, then
  the short side down to 768 px, count 512 px tiles; cost = base + per_tile × tiles, and
  "low" detail costs the base alone;
- patch-based (gpt-4.1-mini, gpt-4.1-nano, o4-mini and later): count 32 px patches, scale
  the image down until at most `cap` patches cover it, then multiply by a per-model factor.

Which rule a model follows is data, not code: the table will live in the admin so staff can
add a model the day a provider publishes its constants.
"""

import math
from dataclasses import dataclass

DETAILS = ("auto", "low", "high")
TILE, PATCH = "tile", "patch"


@dataclass(frozen=True)
class Rule:
    method: str  # TILE or PATCH
    base_tokens: int = 0
    tokens_per_tile: int = 0
    patch_multiplier: float = 1.0
    patch_cap: int = 1536


def tiles(width: int, height: int) -> int:
    """512 px tiles after the published two-step downscale. Images are only ever scaled
    down: a small image is not blown up to a 768 px short side."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return math.ceil(width / 512) * math.ceil(height / 512)


def patches(width: int, height: int, cap: int = 1536) -> int:
    """32 px patches covering the image, after the published shrink when more than `cap`
    would be needed: shrink by sqrt(cap × 32² / area), then a little more so that the
    narrower fit of width and height lands on a whole number of patches."""
    if math.ceil(width / 32) * math.ceil(height / 32) <= cap:
        return math.ceil(width / 32) * math.ceil(height / 32)
    shrink = math.sqrt(32 * 32 * cap / (width * height))
    across, down = width * shrink / 32, height * shrink / 32
    shrink *= min(math.floor(across) / across, math.floor(down) / down)
    # The shrunk sides are whole multiples of 32 up to float noise; rounding to 1e-6 keeps
    # 33.0000000001 from costing a 34th column.
    across = math.ceil(round(width * shrink / 32, 6))
    down = math.ceil(round(height * shrink / 32, 6))
    return min(cap, across * down)


def cost(rule: Rule, width: int, height: int, detail: str = "auto") -> int:
    if rule.method == TILE:
        if detail == "low":
            return rule.base_tokens
        # "auto" lets the provider choose; counting it as "high" never undercounts.
        return rule.base_tokens + rule.tokens_per_tile * tiles(width, height)
    return math.ceil(patches(width, height, rule.patch_cap) * rule.patch_multiplier)


_BUILT_IN = {"gpt-4o": Rule(TILE, base_tokens=85, tokens_per_tile=170)}


def rule_for(model: str) -> Rule | None:
    return _BUILT_IN.get(model)


def count_image(model: str, width: int, height: int, detail: str = "auto") -> int | None:
    """Prompt tokens one image costs `model`; None when no rule covers the model (the count
    is then unknown, as for text without a vocabulary, rather than guessed)."""
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, not {detail!r}")
    if width < 1 or height < 1:
        raise ValueError(f"an image has a positive width and height, not {width}×{height}")
    rule = rule_for(model)
    return None if rule is None else cost(rule, width, height, detail)
