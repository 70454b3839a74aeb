"""`accord demo`: synthetic customers with multi-device journeys, sent through the public tracking API.

Each customer browses anonymously on one or two devices, signs up (identify) on one of them, comes
back later on another device that is linked by an identify, an alias or an email, and may order or
join a company. The same seed gives the same customers, events and messageIds; timestamps are placed
relative to the time of the run, so sending a seed twice with one write key stores each event once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from faker import Faker
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from accord import __version__
from accord.ingest.spec import iso

BATCH_SIZE = 100
CONCURRENCY = 4
CHUNK_CUSTOMERS = 100  # generated, sent and forgotten together: memory stays flat for any count
HISTORY = timedelta(days=60)
SHOP = "https://shop.example.com"

_HOUR = 3600.0
_DAY = 24 * _HOUR

# (type, manufacturer, model, os name, os version, width, height, user agent)
_DEVICES = (
    (
        "desktop",
        "Apple",
        "Macintosh",
        "Mac OS X",
        "14.4",
        1440,
        900,
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Safari/605.1.15",
    ),
    (
        "desktop",
        "Microsoft",
        "PC",
        "Windows",
        "11",
        1920,
        1080,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    ),
    (
        "mobile",
        "Apple",
        "iPhone15,2",
        "iOS",
        "17.4",
        393,
        852,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    ),
    (
        "mobile",
        "Samsung",
        "SM-S921B",
        "Android",
        "14",
        384,
        854,
        "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0 Mobile Safari/537.36",
    ),
    (
        "tablet",
        "Apple",
        "iPad13,18",
        "iPadOS",
        "17.4",
        820,
        1180,
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    ),
)

# (sku, name, category, brand, price)
_PRODUCTS = (
    ("SH-1001", "Trail Runner 2", "Shoes", "Northpeak", 119.0),
    ("SH-1002", "City Sneaker", "Shoes", "Urbanist", 89.0),
    ("SH-1003", "Merino Hiking Boot", "Shoes", "Northpeak", 189.0),
    ("OW-2001", "Packable Down Jacket", "Outerwear", "Northpeak", 229.0),
    ("OW-2002", "Rain Shell", "Outerwear", "Driftline", 149.0),
    ("OW-2003", "Fleece Midlayer", "Outerwear", "Driftline", 79.0),
    ("BG-3001", "Daypack 22L", "Bags", "Carryall", 95.0),
    ("BG-3002", "Weekender Duffel", "Bags", "Carryall", 139.0),
    ("BG-3003", "Laptop Sleeve 14in", "Bags", "Urbanist", 45.0),
    ("AC-4001", "Insulated Bottle 750ml", "Accessories", "Driftline", 32.0),
    ("AC-4002", "Wool Beanie", "Accessories", "Northpeak", 28.0),
    ("AC-4003", "Running Socks 3-pack", "Accessories", "Urbanist", 24.0),
    ("EL-5001", "GPS Sport Watch", "Electronics", "Pacer", 299.0),
    ("EL-5002", "Wireless Earbuds", "Electronics", "Pacer", 129.0),
    ("EL-5003", "Headlamp 400lm", "Electronics", "Driftline", 49.0),
)
_CATEGORIES = tuple(sorted({p[2] for p in _PRODUCTS}))
_SEARCHES = ("rain jacket", "waterproof boots", "running shoes", "backpack", "merino", "watch", "gift ideas")
_PLANS = ("free", "free", "basic", "premium")
_INDUSTRIES = ("Retail", "Software", "Healthcare", "Logistics", "Education", "Finance", "Hospitality")
_REFERRERS = ("https://www.google.com/", "https://duckduckgo.com/", "https://www.instagram.com/", "")
_LINKS = ("identify", "alias", "email")
_TIMEZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Phoenix")


@dataclass(frozen=True, slots=True)
class Device:
    anonymous_id: str
    context: dict[str, Any]


@dataclass(slots=True)
class Customer:
    """One synthetic person and how their devices were linked."""

    user_id: str
    email: str
    phone: str
    name: str
    devices: list[Device]
    link: str  # how the returning device was linked: "identify", "alias" or "email"
    orders: int = 0
    group_id: str | None = None


@dataclass(slots=True)
class _Journey:
    """Builds one customer's events on a relative clock (seconds since their first visit)."""

    rng: random.Random
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    clock: float = 0.0

    def wait(self, low: float, high: float) -> None:
        self.clock += self.rng.uniform(low, high)

    def emit(self, device: Device | None, kind: str, user_id: str | None, **fields: Any) -> None:
        """One call from `device` (None: from a server, without a device's anonymousId or context)."""
        event: dict[str, Any] = {"type": kind, "messageId": str(uuid.UUID(int=self.rng.getrandbits(128), version=4))}
        if device is not None:
            event["anonymousId"] = device.anonymous_id
            event["context"] = device.context
        if user_id is not None:
            event["userId"] = user_id
        event.update(fields)
        self.events.append((self.clock, event))
        self.wait(5, 90)


