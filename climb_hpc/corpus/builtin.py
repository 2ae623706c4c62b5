"""The built-in corpus: a small synthetic multi-domain corpus for runs without real data.

Seven clearly distinct domains, generated on the fly from templates and small vocabularies (no
network, no copied text): ``arithmetic`` word problems with worked answers, Python-like ``code``,
cooking ``recipes``, ``sports`` match reports, ``weather`` forecasts, ``chemistry`` lab notes and
``legal`` contract clauses. Each document is 200-1500 characters, has ``source`` = its domain and
id ``<domain>-<index:06d>``.

Document ``i`` of a domain depends only on (seed, domain, i), never on how many documents are
asked for, so a bigger corpus extends a smaller one. String seeds of ``random.Random`` are hashed
with SHA-512, so the output is the same in every process and Python version >= 3.2.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from climb_hpc.rundir import atomic_write

MIN_CHARS, MAX_CHARS = 200, 1500

R = random.Random
Gen = Callable[[R], str]

# ---------------------------------------------------------------- shared vocabulary


def _v(words: str) -> list[str]:
    """A vocabulary written as ``"a|b|c"`` (compact, and entries may contain spaces)."""
    return words.split("|")


PEOPLE = _v(
    "Ava|Ben|Chloe|Diego|Elif|Farah|Goran|Hana|Ivan|Jun|Kofi|Lena|Mateo|Nadia|Omar|Priya|Quinn|Rosa|Sami"
    "|Tomas|Uma|Viktor|Wen|Yara"
)
SURNAMES = _v(
    "Okafor|Lindqvist|Moreau|Tanaka|Haddad|Novak|Silva|Kowalski|Brennan|Adeyemi|Castillo|Petrov|Nakamura"
    "|Fischer|O'Neill|Rahman|Ferreira"
)
CITIES = _v(
    "Riverton|Ashford|Port Calder|Northfield|Kingsbridge|Millbrook|Eastwick|Stonehaven|Brightwater"
    "|Oakridge|Harrowgate|Westmere|Fairhaven|Redcliff"
)


def _pick(rng: R, xs: list, k: int = 1) -> list:
    return rng.sample(xs, k)


def _assemble(rng: R, head: str, unit: Callable[[int], str], tail: str = "", sep: str = "\n") -> str:
    """``head`` + units until a random target length, never past MAX_CHARS, at least MIN_CHARS."""
    target = rng.randint(MIN_CHARS + 100, MAX_CHARS - 250)
    room = MAX_CHARS - len(tail) - len(sep)
    text, i, misses = head, 0, 0
    while (len(text) < target or len(text) < MIN_CHARS) and misses < 20:
        u = unit(i)
        if len(text) + len(sep) + len(u) > room:
            misses += 1
            continue
        text, i = text + sep + u, i + 1
    text = text + sep + tail if tail else text
    if not MIN_CHARS <= len(text) <= MAX_CHARS:  # cannot happen with the templates below
        raise AssertionError(f"built-in document of {len(text)} characters")
    return text


# ---------------------------------------------------------------- arithmetic word problems

ITEMS = _v(
    "apples|marbles|stickers|pencils|cupcakes|books|seashells|stamps|beads|cookies|postcards|tulips"
    "|batteries|notebooks|oranges|toy cars"
)


def _problem(rng: R) -> tuple[str, str, int]:
    """One word problem: (question, worked steps, answer)."""
    name, other = _pick(rng, PEOPLE, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(3, 12), rng.randint(4, 15)
        c = rng.randint(1, a * b - 1)
        return (
            f"{name} buys {a} packs of {item} with {b} {item} in each pack and gives {c} of them to {other}. "
            f"How many {item} does {name} have left?",
            f"{name} buys {a} x {b} = {a * b} {item}. After giving away {c}, {name} has {a * b} - {c} = "
            f"{a * b - c} left.",
            a * b - c,
        )
    if kind == 1:
        v, t, v2, t2 = rng.randint(40, 120), rng.randint(2, 6), rng.randint(30, 90), rng.randint(1, 4)
        d = v * t + v2 * t2
        return (
            f"A train leaves {rng.choice(CITIES)} and travels at {v} km per hour for {t} hours, then slows to "
            f"{v2} km per hour for another {t2} hours. How far does it travel in total?",
            f"First part: {v} x {t} = {v * t} km. Second part: {v2} x {t2} = {v2 * t2} km. "
            f"Total: {v * t} + {v2 * t2} = {d} km.",
            d,
        )
    if kind == 2:
        k, p = rng.randint(2, 9), rng.randint(2, 14)
        m = k * p + rng.randint(1, 40)
        return (
            f"{name} has ${m}. {name} buys {k} {item} at ${p} each. How much money does {name} have left?",
            f"The {item} cost {k} x ${p} = ${k * p}. Money left: ${m} - ${k * p} = ${m - k * p}.",
            m - k * p,
        )
    if kind == 3:
        k, q = rng.randint(3, 8), rng.randint(4, 20)
        r = rng.randint(0, k - 1)
        total = k * q + r
        return (
            f"{name} shares {total} {item} equally among {k} friends and keeps whatever is left over. "
            f"How many {item} does each friend get, and how many does {name} keep?",
            f"{total} divided by {k} is {q} with remainder {r}, because {k} x {q} = {k * q} and "
            f"{total} - {k * q} = {r}. Each friend gets {q}; {name} keeps {r}.",
            q,
        )
    if kind == 4:
        price, pct = rng.randint(2, 30) * 20, rng.choice([10, 15, 20, 25, 30, 40, 50])
        off = price * pct // 100
        return (
            f"A jacket costs ${price}. The store takes {pct}% off in a sale. What is the sale price?",
            f"The discount is {pct}% of ${price} = {pct}/100 x {price} = ${off}. "
            f"Sale price: ${price} - ${off} = ${price - off}.",
            price - off,
        )
    young, gap, years = rng.randint(4, 30), rng.randint(2, 25), rng.randint(2, 10)
    s = 2 * young + gap + 2 * years
    return (
        f"{name} is {gap} years older than {other}. In {years} years the sum of their ages will be {s}. "
        f"How old is {other} now?",
        f"Let x be {other}'s age now. In {years} years: (x + {years}) + (x + {gap} + {years}) = {s}, so "
        f"2x + {gap + 2 * years} = {s}, 2x = {s - gap - 2 * years} and x = {young}.",
        young,
    )


def gen_arithmetic(rng: R) -> str:
    def unit(i: int) -> str:
        q, steps, ans = _problem(rng)
        return f"Problem {i + 1}: {q}\nSolution: {steps}\nAnswer: {ans}"

    return _assemble(
        rng, rng.choice(["Practice set: word problems", "Worked examples", "Homework answers"]), unit, sep="\n\n"
    )


# ---------------------------------------------------------------- Python-like code

VERBS = _v("compute|parse|load|filter|merge|normalize|count|validate|render|update|collect|resolve|encode|split|rank")
NOUNS = _v("records|scores|tokens|matrix|config|users|events|prices|paths|buffer|entries|weights|labels|segments|rows")
MODULES = ["os", "re", "json", "math", "itertools", "collections", "functools", "pathlib", "typing", "hashlib"]


def _function(rng: R) -> str:
    verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
    arg, other = rng.sample(["items", "data", "values", "seq", "table", "rows", "stream"], 2)
    limit, step = rng.randint(1, 100), rng.randint(2, 9)
    op, cmp = rng.choice(["+", "-", "*", "//", "%"]), rng.choice(["<", ">", "<=", ">=", "!="])
    lines = [
        f"def {verb}_{noun}({arg}, {other}=None, limit={limit}):",
        f'    """{verb.capitalize()} the {noun} in `{arg}` and return the result."""',
    ]
    body = rng.randrange(4)
    if body == 0:
        lines += [
            "    result = []",
            f"    for i, item in enumerate({arg}):",
            f"        if item {cmp} limit:",
            f"            result.append(item {op} {step})",
            f"        elif i % {step} == 0:",
            "            continue",
            "    return result",
        ]
    elif body == 1:
        lines += [
            "    counts = {}",
            f"    for key in {arg}:",
            "        counts[key] = counts.get(key, 0) + 1",
            f"    if {other} is not None:",
            f"        counts.update({other})",
            "    return sorted(counts.items(), key=lambda kv: -kv[1])[:limit]",
        ]
    elif body == 2:
        lines += [
            "    try:",
            f"        with open({arg}) as fh:",
            "            text = fh.read()",
            "    except FileNotFoundError:",
            f"        return {other} or []",
            f"    parts = [p.strip() for p in text.split({rng.choice(repr_seps)})]",
            "    return [p for p in parts if p][:limit]",
        ]
    else:
        lines += [
            "    total, n = 0, 0",
            f"    while n < len({arg}) and total {cmp} limit:",
            f"        total += {arg}[n] {op} {step}",
            "        n += 1",
            f"    return total / max(n, 1) if {other} is None else (total, n)",
        ]
    return "\n".join(lines)


repr_seps = ['","', '";"', '"\\n"', '"|"', '"\\t"']


def _class(rng: R) -> str:
    noun = rng.choice(NOUNS)
    name = "".join(
        w.capitalize()
        for w in [rng.choice(NOUNS).rstrip("s"), rng.choice(["Store", "Cache", "Index", "Queue", "Registry"])]
    )
    size = rng.choice([16, 32, 64, 128, 256])
    return "\n".join(
        [
            f"class {name}:",
            f'    """Keeps {noun} in memory, at most {size} of them."""',
            "",
            f"    def __init__(self, capacity={size}):",
            "        self.capacity = capacity",
            "        self._data = {}",
            "",
            "    def add(self, key, value):",
            "        if len(self._data) >= self.capacity:",
            "            self._data.pop(next(iter(self._data)))",
            "        self._data[key] = value",
            "",
            "    def __len__(self):",
            "        return len(self._data)",
        ]
    )


def gen_code(rng: R) -> str:
    imports = "\n".join(f"import {m}" for m in sorted(_pick(rng, MODULES, rng.randint(1, 3))))
    return _assemble(rng, imports, lambda i: "\n" + (_class(rng) if rng.random() < 0.25 else _function(rng)))


# ---------------------------------------------------------------- recipes

PROTEINS = _v(
    "chicken thighs|salmon fillets|chickpeas|tofu|lamb shoulder|prawns|lentils|pork loin|mushrooms"
    "|black beans|cod|halloumi"
)
VEG = _v(
    "spinach|roasted peppers|sweet potato|leeks|courgettes|green beans|cherry tomatoes|cauliflower|fennel"
    "|kale|carrots|aubergine"
)
SEASONINGS = _v(
    "smoked paprika|ground cumin|fresh thyme|garlic cloves|grated ginger|chilli flakes|lemon zest"
    "|dried oregano|coriander seeds|black pepper|sea salt|bay leaves"
)
STEP_VERBS = _v("Heat|Chop|Whisk|Simmer|Fold in|Season|Roast|Saute|Blend|Marinate|Toast|Drain|Stir in|Reduce")


def gen_recipes(rng: R) -> str:
    protein, veg = rng.choice(PROTEINS), rng.choice(VEG)
    style = rng.choice(["One-pan", "Slow-cooked", "Crispy", "Lemony", "Spiced", "Herby", "Weeknight", "Smoky"])
    head = (
        f"{style} {protein} with {veg}\nServes {rng.randint(2, 6)}. Prep time: {rng.randint(5, 30)} minutes. "
        f"Cook time: {rng.choice([15, 20, 25, 30, 40, 45, 60, 90])} minutes.\n\nIngredients:"
    )
    ingredients = [protein, veg] + _pick(rng, SEASONINGS, rng.randint(2, 4)) + ["olive oil"]
    lines = [
        f"- {rng.choice([150, 200, 250, 300, 400, 500])} g {protein}",
        f"- {rng.choice([1, 2, 3])} {rng.choice(['handfuls', 'cups'])} {veg}",
    ]
    for ing in ingredients[2:-1]:
        unit = rng.choice(["tsp", "tbsp", "pinch of"])
        lines.append(f"- a pinch of {ing}" if unit == "pinch of" else f"- {rng.randint(1, 3)} {unit} {ing}")
    lines.append(f"- {rng.randint(1, 4)} tbsp olive oil")
    head += "\n" + "\n".join(lines) + "\n\nMethod:"

    def step(i: int) -> str:
        verb, ing = rng.choice(STEP_VERBS), rng.choice(ingredients)
        how = rng.choice(
            [
                f"over a medium heat for {rng.randint(2, 15)} minutes",
                f"in an oven preheated to {rng.choice([180, 190, 200, 220])}C for {rng.randint(10, 40)} minutes",
                "until golden and fragrant",
                "until the sauce coats the back of a spoon",
                "gently so it keeps its shape",
                f"and leave to rest for {rng.randint(5, 20)} minutes",
            ]
        )
        return f"{i + 1}. {verb} the {ing} {how}."

    tip = rng.choice(
        [
            "Tip: leftovers keep for 3 days in the fridge.",
            "Serve with crusty bread or steamed rice.",
            "Tip: swap the herbs for whatever is in season.",
            "Freezes well for up to a month.",
        ]
    )
    return _assemble(rng, head, step, tail="\n" + tip)


# ---------------------------------------------------------------- sports match reports

MASCOTS = ["Falcons", "Rovers", "United", "Wanderers", "Athletic", "Harriers", "Mariners", "Comets", "Lions", "Vale"]
VENUES = ["Park", "Stadium", "Arena", "Ground", "Road"]
FINISHES = _v(
    "with a low shot into the far corner|from the penalty spot|with a header from a corner"
    "|after a swift counter-attack|from twenty-five yards|with a curling free kick|on the rebound"
)
MOODS = _v("defended well|lacked a cutting edge|showed real character|were sloppy in possession|rode our luck")


def gen_sports(rng: R) -> str:
    home, away = [f"{c} {m}" for c, m in zip(_pick(rng, CITIES, 2), _pick(rng, MASCOTS, 2), strict=True)]
    hs, as_ = rng.randint(0, 5), rng.randint(0, 4)
    verdict = "drew" if hs == as_ else ("beat" if hs > as_ else "lost to")
    head = (
        f"MATCH REPORT: {home} {hs}-{as_} {away}\n{home} {verdict} {away} in front of "
        f"{rng.randint(3, 60) * 1000 + rng.randint(0, 999):,} supporters at {rng.choice(CITIES)} "
        f"{rng.choice(VENUES)} on {rng.choice(['Saturday', 'Sunday', 'Tuesday night', 'Wednesday night'])}."
    )
    goals = sorted(rng.sample(range(2, 91), hs + as_))
    sides = [home] * hs + [away] * as_
    rng.shuffle(sides)
    events = [
        f"{m}' GOAL - {rng.choice(PEOPLE)} {rng.choice(SURNAMES)} scores for {side} {rng.choice(FINISHES)}."
        for m, side in zip(goals, sides, strict=True)
    ]

    def unit(i: int) -> str:
        if i < len(events):
            return events[i]
        coach, side = f"{rng.choice(PEOPLE)} {rng.choice(SURNAMES)}", rng.choice([home, away])
        return rng.choice(
            [
                f"{rng.randint(10, 89)}' Yellow card for {rng.choice(SURNAMES)} of {side} after a late tackle.",
                f"{side} had {rng.randint(35, 65)}% possession and {rng.randint(3, 18)} shots, "
                f"{rng.randint(1, 8)} of them on target.",
                f'"We {rng.choice(MOODS)} today," said {side} manager {coach}. "The league table does not lie."',
                f"The result leaves {side} {rng.choice(['third', 'fifth', 'eighth', 'bottom', 'top'])} "
                f"of the table with {rng.randint(4, 60)} points from {rng.randint(5, 30)} games.",
                f"{rng.randint(46, 88)}' Substitution: {rng.choice(SURNAMES)} replaces {rng.choice(SURNAMES)} "
                f"for {side}.",
            ]
        )

    return _assemble(rng, head, unit)


# ---------------------------------------------------------------- weather forecasts

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SKIES = _v(
    "sunny spells|overcast|scattered showers|heavy rain at times|light drizzle|clear skies"
    "|thunderstorms in the afternoon|patchy fog clearing by midday|sleet on high ground|bright and dry"
)
OUTLOOKS = _v("turning milder|colder air from the north|a settled spell|unsettled with further rain")
WINDS = ["north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west"]


def gen_weather(rng: R) -> str:
    region = rng.choice(
        [
            "the coast",
            "the northern hills",
            "the river valley",
            "the city and suburbs",
            "the western isles",
            "the central plains",
        ]
    )
    head = (
        f"Weather forecast for {rng.choice(CITIES)} and {region}, issued {rng.choice(DAYS)} at "
        f"{rng.choice(['06:00', '12:00', '18:00'])}.\nSea-level pressure {rng.randint(985, 1035)} hPa and "
        f"{rng.choice(['rising', 'falling', 'steady'])}."
    )
    start, base = rng.randrange(7), rng.randint(-5, 24)

    def day(i: int) -> str:
        hi = base + rng.randint(-3, 6)
        if i >= 7 or rng.random() < 0.2:
            return rng.choice(
                [
                    f"Warning: {rng.choice(['gusts up to', 'winds reaching'])} {rng.randint(60, 110)} km/h "
                    "possible along exposed coasts.",
                    f"UV index {rng.randint(1, 9)}; pollen count {rng.choice(['low', 'moderate', 'high'])}.",
                    f"Outlook: {rng.choice(OUTLOOKS)} later in the week.",
                ]
            )
        return (
            f"{DAYS[(start + i) % 7]}: {rng.choice(SKIES)}, high {hi}C, low {hi - rng.randint(3, 11)}C, "
            f"wind {rng.choice(WINDS)} {rng.randint(5, 45)} km/h, {rng.randint(0, 95)}% chance of precipitation."
        )

    return _assemble(rng, head, day)


# ---------------------------------------------------------------- chemistry lab notes

REAGENTS = [
    ("sodium hydroxide", 40.00),
    ("benzaldehyde", 106.12),
    ("acetic anhydride", 102.09),
    ("salicylic acid", 138.12),
    ("copper(II) sulfate", 159.61),
    ("potassium permanganate", 158.03),
    ("sodium borohydride", 37.83),
    ("aniline", 93.13),
    ("magnesium turnings", 24.31),
    ("iodine", 253.81),
]
SOLVENTS = ["ethanol", "water", "dichloromethane", "diethyl ether", "toluene", "ethyl acetate", "acetone"]
PROCEDURES = _v("synthesis|recrystallisation|titration|reduction|oxidation|extraction")
COLOURS = ["pale yellow", "deep blue", "colourless", "orange-brown", "milky white", "violet", "green"]


def gen_chemistry(rng: R) -> str:
    code = f"{rng.choice('ABCDEFGH')}{rng.randint(100, 999)}"
    head = (
        f"Lab notebook, experiment {code}: {rng.choice(PROCEDURES)} "
        f"of {rng.choice(REAGENTS)[0]} derivative. Date: 2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}. "
        f"Fume hood {rng.randint(1, 12)}, gloves and goggles worn."
    )

    def note(i: int) -> str:
        name, mw = rng.choice(REAGENTS)
        grams = round(rng.uniform(0.2, 12.0), 2)
        k = rng.randrange(5)
        if k == 0 or i == 0:
            return (
                f"Weighed {grams} g {name} ({grams / mw * 1000:.1f} mmol, M = {mw} g/mol) and dissolved it in "
                f"{rng.randint(5, 150)} mL {rng.choice(SOLVENTS)}."
            )
        if k == 1:
            return (
                f"Stirred at {rng.choice([0, 25, 40, 60, 78, 110])} C for {rng.randint(5, 180)} min; the solution "
                f"turned {rng.choice(COLOURS)}."
            )
        if k == 2:
            return (
                f"A {rng.choice(COLOURS)} precipitate formed on cooling in ice; collected by vacuum filtration and "
                f"washed with cold {rng.choice(SOLVENTS)}."
            )
        if k == 3:
            mp = rng.randint(60, 240)
            return (
                f"TLC: Rf = 0.{rng.randint(10, 90)} in {rng.randint(1, 9)}:1 hexane/ethyl acetate, single spot "
                f"under UV. Melting point {mp}-{mp + rng.randint(1, 3)} C."
            )
        return (
            f"Dried product {round(grams * rng.uniform(0.3, 0.95), 2)} g, yield {rng.randint(35, 96)}%. "
            f"pH of the filtrate {round(rng.uniform(1, 13), 1)}."
        )

    return _assemble(rng, head, note)


# ---------------------------------------------------------------- legal contract clauses

PARTIES = [
    ("the Licensor", "the Licensee"),
    ("the Supplier", "the Customer"),
    ("the Landlord", "the Tenant"),
    ("the Company", "the Contractor"),
    ("the Lender", "the Borrower"),
]
ARTICLES = _v("GENERAL PROVISIONS|OBLIGATIONS OF THE PARTIES|TERM AND TERMINATION|MISCELLANEOUS")
JURISDICTIONS = ["England and Wales", "the State of New York", "Ontario", "New South Wales", "Ireland", "Delaware"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def gen_legal(rng: R) -> str:
    a, b = rng.choice(PARTIES)
    art = rng.randint(2, 18)
    head = (
        f'ARTICLE {art}. {rng.choice(ARTICLES)}\nThis Agreement is entered into between {a} and {b} (each a "Party").'
    )

    def clause(i: int) -> str:
        days = rng.choice([10, 14, 30, 45, 60, 90])
        title, body = rng.choice(
            [
                (
                    "Confidentiality",
                    f"{_cap(b)} shall not disclose any Confidential Information of {a} to any third "
                    f"party without the prior written consent of {a}, save as required by law.",
                ),
                (
                    "Indemnification",
                    f"{_cap(a)} shall indemnify and hold harmless {b} against all losses, damages and costs "
                    f"arising from any breach of this Agreement, provided that {b} gives notice within {days} "
                    "days.",
                ),
                (
                    "Termination",
                    f"Either Party may terminate this Agreement upon {days} days' written notice if the other "
                    f"Party commits a material breach and fails to remedy it within that period.",
                ),
                (
                    "Limitation of Liability",
                    f"Notwithstanding any other provision, the aggregate liability of {a} shall "
                    f"not exceed the fees paid in the {rng.choice([6, 12, 24])} months preceding the claim.",
                ),
                (
                    "Governing Law",
                    f"This Agreement shall be governed by and construed in accordance with the laws of "
                    f"{rng.choice(JURISDICTIONS)}, and the Parties submit to the exclusive jurisdiction of its courts.",
                ),
                (
                    "Force Majeure",
                    "Neither Party shall be liable for any delay caused by events beyond its reasonable control, "
                    "including flood, fire, strike or act of government, for a period not exceeding "
                    f"{days} days.",
                ),
                (
                    "Payment Terms",
                    f"{_cap(b)} shall pay each invoice within {days} days of receipt; late payments shall "
                    f"accrue interest at {rng.randint(2, 8)}% per annum above the base rate.",
                ),
                (
                    "Assignment",
                    f"{_cap(b)} may not assign or sub-license any of its rights under this Agreement without "
                    f"the consent of {a}, such consent not to be unreasonably withheld.",
                ),
                (
                    "Notices",
                    "Any notice under this Agreement shall be in writing and delivered by hand or by recorded "
                    "post to the registered office of the receiving Party, and is deemed received after "
                    f"{rng.randint(2, 5)} business days.",
                ),
            ]
        )
        return f"Section {art}.{i + 1} {title}. {body}"

    return _assemble(rng, head, clause)


# ---------------------------------------------------------------- the corpus

DOMAINS: dict[str, Gen] = {
    "arithmetic": gen_arithmetic,
    "code": gen_code,
    "recipes": gen_recipes,
    "sports": gen_sports,
    "weather": gen_weather,
    "chemistry": gen_chemistry,
    "legal": gen_legal,
}


def generate(domain: str, index: int, seed: int) -> dict[str, str]:
    """Document ``index`` of ``domain``; a function of (seed, domain, index) only."""
    rng = random.Random(f"climb-hpc-builtin:{seed}:{domain}:{index}")
    return {"id": f"{domain}-{index:06d}", "text": DOMAINS[domain](rng), "source": domain}


def write_builtin_corpus(out_dir: Path, docs_per_domain: int, seed: int) -> list[Path]:
    """Write one ``<domain>.jsonl`` per domain into ``out_dir`` (atomically); return their paths."""
    if docs_per_domain < 1:
        raise ValueError(f"corpus.builtin.docs_per_domain must be >= 1, got {docs_per_domain}")
    paths = []
    for domain in DOMAINS:
        lines = (json.dumps(generate(domain, i, seed), ensure_ascii=False) for i in range(docs_per_domain))
        path = Path(out_dir) / f"{domain}.jsonl"
        atomic_write(path, "".join(line + "\n" for line in lines))
        paths.append(path)
    return paths
