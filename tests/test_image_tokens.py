"""Image token counts by model family (issue #16, "Counting"), from the rule table.

Expected figures come from the worked examples in OpenAI's vision guide, "Calculating costs"
(https://platform.openai.com/docs/guides/images-vision#calculating-costs), and from the
constants in its tables applied to those examples.
"""

import math
import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from chat.image_tokens import Rule, cost, count_image, patches, tiles
from chat.models import ChatModel, ImageTokenRule, Provider

pytestmark = pytest.mark.django_db


def staff_with(*perms: str, username: str = "dana") -> Client:
    user = User.objects.create_user(username, is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def rule_form(rule: ImageTokenRule, **changes) -> dict:
    form = {
        "pattern": rule.pattern,
        "method": rule.method,
        "priority": rule.priority,
        "source": rule.source,
        "base_tokens": rule.base_tokens,
        "tokens_per_tile": rule.tokens_per_tile,
        "patch_multiplier": rule.patch_multiplier,
        "patch_cap": rule.patch_cap,
    }
    return form | changes


# --- the guide's worked examples ----------------------------------------------------------------


def test_it_counts_the_guides_gpt_4o_examples():
    assert count_image("gpt-4o", 1024, 1024, "high") == 765  # 768×768: 4 tiles
    assert count_image("gpt-4o", 2048, 4096, "high") == 1105  # 1024×2048, then 768×1536: 6 tiles
    assert count_image("gpt-4o", 4096, 8192, "low") == 85  # low detail: the base alone


def test_auto_detail_is_counted_as_high_so_the_count_never_falls_short():
    assert count_image("gpt-4o", 1024, 1024) == count_image("gpt-4o", 1024, 1024, "high") == 765


def test_gpt_4o_mini_has_the_same_tiles_with_its_own_constants():
    assert count_image("gpt-4o-mini", 1024, 1024, "high") == 2833 + 4 * 5667
    assert count_image("gpt-4o-mini", 2048, 4096, "high") == 2833 + 6 * 5667
    assert count_image("gpt-4o-mini", 4096, 8192, "low") == 2833


@pytest.mark.parametrize(
    "model, base, per_tile",
    [
        ("gpt-4.1", 85, 170),
        ("gpt-4.5-preview", 85, 170),
        ("gpt-4o-2024-08-06", 85, 170),
        ("gpt-5", 70, 140),
        ("gpt-5-2025-08-07", 70, 140),
        ("gpt-5-chat-latest", 70, 140),
        ("o1", 75, 150),
        ("o1-pro", 75, 150),
        ("o3", 75, 150),
        ("computer-use-preview", 65, 129),
    ],
)
def test_each_tile_family_gets_the_guides_constants(model, base, per_tile):
    assert count_image(model, 1024, 1024, "high") == base + 4 * per_tile
    assert count_image(model, 2048, 4096, "high") == base + 6 * per_tile
    assert count_image(model, 4096, 8192, "low") == base


def test_the_guides_patch_examples():
    assert patches(1024, 1024) == 1024  # 32 × 32, under the cap
    assert patches(1800, 2400) == 1452  # 57 × 75 is over: shrunk to 1056 × 1408, 33 × 44
    assert patches(2048, 768) == 1536  # exactly at the cap: not shrunk


@pytest.mark.parametrize(
    "model, multiplier",
    [
        ("gpt-4.1-mini", Decimal("1.62")),
        ("gpt-4.1-nano", Decimal("2.46")),
        ("o4-mini", Decimal("1.72")),
        ("gpt-5-mini", Decimal("1.62")),
        ("gpt-5-nano", Decimal("2.46")),
    ],
)
def test_patch_models_multiply_the_patches_and_bill_whole_tokens(model, multiplier):
    assert count_image(model, 1024, 1024) == math.ceil(1024 * multiplier)
    assert count_image(model, 1800, 2400) == math.ceil(1452 * multiplier)
    # The guide gives patch models no low detail; the image costs the same.
    assert count_image(model, 1800, 2400, "low") == count_image(model, 1800, 2400, "high")


def test_a_whole_product_is_not_rounded_up_by_float_noise():
    # 640×480 is 20 × 15 = 300 patches; 300 × 1.62 is 486 exactly, 486.00000000000006 in floats.
    assert count_image("gpt-4.1-mini", 640, 480) == 486


def test_small_images_are_not_enlarged_and_resized_sides_are_whole_pixels():
    """Measured on gpt-4.1 by a forum user against the API's usage (billed 1453 and 773, each
    with 8 tokens of message overhead): https://community.openai.com/t/1281361. 2049×513
    fits 2048 as 2048×512.75 → 513 px, two rows of tiles; 2050×513 as 2048×512.5 → 512 px,
    one row; neither is enlarged to a 768 px short side."""
    assert count_image("gpt-4.1", 2049, 513, "high") == 1445
    assert count_image("gpt-4.1", 2050, 513, "high") == 765
    assert tiles(512, 512) == 1


# --- which rule a model gets --------------------------------------------------------------------


def test_a_model_no_rule_covers_has_no_count():
    assert count_image("llama3.2-vision", 1024, 1024) is None
    assert count_image("my-gpt-4o", 1024, 1024) is None  # a pattern matches the whole name


def test_the_most_specific_pattern_wins():
    assert count_image("gpt-4o-mini-2024-07-18", 1024, 1024, "low") == 2833  # not gpt-4o*'s 85
    assert count_image("gpt-4o-2024-11-20", 1024, 1024, "low") == 85
    assert count_image("gpt-4.1-mini-2025-04-14", 1024, 1024) == 1659  # patches, not gpt-4.1*'s tiles
    ImageTokenRule.objects.create(
        pattern="gpt-4o-2024-05-13", method="tile", base_tokens=1, tokens_per_tile=1
    )
    assert count_image("gpt-4o-2024-05-13", 1024, 1024, "low") == 1  # an exact name beats any pattern


def test_priority_decides_between_equally_specific_patterns():
    ImageTokenRule.objects.create(
        pattern="acme-*", method="tile", base_tokens=10, tokens_per_tile=1, priority=1
    )
    eyes = ImageTokenRule.objects.create(pattern="*-eyes", method="tile", base_tokens=20, tokens_per_tile=1)
    assert count_image("acme-eyes", 1, 1, "low") == 10
    eyes.priority = 2
    eyes.save()
    assert count_image("acme-eyes", 1, 1, "low") == 20


def test_names_match_case_aside_and_through_a_routers_prefix():
    assert count_image("GPT-4o", 1024, 1024, "high") == 765
    assert count_image("openai/gpt-4o-mini", 1024, 1024, "low") == 2833
    ImageTokenRule.objects.create(
        pattern="openai/gpt-4o-mini", method="tile", base_tokens=7, tokens_per_tile=1
    )
    assert count_image("openai/gpt-4o-mini", 1024, 1024, "low") == 7  # the whole id first


def test_the_table_is_read_once_not_per_image(django_assert_num_queries):
    count_image("gpt-4o", 1024, 1024)
    with django_assert_num_queries(0):
        assert count_image("gpt-4o-mini", 1024, 1024, "low") == 2833


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="detail must be one of auto, low, high"):
        count_image("gpt-4o", 1024, 1024, "medium")
    with pytest.raises(ValueError, match="positive width and height"):
        count_image("gpt-4o", 0, 1024)


