"""What an image costs in prompt tokens, by the provider's published rule for the model family
(issue #16, "Counting").

Both families of rule are OpenAI's, from the vision guide's "Calculating costs"
(https://platform.openai.com/docs/guides/images-vision#calculating-costs, now served from
developers.openai.com/api/docs/guides/images-vision):

- tiles ("GPT 4o, GPT-4.1, GPT-4o-mini, CUA, and o-series (except o4-mini)"): scale to fit a
  2048 px square, then so that the short side is 768 px, and count 512 px squares; the cost
  is the model's base tokens plus its tile tokens per square, and "detail": "low" costs the
  base alone;
- patches (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano): count the 32 px
  patches covering the image; past the cap, shrink by r = √(32²×cap/(w×h)), then by
  min(floor(w×r/32)/(w×r/32), floor(h×r/32)/(h×r/32)) so one side is a whole number of
  patches; the patches, at most the cap, times the model's multiplier. The guide gives no
  "low" detail for these models, and usage measured against the API bills both alike
  (https://community.openai.com/t/1262691).

Which rule and constants a model gets is data: the ImageTokenRule table, seeded by a
migration and edited in the admin, so a new model needs no release. Our count is recorded
beside the provider's reported usage, so a wrong constant shows as a mismatch.
"""

import math
import re
import time
from dataclasses import dataclass
from decimal import Decimal

from chat.models import ImageTokenRule

DETAILS = ("auto", "low", "high")
TILE, PATCH = ImageTokenRule.Method.TILE.value, ImageTokenRule.Method.PATCH.value


@dataclass(frozen=True)
class Rule:
    pattern: str
    method: str
    base_tokens: int = 0
    tokens_per_tile: int = 0
    patch_multiplier: Decimal = Decimal(1)
    patch_cap: int = 1536
    priority: int = 0

    @property
    def specificity(self) -> tuple[bool, int, int]:
        """An exact name beats any pattern; then more fixed characters (gpt-4o-mini* before
        gpt-4o*); then the staff's priority."""
        return ("*" not in self.pattern, len(self.pattern.replace("*", "")), self.priority)

    @classmethod
    def of(cls, row: ImageTokenRule) -> "Rule":
        return cls(
            pattern=row.pattern,
            method=row.method,
            base_tokens=row.base_tokens,
            tokens_per_tile=row.tokens_per_tile,
            patch_multiplier=Decimal(row.patch_multiplier),
            patch_cap=row.patch_cap,
            priority=row.priority,
        )


def _pixels(length: float) -> int:
    """A resized image has whole pixels. Rounding to the nearest one (not up) is what the API
    bills: see the thread cited in tests/test_image_tokens.py."""
    return max(1, math.floor(length + 0.5))


def tiles(width: int, height: int) -> int:
    """512 px tiles after the two published downscales. Both only shrink: a small image is
    not blown up to a 768 px short side."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = _pixels(width * scale), _pixels(height * scale)
    scale = min(1.0, 768 / min(width, height))
    width, height = _pixels(width * scale), _pixels(height * scale)
    return math.ceil(width / 512) * math.ceil(height / 512)


def patches(width: int, height: int, cap: int = 1536) -> int:
    """32 px patches covering the image, after the published shrink when more than `cap`
    would be needed."""
    if math.ceil(width / 32) * math.ceil(height / 32) > cap:
        shrink = math.sqrt(32 * 32 * cap / (width * height))
        across, down = width * shrink / 32, height * shrink / 32
        shrink *= min(math.floor(across) / across, math.floor(down) / down)
        width, height = _pixels(width * shrink), _pixels(height * shrink)
    return min(cap, math.ceil(width / 32) * math.ceil(height / 32))


def cost(rule: Rule, width: int, height: int, detail: str = "auto") -> int:
    if rule.method == TILE:
        if detail == "low":
            return rule.base_tokens
        # "auto" lets the model choose; counting it as "high" never undercounts.
        return rule.base_tokens + rule.tokens_per_tile * tiles(width, height)
    # Billed in whole tokens. The guide does not say how the product is rounded; the usage
    # the API reports for gpt-5-mini rounds it up (forum thread "GPT-5-mini image input token
    # calculation discrepancy with official FAQ formula").
    return math.ceil(patches(width, height, rule.patch_cap) * rule.patch_multiplier)


_rules: tuple[float, list[tuple[re.Pattern, Rule]]] | None = None
RULES_TTL = 5.0  # seconds; other worker processes see admin changes within this


def _compile(pattern: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in pattern.casefold().split("*")), re.DOTALL)


def rules() -> list[tuple[re.Pattern, Rule]]:
    """The table, most specific first. Read once per RULES_TTL, not per image: this process
    forgets it when a rule is saved or deleted, other processes when the TTL ends."""
    global _rules
    now = time.monotonic()
    if _rules is None or _rules[0] < now:
        loaded = [Rule.of(row) for row in ImageTokenRule.objects.all()]
        loaded.sort(key=lambda rule: rule.specificity, reverse=True)
        _rules = (now + RULES_TTL, [(_compile(rule.pattern), rule) for rule in loaded])
    return _rules[1]


def forget_rules(**kwargs) -> None:
    global _rules
    _rules = None


def rule_for(model: str) -> Rule | None:
    """The most specific rule matching the model id, case aside. A router's id
    (openai/gpt-4o) falls back to the part after its last slash when no rule names it whole."""
    name = model.strip().casefold()
    names = [name, name.rsplit("/", 1)[1]] if "/" in name else [name]
    table = rules()
    for candidate in names:
        for regex, rule in table:
            if regex.fullmatch(candidate):
                return rule
    return None


def count_image(model: str, width: int, height: int, detail: str = "auto") -> int | None:
    """Prompt tokens one image of width × height pixels costs `model`; None when no rule
    covers the model (the cost is then unknown, as for text without a vocabulary, rather
    than guessed). Reads the database at most once per RULES_TTL: from async code, call it
    through sync_to_async."""
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, not {detail!r}")
    if width < 1 or height < 1:
        raise ValueError(f"an image has a positive width and height, not {width}×{height}")
    rule = rule_for(model)
    return None if rule is None else cost(rule, width, height, detail)