class DemoGenerator:
    """Customers one at a time, deterministic for a seed. `now` anchors their timestamps."""

    def __init__(self, *, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.now = now
        self.index = 0
        self._phone_offset = self.rng.randrange(10**7)
        self.companies = [self._company() for _ in range(12)]

    def __iter__(self) -> Iterator[tuple[Customer, list[dict[str, Any]]]]:
        return self

    def __next__(self) -> tuple[Customer, list[dict[str, Any]]]:
        customer, journey = self._journey()
        self.index += 1
        return customer, self._place(journey)

    def take(self, count: int) -> list[tuple[Customer, list[dict[str, Any]]]]:
        return [next(self) for _ in range(count)]

    # -- people, devices, companies ---------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _device(self, timezone: str) -> Device:
        kind, maker, model, os_name, os_version, width, height, agent = self.rng.choice(_DEVICES)
        return Device(
            anonymous_id=self._uuid(),
            context={
                "userAgent": agent,
                "device": {"type": kind, "manufacturer": maker, "model": model},
                "os": {"name": os_name, "version": os_version},
                "screen": {"width": width, "height": height},
                "locale": "en-US",
                "timezone": timezone,
                "ip": self.fake.ipv4_public(),
                "library": {"name": "accord-demo", "version": __version__},
            },
        )

    def _company(self) -> dict[str, Any]:
        name = self.fake.company()
        slug = "".join(c for c in name.lower() if c.isalnum())[:20]
        return {
            "groupId": f"org_{self.rng.getrandbits(40):010x}",
            "traits": {
                "name": name,
                "industry": self.rng.choice(_INDUSTRIES),
                "employees": self.rng.choice((8, 25, 60, 140, 400, 1200, 5000)),
                "plan": self.rng.choice(("team", "business", "enterprise")),
                "website": f"https://{slug}.example.com",
            },
        }

    def _person(self) -> tuple[str, str, str, str, dict[str, Any]]:
        first, last = self.fake.first_name(), self.fake.last_name()
        # The index makes emails and phones unique, so no two synthetic people share an identifier.
        local = "".join(c for c in f"{first}.{last}".lower() if c.isalnum() or c == ".")
        email = f"{local}{self.index}@{self.fake.safe_domain_name()}"
        digits = f"{(self.index * 7919 + self._phone_offset) % 10**7:07d}"
        phone = f"+1 ({self.rng.randint(201, 989)}) {digits[:3]}-{digits[3:]}"
        user_id = f"u_{self.rng.getrandbits(64):016x}"
        traits = {
            "email": email,
            "firstName": first,
            "lastName": last,
            "name": f"{first} {last}",
            "phone": phone,
            "plan": self.rng.choice(_PLANS),
            "address": {
                "street": self.fake.street_address(),
                "city": self.fake.city(),
                "state": self.fake.state_abbr(),
                "postalCode": self.fake.postcode(),
                "country": "US",
            },
            "birthday": self.fake.date_of_birth(minimum_age=18, maximum_age=80).isoformat(),
        }
        return user_id, email, phone, f"{first} {last}", traits

    # -- the journey ------------------------------------------------------------------------------
    def _journey(self) -> tuple[Customer, _Journey]:
        rng = self.rng
        user_id, email, phone, name, traits = self._person()
        timezone = rng.choice(_TIMEZONES)
        first = self._device(timezone)
        second = self._device(timezone) if rng.random() < 0.5 else None
        journey = _Journey(rng)

        self._browse(journey, first, None, pages=rng.randint(1, 4))
        if second is not None:
            journey.wait(_HOUR, 2 * _DAY)
            self._browse(journey, second, None, pages=rng.randint(1, 3))
        journey.wait(10 * 60, 3 * _DAY)
        self._browse(journey, first, None, pages=rng.randint(0, 2))

        traits["createdAt"] = journey.clock  # relative for now; made absolute in _place
        journey.emit(first, "identify", user_id, traits=traits)
        journey.emit(first, "track", user_id, event="Signed Up", properties={"method": rng.choice(("email", "google"))})

        # Later, back on the other device (or a new one), linked to the person by one of three means.
        journey.wait(_HOUR, 10 * _DAY)
        returning = second or self._device(timezone)
        link = rng.choice(_LINKS)
        returning_user: str | None = None
        if link == "identify":
            returning_user = user_id
            journey.emit(returning, "identify", user_id, traits={"lastDevice": returning.context["device"]["type"]})
        elif link == "alias":  # as a server would send it: the device's id becomes an alias of the user
            journey.emit(None, "alias", user_id, previousId=returning.anonymous_id)
        else:  # an email typed on the device, cased differently, stitches it once normalised
            local, domain = email.split("@")
            journey.emit(returning, "identify", None, traits={"email": f"{local.title()}@{domain.upper()}"})
        self._browse(journey, returning, returning_user, pages=rng.randint(1, 3))

        customer = Customer(user_id=user_id, email=email, phone=phone, name=name, devices=[first, returning], link=link)
        if rng.random() < 0.55:
            for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
                journey.wait(2 * _HOUR, 7 * _DAY)
                device, who = (first, user_id) if rng.random() < 0.5 else (returning, returning_user)
                self._order(journey, device, who)
                customer.orders += 1
        if rng.random() < 0.2:
            company = rng.choice(self.companies)
            journey.wait(_HOUR, 5 * _DAY)
            journey.emit(first, "group", user_id, groupId=company["groupId"], traits=dict(company["traits"]))
            customer.group_id = company["groupId"]
        if rng.random() < 0.3:
            journey.wait(_DAY, 10 * _DAY)
            journey.emit(first, "identify", user_id, traits={"plan": "premium"})
            journey.emit(first, "track", user_id, event="Plan Upgraded", properties={"plan": "premium"})
        return customer, journey

    def _browse(self, journey: _Journey, device: Device, user_id: str | None, *, pages: int) -> None:
        rng = self.rng
        referrer = rng.choice(_REFERRERS)
        journey.emit(device, "page", user_id, name="Home", properties=_page("/", "Home", referrer))
        if rng.random() < 0.3:
            query = rng.choice(_SEARCHES)
            journey.emit(device, "track", user_id, event="Products Searched", properties={"query": query})
        for _ in range(pages):
            category = rng.choice(_CATEGORIES)
            if rng.random() < 0.2:
                path = f"/c/{category.lower()}"
                journey.emit(
                    device, "page", user_id, name="Category", category=category, properties=_page(path, category)
                )
                journey.emit(device, "track", user_id, event="Product List Viewed", properties={"category": category})
            product = rng.choice(_PRODUCTS)
            journey.emit(
                device,
                "page",
                user_id,
                name="Product",
                category=product[2],
                properties=_page(_path(product), product[1]),
            )
            journey.emit(device, "track", user_id, event="Product Viewed", properties=_product(product))
            if rng.random() < 0.25:
                journey.emit(device, "track", user_id, event="Product Added", properties=_product(product, quantity=1))

    def _order(self, journey: _Journey, device: Device, user_id: str | None) -> None:
        rng = self.rng
        lines: list[dict[str, Any]] = []
        for product in rng.sample(_PRODUCTS, rng.choice((1, 1, 2, 3))):
            line = _product(product, quantity=rng.choice((1, 1, 1, 2)))
            journey.emit(device, "track", user_id, event="Product Viewed", properties=_product(product))
            journey.emit(device, "track", user_id, event="Product Added", properties=line)
            lines.append(line)
        subtotal = round(sum(line["price"] * line["quantity"] for line in lines), 2)
        discount = round(subtotal * 0.1, 2) if rng.random() < 0.2 else 0.0
        shipping = 0.0 if subtotal >= 100 else 7.95
        tax = round((subtotal - discount) * 0.08, 2)
        total = round(subtotal - discount + shipping + tax, 2)
        order_id = f"ord_{rng.getrandbits(48):012x}"
        journey.emit(device, "page", user_id, name="Checkout", properties=_page("/checkout", "Checkout"))
        journey.emit(
            device,
            "track",
            user_id,
            event="Checkout Started",
            properties={"order_id": order_id, "value": subtotal, "currency": "USD", "products": lines},
        )
        completed: dict[str, Any] = {
            "order_id": order_id,
            "total": total,
            "subtotal": subtotal,
            "revenue": round(subtotal - discount, 2),
            "tax": tax,
            "shipping": shipping,
            "discount": discount,
            "currency": "USD",
            "products": lines,
        }
        if discount:
            completed["coupon"] = "WELCOME10"
        journey.emit(device, "track", user_id, event="Order Completed", properties=completed)

    def _place(self, journey: _Journey) -> list[dict[str, Any]]:
        """Give the journey absolute timestamps within the history window, ending before now."""
        span = max(journey.clock, 1.0)
        window = HISTORY.total_seconds() - 120
        scale = min(1.0, window / span)
        end = self.now - timedelta(seconds=60 + self.rng.uniform(0, max(0.0, window - span * scale)))
        start = end - timedelta(seconds=span * scale)
        events: list[dict[str, Any]] = []
        for offset, event in journey.events:
            event["timestamp"] = iso(start + timedelta(seconds=offset * scale))
            traits = event.get("traits")
            if event["type"] == "identify" and traits is not None and isinstance(traits.get("createdAt"), float):
                traits["createdAt"] = iso(start + timedelta(seconds=traits["createdAt"] * scale))
            events.append(event)
        return events


def _path(product: tuple[str, str, str, str, float]) -> str:
    return "/p/" + product[1].lower().replace(" ", "-")


def _page(path: str, title: str, referrer: str = "") -> dict[str, Any]:
    return {"path": path, "url": SHOP + path, "title": f"{title} | Example Outdoor", "referrer": referrer}


def _product(product: tuple[str, str, str, str, float], *, quantity: int | None = None) -> dict[str, Any]:
    sku, name, category, brand, price = product
    properties: dict[str, Any] = {
        "product_id": sku.lower(),
        "sku": sku,
        "name": name,
        "category": category,
        "brand": brand,
        "price": price,
        "currency": "USD",
        "url": SHOP + _path(product),
    }
    if quantity is not None:
        properties["quantity"] = quantity
    return properties


def generate(customers: int, *, seed: int, now: datetime) -> list[tuple[Customer, list[dict[str, Any]]]]:
    """All of a small demo's customers and their events (for tests and previews)."""
    return DemoGenerator(seed=seed, now=now).take(customers)


# -- sending -------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Tally:
    customers: int = 0
    events: int = 0
    orders: int = 0
    groups: int = 0
    links: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_LINKS, 0))
    examples: list[str] = field(default_factory=list)
    alias_example: bool = False