def test_cost_follows_a_rule_that_is_not_saved():
    rule = Rule(pattern="x", method="patch", patch_multiplier=Decimal(2), patch_cap=4)
    assert cost(rule, 64, 64) == 8  # 2 × 2 patches, times 2
    assert cost(rule, 640, 640) == 8  # shrunk to the cap of 4 patches


# --- staff edit the table -----------------------------------------------------------------------


def test_a_staff_edit_in_the_admin_changes_the_count_at_once():
    rule = ImageTokenRule.objects.get(pattern="gpt-4o*")
    assert count_image("gpt-4o", 1024, 1024, "high") == 765
    editor = staff_with("chat.view_imagetokenrule", "chat.change_imagetokenrule")
    change = reverse("admin:chat_imagetokenrule_change", args=[rule.pk])
    assert "765 tokens (high detail), 85 (low)" in editor.get(change).content.decode()
    assert editor.post(change, rule_form(rule, tokens_per_tile=200)).status_code == 302
    assert count_image("gpt-4o", 1024, 1024, "high") == 85 + 4 * 200


def test_a_rule_added_in_the_admin_covers_a_new_model_and_deleting_it_uncovers_it():
    editor = staff_with("chat.view_imagetokenrule", "chat.add_imagetokenrule", "chat.delete_imagetokenrule")
    assert count_image("acme-vision-1", 1024, 1024) is None
    form = rule_form(
        ImageTokenRule(
            pattern="acme-vision-*", method="patch", patch_multiplier=Decimal("1.5"), patch_cap=1536
        )
    )
    assert editor.post(reverse("admin:chat_imagetokenrule_add"), form).status_code == 302
    assert count_image("acme-vision-1", 1024, 1024) == 1536
    added = ImageTokenRule.objects.get(pattern="acme-vision-*")
    delete = reverse("admin:chat_imagetokenrule_delete", args=[added.pk])
    assert editor.post(delete, {"post": "yes"}).status_code == 302
    assert count_image("acme-vision-1", 1024, 1024) is None


