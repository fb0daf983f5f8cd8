"""The published image rules (issue #16), copied here rather than imported so that later
edits to the code or the table never change what this migration wrote."""

from decimal import Decimal

from django.db import migrations

GUIDE = "https://platform.openai.com/docs/guides/images-vision#calculating-costs"

# (pattern, method, base tokens, tokens per tile, patch multiplier), from the guide's tables.
RULES = [
    # "4o, 4.1, 4.5": 85 base, 170 per tile.
    ("gpt-4o*", "tile", 85, 170, None),
    ("gpt-4.1*", "tile", 85, 170, None),
    ("gpt-4.5*", "tile", 85, 170, None),
    # "4o-mini": 2833 base, 5667 per tile.
    ("gpt-4o-mini*", "tile", 2833, 5667, None),
    # "gpt-5, gpt-5-chat-latest": 70 base, 140 per tile; gpt-5-20* is its dated snapshots.
    ("gpt-5", "tile", 70, 140, None),
    ("gpt-5-20*", "tile", 70, 140, None),
    ("gpt-5-chat-latest", "tile", 70, 140, None),
    # "o1, o1-pro, o3": 75 base, 150 per tile.
    ("o1*", "tile", 75, 150, None),
    ("o3*", "tile", 75, 150, None),
    # "computer-use-preview": 65 base, 129 per tile.
    ("computer-use-preview*", "tile", 65, 129, None),
    # Patches, with the guide's multipliers.
    ("gpt-4.1-mini*", "patch", 0, 0, "1.62"),
    ("gpt-4.1-nano*", "patch", 0, 0, "2.46"),
    ("gpt-5-mini*", "patch", 0, 0, "1.62"),
    ("gpt-5-nano*", "patch", 0, 0, "2.46"),
    ("o4-mini*", "patch", 0, 0, "1.72"),
]


def seed(apps, schema_editor):
    ImageTokenRule = apps.get_model("chat", "ImageTokenRule")
    for pattern, method, base, per_tile, multiplier in RULES:
        ImageTokenRule.objects.get_or_create(
            pattern=pattern,
            defaults={
                "method": method,
                "base_tokens": base,
                "tokens_per_tile": per_tile,
                "patch_multiplier": Decimal(multiplier or 1),
                "patch_cap": 1536,
                "source": GUIDE,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("chat", "ImageTokenRule").objects.filter(
        pattern__in=[rule[0] for rule in RULES], source=GUIDE
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0012_image_token_rules"),
    ]

    operations = [migrations.RunPython(seed, unseed)]
