"""The load generator's mix: the shares a user configures are the shares sent, with valid requests."""

from __future__ import annotations

import random
from collections import Counter

from meshwatch.demo.loadgen import DECLINED_CARD, DEFAULT_MIX, SKUS, Shopper, plan


def test_mix_shares_match_the_configured_weights() -> None:
    rng, shopper = random.Random(42), Shopper()
    shopper.recent_orders.append("order-1")
    kinds = Counter(plan(rng, shopper).kind for _ in range(20_000))
    for kind, share in DEFAULT_MIX.items():
        assert abs(kinds[kind] / 20_000 - share) < 0.02, (kind, kinds)


def test_checkouts_are_valid_orders_with_a_few_declined_cards() -> None:
    rng, shopper = random.Random(3), Shopper()
    checkouts = [plan(rng, shopper, {"checkout": 1.0}) for _ in range(4_000)]
    assert all(r.method == "POST" and r.path == "/api/checkout" for r in checkouts)
    assert all(r.json and r.json["sku"] in SKUS and 1 <= r.json["quantity"] <= 3 for r in checkouts)
    declined = sum(r.json["card"] == DECLINED_CARD for r in checkouts if r.json)
    assert 0.03 < declined / 4_000 < 0.07


def test_lookups_use_orders_placed_earlier_and_browse_before_any() -> None:
    rng, shopper = random.Random(5), Shopper()
    assert plan(rng, shopper, {"lookup": 1.0}).path == "/api/products"  # nothing to look up yet
    shopper.recent_orders.append("abc")
    assert plan(rng, shopper, {"lookup": 1.0}).path == "/api/orders/abc"


def test_same_seed_same_sequence() -> None:
    a, b = random.Random(9), random.Random(9)
    sa, sb = Shopper(), Shopper()
    assert [plan(a, sa) for _ in range(200)] == [plan(b, sb) for _ in range(200)]