def test_staff_who_may_only_view_rules_cannot_change_them():
    rule = ImageTokenRule.objects.get(pattern="gpt-4o*")
    viewer = staff_with("chat.view_imagetokenrule")
    change = reverse("admin:chat_imagetokenrule_change", args=[rule.pk])
    assert viewer.get(change).status_code == 200
    assert viewer.post(change, rule_form(rule, tokens_per_tile=1)).status_code == 403
    assert count_image("gpt-4o", 1024, 1024, "high") == 765
    assert staff_with("chat.view_chatmodel", username="erin").get(change).status_code == 403


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"pattern": "*"}, "Name at least one character of the model"),
        ({"pattern": "gpt 4o"}, "Model names have no spaces."),
        ({"base_tokens": 0, "tokens_per_tile": 0}, "A tile rule needs base tokens or tokens per tile."),
        ({"patch_multiplier": "0"}, "Ensure this value is greater than"),
    ],
)
def test_a_rule_that_cannot_count_is_refused_with_a_reason(changes, error):
    rule = ImageTokenRule.objects.get(pattern="gpt-4o*")
    editor = staff_with("chat.view_imagetokenrule", "chat.change_imagetokenrule")
    response = editor.post(
        reverse("admin:chat_imagetokenrule_change", args=[rule.pk]), rule_form(rule, **changes)
    )
    assert response.status_code == 200 and error in response.content.decode()
    assert count_image("gpt-4o", 1024, 1024, "high") == 765


# --- which models read images ----------------------------------------------------------------


def test_staff_mark_a_model_as_accepting_images():
    provider = Provider.objects.create(name="team", base_url="http://127.0.0.1:9/v1")
    model = ChatModel.objects.create(provider=provider, name="gpt-4o")
    assert model.accepts_images is False  # a model reads images only once staff say so
    editor = staff_with("chat.view_chatmodel", "chat.change_chatmodel")
    change = reverse("admin:chat_chatmodel_change", args=[model.pk])
    html = editor.get(change).content.decode()
    assert 'name="accepts_images"' in html and "images sent to other models are refused" in html
    form = {
        "provider": provider.pk,
        "name": "gpt-4o",
        "display_name": "",
        "encoding": "",
        "context_window": "",
        "max_reply_tokens": 1024,
        "stream": "on",
        "include_usage": "on",
        "api_style": "chat",
        "accepts_images": "on",
        "enabled": "on",
    }
    assert editor.post(change, form).status_code == 302
    model.refresh_from_db()
    assert model.accepts_images is True


def test_the_model_list_shows_which_rule_counts_each_models_images():
    provider = Provider.objects.create(name="team", base_url="http://127.0.0.1:9/v1")
    for name in ("gpt-4o-mini-2024-07-18", "llama3.2-vision"):
        ChatModel.objects.create(provider=provider, name=name, accepts_images=True)
    viewer = staff_with("chat.view_chatmodel")
    html = viewer.get(reverse("admin:chat_chatmodel_changelist")).content.decode()
    cells = re.findall(r'<td class="field-image_rule">([^<]*)</td>', html)
    assert sorted(cells) == ["gpt-4o-mini*", "none"]