def _refused(response: httpx.Response) -> RuntimeError:
    try:
        body = response.json()
        detail = f"{body['code']}: {body['message']}"
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200] or response.reason_phrase
    return RuntimeError(f"Accord refused the demo events (HTTP {response.status_code}) {detail}")


async def _send_all(
    *, base_url: str, write_key: str, customers: int, seed: int, progress: Progress, task: TaskID
) -> _Tally:
    tally = _Tally()
    generator = DemoGenerator(seed=seed, now=datetime.now(UTC))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, auth=(write_key, ""), timeout=30.0, limits=limits) as client:
        health = await client.get("/healthz")
        if health.status_code != 200:
            raise RuntimeError(f"{base_url} does not look like Accord: GET /healthz answered HTTP {health.status_code}")
        pending: set[asyncio.Task[int]] = set()

        async def post(batch: list[dict[str, Any]], share: float) -> int:
            body = orjson.dumps({"batch": batch, "sentAt": iso(datetime.now(UTC))})
            response = await client.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
            if response.status_code >= 400:
                raise _refused(response)
            progress.advance(task, share)
            return len(batch)

        async def settle(wait_for: int) -> None:
            while len(pending) > wait_for:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    pending.discard(finished)
                    tally.events += finished.result()  # re-raises a refusal or a transport error

        try:
            while tally.customers < customers:
                count = min(CHUNK_CUSTOMERS, customers - tally.customers)
                chunk: list[dict[str, Any]] = []
                for customer, events in generator.take(count):
                    _count(tally, customer)
                    chunk.extend(events)
                chunk.sort(key=lambda e: e["timestamp"])  # as devices would send them
                batches = [chunk[i : i + BATCH_SIZE] for i in range(0, len(chunk), BATCH_SIZE)]
                for batch in batches:
                    await settle(CONCURRENCY - 1)
                    pending.add(asyncio.create_task(post(batch, count * len(batch) / len(chunk))))
            await settle(0)
        finally:
            for unfinished in pending:
                unfinished.cancel()
            if pending:
                await asyncio.wait(pending)
                for unfinished in pending:  # collect their errors too, so none is reported as unretrieved
                    if not unfinished.cancelled():
                        unfinished.exception()
    return tally


