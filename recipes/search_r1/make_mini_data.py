"""Generate the shipped mini multi-hop QA set: an invented world, its corpus and 1-3 hop questions.

    python recipes/search_r1/make_mini_data.py --out recipes/search_r1/data/mini --seed 0

Everything is made up (names from syllables, facts drawn at random), so there is no licensing
question, and it is regular enough for a ~1M-parameter model trained from scratch to learn the
search behaviour: every question names one topic entity; each hop is answered by the passage
titled with the entity found so far, and that entity's name is the query that retrieves it
(BM25 top-3 recall is measured and printed by this script, and checked by the tests).

World: countries (each with a capital), cities (each in a country), persons (each born in a
city; some found a company), companies (founded by a person, headquartered in a city), and
landmarks named after cities and products named after companies (distractor passages). Person names share given names, so a query
for one person also hits namesakes.

Outputs, in ``--out``:
- ``corpus.jsonl``: Search-R1 passages ``{"id", "contents": "\\"Title\\"\\ntext"}``.
- ``train.jsonl`` / ``test.jsonl``: FlashRAG-style QA records ``{"id", "question",
  "golden_answers", "metadata": {"hops", "template", "topic", "chain": [{"query", "doc_id",
  "finds"}, ...]}}``. The split is by entity: the persons and companies a test question names
  or passes through never appear in any training question (cities and countries are shared hubs,
  so questions about them are train-only).

The held-out set is large enough for one evaluation's standard error to be about 0.015 (1,000+
questions): besides the test share of the sampled questions, the world has ``HELD_OUT_EXTENSION``
more persons and founders (with their companies), drawn like the others after the split, that
only test questions ask about (every question about them). They add passages to the corpus and
change nothing of the training questions.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
          "tr", "v", "z", "sh", "th", "j"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "au", "ei"]
CODAS = ["", "", "n", "r", "l", "s", "k", "m", "x", "th"]
CITY_SUFFIX = ["ton", "mar", "holm", "dale", "burg", "vik", "stead"]
COUNTRY_SUFFIX = ["ia", "and", "esh", "avia"]
COMPANY_SUFFIX = ["ix", "tek", "ova", "ant", "corp"]
LANDMARKS = ["Tower", "Bridge", "Market", "Harbor", "Museum", "Park", "Arena"]
FEATURES = ["its river markets", "its glass workshops", "its old harbor", "its stone bridges",
            "its spring fair", "its tea gardens", "its clock towers", "its salt mines"]
PRODUCTS = ["Lamp", "Engine", "Radio", "Clock", "Kettle", "Compass", "Loom"]
PROFESSIONS = ["painter", "sailor", "teacher", "engineer", "poet", "doctor", "baker", "judge", "pilot",
               "farmer"]

N_COUNTRIES, CITIES_PER_COUNTRY = 20, 5
N_GIVEN_NAMES, N_PERSONS, N_COMPANIES = 60, 800, 240
HOP_QUOTA = {1: 520, 2: 680, 3: 600}
TEST_FRACTION = 0.15
HELD_OUT_EXTENSION = {"persons": 100, "founders": 50}  # entities only test questions ask about


@dataclass
class World:
    countries: dict[str, str] = field(default_factory=dict)  # country -> capital
    city_country: dict[str, str] = field(default_factory=dict)
    birthplace: dict[str, str] = field(default_factory=dict)  # person -> city
    profession: dict[str, str] = field(default_factory=dict)  # person (non-founder) -> job
    founder: dict[str, str] = field(default_factory=dict)  # company -> person
    company_of: dict[str, str] = field(default_factory=dict)  # person -> company
    headquarters: dict[str, str] = field(default_factory=dict)  # company -> city
    landmarks: list[tuple[str, str, int]] = field(default_factory=list)  # (name, city, year)
    products: list[tuple[str, str, int]] = field(default_factory=list)  # (name, company, year)
    city_feature: dict[str, str] = field(default_factory=dict)
    doc_id: dict[str, str] = field(default_factory=dict)  # entity -> passage id
    given_names: list[str] = field(default_factory=list)
    names: NameMaker | None = None  # the name source, so names added later stay unique


class NameMaker:
    """Pronounceable invented words, unique up to stemming (so BM25 never conflates two names)."""

    def __init__(self, rng: random.Random):
        import Stemmer

        self.rng = rng
        self.stem = Stemmer.Stemmer("english").stemWord
        self.used: set[str] = set()

    def word(self, syllables: int = 2, suffix: str = "") -> str:
        while True:
            w = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS)
                        for _ in range(syllables)) + suffix
            if 4 <= len(w) <= 11 and self.stem(w) not in self.used:
                self.used.add(self.stem(w))
                return w.capitalize()


def build_world(rng: random.Random) -> World:
    names = NameMaker(rng)
    w = World()
    cities = []
    for _ in range(N_COUNTRIES):
        country = names.word(2, rng.choice(COUNTRY_SUFFIX))
        members = [names.word(rng.choice([1, 2]), rng.choice(CITY_SUFFIX)) for _ in range(CITIES_PER_COUNTRY)]
        w.countries[country] = rng.choice(members)
        for city in members:
            w.city_country[city] = country
            w.city_feature[city] = rng.choice(FEATURES)
        cities += members
    w.given_names = [names.word(2) for _ in range(N_GIVEN_NAMES)]
    w.names = names
    persons: list[str] = []
    while len(persons) < N_PERSONS:
        persons.append(f"{rng.choice(w.given_names)} {names.word(2)}")
    for p in persons:
        w.birthplace[p] = rng.choice(cities)
    companies = [_found_company(w, founder, rng) for founder in rng.sample(persons, N_COMPANIES)]
    for p in persons:
        if p not in w.company_of:
            w.profession[p] = rng.choice(PROFESSIONS)
    for city in rng.sample(cities, len(cities) * 3 // 4):
        for kind in rng.sample(LANDMARKS, rng.choice([1, 2])):
            w.landmarks.append((f"{city} {kind}", city, rng.randrange(1200, 1990)))
    _add_products(w, companies, rng)
    return w


def _found_company(w: World, founder: str, rng: random.Random) -> str:
    company = w.names.word(2, rng.choice(COMPANY_SUFFIX))
    w.founder[company] = founder
    w.company_of[founder] = company
    w.headquarters[company] = rng.choice(list(w.city_country))  # the cities in the order they were made
    return company


def _add_products(w: World, companies: list[str], rng: random.Random) -> None:
    for company in rng.sample(sorted(companies), len(companies) * 2 // 3):
        w.products.append((f"{company} {rng.choice(PRODUCTS)}", company, rng.randrange(1800, 2020)))


def extend_for_held_out(w: World, rng: random.Random, persons: int, founders: int) -> set[str]:
    """Add ``persons`` persons and ``founders`` founders with their companies, drawn as in
    :func:`build_world` (given names shared with everyone, existing cities); returns the new
    persons and companies, which no training question mentions."""
    cities = list(w.city_country)
    new = [f"{rng.choice(w.given_names)} {w.names.word(2)}" for _ in range(persons + founders)]
    for p in new:
        w.birthplace[p] = rng.choice(cities)
    companies = [_found_company(w, p, rng) for p in new[persons:]]
    for p in new[:persons]:
        w.profession[p] = rng.choice(PROFESSIONS)
    _add_products(w, companies, rng)
    return set(new) | set(companies)


def passages(w: World) -> list[dict]:
    """One passage per entity, titled by its name; text mentions the name again so it ranks first."""
    docs: list[tuple[str, str, str]] = []  # (id, title, text)
    for i, (country, capital) in enumerate(w.countries.items()):
        docs.append((f"country-{i:03d}", country, f"{country} is a country. The capital of {country} is {capital}."))
    for i, (city, country) in enumerate(w.city_country.items()):
        docs.append((f"city-{i:03d}", city,
                     f"{city} is a city in {country}. {city} is known for {w.city_feature[city]}."))
    for i, (person, city) in enumerate(w.birthplace.items()):
        second = (f"{person} founded {w.company_of[person]}." if person in w.company_of
                  else f"{person} works as {_article(w.profession[person])}.")
        docs.append((f"person-{i:03d}", person, f"{person} was born in {city}. {second}"))
    for i, (company, founder) in enumerate(w.founder.items()):
        docs.append((f"company-{i:03d}", company,
                     f"{company} was founded by {founder}. {company} is headquartered in {w.headquarters[company]}."))
    for i, (name, city, year) in enumerate(w.landmarks):
        kind = name.rsplit(" ", 1)[1].lower()
        docs.append((f"landmark-{i:03d}", name, f"The {kind} was built in {year} in {city}."))
    for i, (name, company, year) in enumerate(w.products):
        kind = name.rsplit(" ", 1)[1].lower()
        docs.append((f"product-{i:03d}", name, f"The {kind} was first sold in {year} by {company}."))
    for doc_id, title, _ in docs:
        w.doc_id.setdefault(title, doc_id)
    return [{"id": doc_id, "contents": f'"{title}"\n{text}'} for doc_id, title, text in docs]


def _article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _hop(w: World, entity: str, finds: str) -> dict:
    return {"query": entity, "doc_id": w.doc_id[entity], "finds": finds}


def candidate_questions(w: World) -> list[dict]:
    """Every templated question, with its gold chain and the persons/companies it touches."""
    out = []

    def add(template: str, question: str, topic: str, chain: list[dict], units: set[str]) -> None:
        out.append({"question": question, "golden_answers": [chain[-1]["finds"]], "template": template,
                    "topic": topic, "chain": chain, "units": units})

    for p, city in w.birthplace.items():
        country = w.city_country[city]
        u = {p}
        add("person_birthplace", f"Where was {p} born?", p, [_hop(w, p, city)], u)
        add("person_birth_country", f"In which country was {p} born?", p,
            [_hop(w, p, city), _hop(w, city, country)], u)
        add("person_birth_capital", f"What is the capital of the country where {p} was born?", p,
            [_hop(w, p, city), _hop(w, city, country), _hop(w, country, w.countries[country])], u)
        if p in w.company_of:
            q = w.company_of[p]
            hq = w.headquarters[q]
            u = {p, q}
            add("founder_company_hq", f"Where is the company founded by {p} headquartered?", p,
                [_hop(w, p, q), _hop(w, q, hq)], u)
            add("founder_company_country", f"In which country is the company founded by {p} headquartered?", p,
                [_hop(w, p, q), _hop(w, q, hq), _hop(w, hq, w.city_country[hq])], u)
    for q, p in w.founder.items():
        hq, born = w.headquarters[q], w.birthplace[p]
        u = {p, q}
        add("company_founder", f"Who founded {q}?", q, [_hop(w, q, p)], u)
        add("company_hq", f"Where is {q} headquartered?", q, [_hop(w, q, hq)], u)
        add("company_founder_birthplace", f"Where was the founder of {q} born?", q,
            [_hop(w, q, p), _hop(w, p, born)], u)
        add("company_hq_country", f"In which country is {q} headquartered?", q,
            [_hop(w, q, hq), _hop(w, hq, w.city_country[hq])], u)
        add("company_founder_country", f"In which country was the founder of {q} born?", q,
            [_hop(w, q, p), _hop(w, p, born), _hop(w, born, w.city_country[born])], u)
    for city, country in w.city_country.items():
        add("city_country", f"Which country is {city} in?", city, [_hop(w, city, country)], set())
        add("city_country_capital", f"What is the capital of the country that {city} is in?", city,
            [_hop(w, city, country), _hop(w, country, w.countries[country])], set())
    for country, capital in w.countries.items():
        add("country_capital", f"What is the capital of {country}?", country, [_hop(w, country, capital)], set())
    return out


def split_questions(w: World, cands: list[dict], rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Sample questions per hop count, then split by unit (a lone person, or a founder + company)."""
    units = [frozenset({p}) for p in w.birthplace if p not in w.company_of]
    units += [frozenset({p, q}) for q, p in w.founder.items()]
    rng.shuffle(units)
    test_entities = set().union(*units[: int(len(units) * TEST_FRACTION)])
    rng.shuffle(cands)
    chosen = []
    for hops, quota in HOP_QUOTA.items():
        chosen += [c for c in cands if len(c["chain"]) == hops][:quota]
    train, test = [], []
    for c in chosen:
        (test if c["units"] and c["units"] <= test_entities else train).append(c)
    leak = {e for c in train for e in c["units"]} & test_entities
    assert not leak, f"split leaks test entities into train: {sorted(leak)[:5]}"
    return train, test


def qa_records(questions: list[dict], split: str, start: int = 0) -> list[dict]:
    questions = sorted(questions, key=lambda c: (len(c["chain"]), c["template"], c["topic"]))
    return [{"id": f"mini-{split}-{i:04d}", "question": c["question"], "golden_answers": c["golden_answers"],
             "metadata": {"hops": len(c["chain"]), "template": c["template"], "topic": c["topic"],
                          "chain": c["chain"]}} for i, c in enumerate(questions, start)]


def bm25_recall(corpus_path: Path, records: list[dict], k: int = 3) -> dict[str, float]:
    """Top-``k`` recall of each hop's gold passage, querying the hop's entity name (and, for the
    first hop, the question text), with the retrieval server's own BM25 backend."""
    from verl_trace.tools.retrieval_server.build import BackendOptions, open_backend
    from verl_trace.tools.retrieval_server.corpus import Corpus

    corpus = Corpus.open(corpus_path, progress=False)
    backend = open_backend(corpus, BackendOptions(), progress=False)
    row_id = [corpus[r]["id"] for r in range(len(corpus))]
    hops = [(h["query"], h["doc_id"]) for r in records for h in r["metadata"]["chain"]]
    firsts = [(r["question"], r["metadata"]["chain"][0]["doc_id"]) for r in records]
    stats = {}
    for name, pairs in (("entity_query", hops), ("question_query_first_hop", firsts)):
        results = backend.search([q for q, _ in pairs], k)
        stats[name] = sum(gold in {row_id[h.row] for h in hits} for (_, gold), hits in zip(pairs, results)) / len(pairs)
    stats["top1_entity_query"] = sum(
        bool(hits) and row_id[hits[0].row] == gold for (_, gold), hits in zip(hops, backend.search([q for q, _ in hops], 1))
    ) / len(hops)
    corpus.close()
    return stats


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(out: Path, seed: int = 0) -> dict:
    rng = random.Random(seed)
    world = build_world(rng)
    passages(world)  # gives every entity its passage id
    train, test = split_questions(world, candidate_questions(world), rng)
    held_out = extend_for_held_out(world, rng, **HELD_OUT_EXTENSION)
    corpus = passages(world)
    extra = [c for c in candidate_questions(world) if c["units"] and c["units"] <= held_out]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "corpus.jsonl", corpus)
    train_rows, test_rows = qa_records(train, "train"), qa_records(test, "test")
    test_rows += qa_records(extra, "test", start=len(test_rows))
    write_jsonl(out / "train.jsonl", train_rows)
    write_jsonl(out / "test.jsonl", test_rows)
    return {"passages": len(corpus), "train": len(train_rows), "test": len(test_rows),
            "hops": {h: sum(r["metadata"]["hops"] == h for r in train_rows + test_rows) for h in HOP_QUOTA}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "mini")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-recall", action="store_true", help="skip the BM25 recall check")
    args = p.parse_args(argv)
    summary = generate(args.out, args.seed)
    if not args.no_recall:
        records = [json.loads(line) for f in ("train.jsonl", "test.jsonl") for line in (args.out / f).read_text().splitlines()]
        summary["bm25_recall@3"] = bm25_recall(args.out / "corpus.jsonl", records)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