def _count(tally: _Tally, customer: Customer) -> None:
    tally.customers += 1
    tally.orders += customer.orders
    tally.groups += customer.group_id is not None
    tally.links[customer.link] += 1
    # Three ways to open one person: preferably one who ordered and whose devices were linked by alias.
    if not tally.examples or (customer.orders and customer.link == "alias" and not tally.alias_example):
        tally.alias_example = bool(customer.orders and customer.link == "alias")
        tally.examples = [
            f"user_id:{customer.user_id}",
            f"email:{customer.email}",
            f"anonymous_id:{customer.devices[-1].anonymous_id}",
        ]


def run_demo(*, base_url: str, write_key: str, customers: int, seed: int, console: Console) -> str:
    """Send `customers` synthetic customers to Accord at `base_url`; return a summary for people.

    Raises ConnectionError when Accord cannot be reached and RuntimeError when it refuses a request.
    """
    base_url = base_url.rstrip("/")
    started = time.perf_counter()
    columns = (TextColumn("[bold]customers"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    httpx_log = logging.getLogger("httpx")
    level = httpx_log.level
    httpx_log.setLevel(logging.WARNING)  # one INFO line per request would bury the progress bar
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("demo", total=customers)
            sending = _send_all(
                base_url=base_url, write_key=write_key, customers=customers, seed=seed, progress=progress, task=task
            )
            try:
                tally = asyncio.run(sending)
            except httpx.TransportError as error:
                raise ConnectionError(f"cannot reach Accord at {base_url} ({type(error).__name__}: {error})") from None
            progress.update(task, completed=customers)
    finally:
        httpx_log.setLevel(level)
    seconds = time.perf_counter() - started
    rate = tally.events / seconds if seconds > 0 else 0.0
    lines = [
        f"Sent {tally.events:,} events for {tally.customers:,} synthetic customers in {seconds:.1f} s "
        f"({rate:,.0f} events/s).",
        f"Each used two devices, linked by identify ({tally.links['identify']:,}), alias "
        f"({tally.links['alias']:,}) or email ({tally.links['email']:,}); {tally.orders:,} orders; "
        f"{tally.groups:,} joined a company.",
        "The worker stitches them into profiles in the background.",
    ]
    if tally.examples:
        lines += [
            "These references all open one of them:",
            *(f"  {ref}" for ref in tally.examples),
            "Read it with a token from `accord token create --role analyst`:",
            '  curl -H "Authorization: Bearer $TOKEN" \\',
            f"    {base_url}/api/v1/profiles/{tally.examples[0]}",
        ]
    return "\n".join(lines)
