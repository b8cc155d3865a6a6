"""Recall benchmark: is the evidence for a question about the distant past in the prompt?

LoCoMo-style data, generated from a seed (`random.Random`), so that it is reproducible and
can be published: long conversations between two named people over 20-30 dated sessions
(dates advance by days or weeks; "8 May 2023"), 300-700 turns and about 16k-26k tokens
each. Most turns are chit-chat on the same topics as the facts (work, family, pets, travel,
food, health, books, sports, music, home...), so filler is a distractor. Facts are planted
in some turns, and questions about them are asked after the whole conversation:

- `single-hop`: one evidence turn ("What did Caroline name the beagle?" against "We
  brought home a beagle from the shelter last week, and Biscuit has already claimed the
  couch.").
- `multi-hop`: 2-3 evidence turns in different sessions, linked by an entity named in the
  evidence only ("I met Jess at my pottery class" ... sessions later ... "Jess packed up
  and moved to Denver" -> "Which city is the pal from Caroline's ceramics course based in
  now?"), or facts to put together ("Which musical instruments does Jon play?").
- `temporal`: "when" questions whose evidence says "yesterday", "last weekend", "two days
  ago"..., resolved against the session's date (the expected date is in the JSON output);
  some ask for the time between two events in different sessions.
- `speaker`: who said it ("Who took up boating?"), asked only when one speaker has such a
  fact.
- `adversarial`: a fact whose question's own words appear in 3-4 planted turns on the
  same topic with other facts ("What breed is the dog Caroline adopted?" against "My
  neighbour adopted a dog too, some kind of corgi mix").

Every question has a `wording`, drawn 50/50 per question by its own seeded stream
(`random.Random("fmai-recall-wording:...")`), so that the conversations, the evidence and
the paraphrased questions are exactly those the main stream gives, whichever wording a
question gets:

- `paraphrased`: the question shares no content word with its evidence turns, under this
  file's own stemmer (lower-case, stopwords out, crude suffix stripping, a table of
  irregular verbs, and word families: one stem a prefix of the other, or a 6-letter common
  prefix) and under `fmai_core.relevance.terms`. Only the two speakers' names may be
  shared. Written from hand-made synonym and hypernym tables (beagle -> dog, pottery ->
  ceramics, charity 5k -> fundraising race); a draft that shares a word is rejected and
  another surface form (or other slot values) is drawn ("What did Caroline call her new
  dog?").
- `natural`: asked the way a user who remembers the conversation asks, with the fact's own
  key word(s) ("What is the name of the beagle Caroline adopted?", "When did Melanie run
  the charity 5k?"). Written from the hand-made `NATURAL` templates, tried in a random
  order; a draft is kept only if it shares 1-3 content words with the evidence under each
  of the same two stemmers (for multi-hop, at least one with the first hop; the bridge name
  never comes from the question), and does not contain its expected answer. A question
  drawn natural with no passing draft stays paraphrased. The decoys are the same for both
  wordings, so a natural adversarial question shares words with its decoys too.

The counts (rejected drafts, shared words per natural question) are printed, and the
finished data is re-checked against its wording's rule.

Each conversation goes through the real engine as an app would feed it:
`FiniteMemoryLLM(EchoBackend(), policy, max_tokens=budget x the conversation's tokens,
max_new_tokens=32, system_prompt=None, max_policy_ms=None)`, everything else default.
Speaker A is the `user`, speaker B the `assistant`, and every turn is
`Message(role, text, name=speaker, timestamp=session_date)`. Per session: if its last turn is
A's, `llm.extend(turns[:-1])` then `llm.chat(last_turn.content)`; otherwise
`llm.extend(turns)` then `llm.chat("Talk soon!")`. So the policy evicts along the way (one
turn per session), without knowing the questions to come, and the reply of each `chat` is
part of the history, as a reply would be. That reply is a fixed "Sounds good, talk soon!"
(`EchoBackend(reply=...)`; summaries for `rolling_summary` are still the echo): the plain
echo would copy the recalled block, which sits in the user turn, into the history, and an
evidence turn could then reach the prompt through the copy. `max_policy_ms=None`, so
timing noise never changes a result. After the last session, for each question
`llm.context(question)` builds the prompt, and the question counts as kept only when the
text of EVERY evidence turn is an exact substring of that prompt's text (a turn recalled in
pieces does not count).

Baselines, implemented here (not with fmai's code) over the same turns, questions and
budgets: `bm25+recent` (BM25, k1=1.2, b=0.75, over whole turns; the newest turns fill 25% of
the budget and BM25 hits by score the rest; a turn costs its EchoBackend count), and
`bm25+neighbours` (each hit taken with its previous and next turn); `sliding` is fmai's own.
With `--embedder`, `minilm` (cosine of `fmai_torch.SentenceEmbedder` embeddings, the same
recent quarter) and `rrf(bm25, minilm)` (reciprocal-rank fusion, k=60) are added, and the
policies are also run with that embedder. `evidence fits` is the share of questions whose
evidence fits in the budget at all (an upper bound). Every table has the columns overall,
`natural`, `paraphrased` and one per type; the JSON also splits each row by wording x type.
The self-check printed with the tables expects the evidence to fit for >= 95%,
`bm25+recent` overall between 30% and 70% at a 10% budget, and `bm25+recent` to keep at
most 10% of the paraphrased questions at any budget.

Usage:
    python benchmarks/recall.py                       # Markdown tables (10 conversations)
    python benchmarks/recall.py --quick               # 2 conversations, while developing
    python benchmarks/recall.py --json                # every figure as JSON
    python benchmarks/recall.py --write docs/benchmarks/recall.md
    python benchmarks/recall.py --embedder --policies sliding,semantic,hybrid \
        --write-tables docs/benchmarks/recall_embedder.md
    python benchmarks/recall.py --policies semantic,hybrid --budgets 0.10 --embedder
    python benchmarks/recall.py --sample 1            # print one generated conversation
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import pickle
import platform
import random
import re
import shlex
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import cpu_model
from fmai_core import FiniteMemoryLLM, Message
from fmai_core.relevance import terms as fmai_terms
from fmai_core.testing import EchoBackend

TYPES = ("single-hop", "multi-hop", "temporal", "speaker", "adversarial")
POLICIES = ("sliding", "importance", "semantic", "rolling_summary", "hybrid")
MAX_NEW_TOKENS = 32
CLOSING = "Talk soon!"
RECENT_SHARE = 0.25  # of the budget, for the baselines' recent window
RRF_K = 60
MONTHS = (
    "January February March April May June July August September October November December"
).split()

# -- this benchmark's own stemmer (independent of fmai's) --------------------------------------
_WORD = re.compile(r"[a-z0-9]+")
STOP = frozenset(
    """a an the and or but if then so of to in on at by for with from about as into onto over
    under after before during since until than up down out off again once also too very just
    really quite still even ever only i me my mine myself we us our ours you your yours he him
    his she her hers they them their theirs it its this that these those is am are was were be
    been being do does did done doing have has had having will would can could should shall
    may might must not no nor yes what which who whom whose when where why how there here all
    any some each every both either neither much many more most other such own same few lot
    lots s t d ll m re ve don didn doesn isn wasn aren weren couldn wouldn shouldn won oh ok
    okay yeah hey hi get got gets getting let lets""".split()
)
IRREGULAR = {
    "ran": "run", "won": "win", "went": "go", "gone": "go", "made": "make", "took": "take",
    "taken": "take", "bought": "buy", "brought": "bring", "met": "meet", "saw": "see",
    "seen": "see", "left": "leave", "felt": "feel", "found": "find", "gave": "give",
    "given": "give", "told": "tell", "said": "say", "thought": "think", "caught": "catch",
    "taught": "teach", "wrote": "write", "written": "write", "drove": "drive",
    "driven": "drive", "flew": "fly", "flown": "fly", "fell": "fall", "fallen": "fall",
    "ate": "eat", "eaten": "eat", "sang": "sing", "sung": "sing", "swam": "swim",
    "swum": "swim", "began": "begin", "begun": "begin", "broke": "break", "broken": "break",
    "chose": "choose", "chosen": "choose", "lost": "lose", "paid": "pay", "sold": "sell",
    "sent": "send", "spent": "spend", "wore": "wear", "worn": "wear", "grew": "grow",
    "grown": "grow", "knew": "know", "known": "know", "held": "hold", "built": "build",
    "kept": "keep", "slept": "sleep", "rode": "ride", "ridden": "ride", "came": "come",
    "became": "become", "stole": "steal", "stolen": "steal", "heard": "hear", "hid": "hide",
    "children": "child", "kids": "kid", "mice": "mouse", "feet": "foot", "teeth": "tooth",
    "women": "woman", "men": "man", "people": "person", "lives": "live", "wives": "wife",
    "better": "good", "best": "good", "worse": "bad", "worst": "bad",
}  # fmt: skip
SUFFIXES = (
    "ingly", "edly", "ness", "ment", "ings", "ing", "ies", "ied", "ers", "er", "es", "ed",
    "ly", "s",
)  # fmt: skip


def crude_stem(word: str) -> str:
    """A deliberately crude stemmer: irregular forms, one suffix, doubled consonant, final e."""
    word = IRREGULAR.get(word, word)
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
        word = word[:-1]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def words(text: str) -> list[str]:
    """Content words of `text` under this benchmark's stemmer (a list, repeats kept)."""
    out = []
    for raw in _WORD.findall(text.lower()):
        if raw in STOP or (len(raw) == 1 and not raw.isdigit()):
            continue
        out.append(crude_stem(raw))
    return out


def _family(a: str, b: str) -> bool:
    """Same word family: equal stems, one a prefix of the other (5+ letters), or 6 in common."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    if len(short) >= 5 and long_.startswith(short):
        return True
    return len(short) >= 6 and long_[:6] == short[:6]


class Checker:
    """Which content words a question shares with its evidence, under both stemmers."""

    def __init__(self, speakers: Sequence[str]) -> None:
        self.allowed_mine = {w for name in speakers for w in words(name)}
        self.allowed_fmai = {t for name in speakers for t in fmai_terms(name)}
        self.rejected = Counter[str]()

    def shared(self, question: str, evidence: Sequence[str]) -> tuple[list[str], list[str]]:
        """(words shared under this file's stemmer, terms shared under fmai's)."""
        text = " ".join(evidence)
        q_mine = set(words(question)) - self.allowed_mine
        e_mine = set(words(text)) - self.allowed_mine
        mine = sorted(w for w in q_mine if any(_family(w, x) for x in e_mine))
        fm = sorted((set(fmai_terms(question)) & set(fmai_terms(text))) - self.allowed_fmai)
        return mine, fm

    def clean(self, question: str, evidence: Sequence[str]) -> bool:
        """A paraphrased question: no content word shared with the evidence."""
        mine, fm = self.shared(question, evidence)
        if mine:
            self.rejected["benchmark stemmer"] += 1
        if fm:
            self.rejected["fmai terms"] += 1
        if mine or fm:
            self.rejected["drafts"] += 1
            return False
        return True

    def natural(self, question: str, evidence: Sequence[str]) -> tuple[list[str], list[str]] | None:
        """A natural question: 1-3 content words shared with the evidence under each stemmer,
        at least one of them with the first evidence turn (the first hop). Returns the shared
        words (this file's stemmer, fmai's), or None for a draft to reject."""
        mine, fm = self.shared(question, evidence)
        reason = ""
        if not mine or not fm:
            reason = "natural: shares nothing"
        elif len(mine) > 3 or len(fm) > 3:
            reason = "natural: shares more than 3"
        elif len(evidence) > 1 and not all(self.shared(question, evidence[:1])):
            reason = "natural: nothing from the first hop"
        if reason:
            self.rejected[reason] += 1
            self.rejected["natural drafts"] += 1
            return None
        return mine, fm


# -- slot banks: "surface|paraphrase,paraphrase|extra" ----------------------------------------
BANKS_TEXT: dict[str, str] = {
    "breed": "beagle|dog,hound; corgi|dog,hound; dachshund|dog,hound; border collie|dog,hound;"
    " golden retriever|dog,hound; husky|dog,hound; pug|dog; labrador|dog,hound; poodle|dog;"
    " whippet|dog,hound",
    "cat": "tabby kitten|cat,feline; Siamese|cat,feline; Maine Coon|cat,feline;"
    " black kitten|cat; ginger stray|cat,feline; Persian|cat,feline",
    "animal": "beagle|dog; corgi|dog; tabby|cat; parrot|bird; rabbit|bunny; husky|dog;"
    " tortoise|reptile; kitten|cat; cockatiel|bird",
    "mishap": "swallowed a sock; ate a whole bar of chocolate; cut a paw on broken glass;"
    " got stung on the nose by a wasp; chewed through a phone charger;"
    " got stuck behind the washing machine; fell into the neighbour's pond",
    "hobby": "sailing|boating,handling a boat; pottery|ceramics,clay work; salsa|Latin dance;"
    " archery|bow-and-arrow shooting; rock climbing|bouldering,scaling walls;"
    " fencing|sword fighting; kayaking|paddling; surfing|riding waves;"
    " woodworking|carpentry; calligraphy|decorative lettering;"
    " birdwatching|observing wildlife; knitting|yarn crafts; embroidery|needlework;"
    " photography|taking pictures; beekeeping|tending hives; chess|a strategy board game;"
    " improv|comedy acting",
    "race": "charity 5k|fundraising race,benefit race; half marathon|long-distance race;"
    " 10k fun run|ten-kilometre race; mud run|obstacle race; sprint triathlon|multisport race;"
    " trail ultramarathon|mountain race",
    "subject": "a lighthouse at sunset||lighthouse; my grandmother's garden||garden;"
    " a fox in the snow||fox; the view from our balcony||balcony view;"
    " a bowl of lemons||lemons; the harbour at night||harbour; two herons by a pond||herons",
    "veg": "tomatoes|crop; courgettes|squash; peppers|crop; potatoes|tubers; cucumbers|crop;"
    " pumpkins|gourds; runner beans|legumes; strawberries|fruit",
    "band": "Arcade Fire|indie band; Coldplay|pop band; the Black Keys|rock duo; Adele|singer;"
    " Bon Iver|folk act; Lizzo|pop star; Kendrick Lamar|rapper; the Lumineers|folk band;"
    " Florence and the Machine|indie band; Hozier|singer-songwriter",
    "inst": "cello|string instrument; trumpet|brass instrument; ukulele|string instrument;"
    " drums|percussion kit; saxophone|woodwind; piano|keyboard instrument;"
    " violin|string instrument; banjo|string instrument; flute|woodwind;"
    " harmonica|mouth organ",
    "title": "The Salt Orchard; Nine Lanterns; A Map of Small Hours; The Glass Ferry;"
    " Winter at Harrow Point; The Quiet Engineers; Letters from Vesna; The Last Beekeeper;"
    " Paper Moons; The River Clerk; Hollow Bells; A Season of Static",
    "company": "Brightline Logistics; Halcyon Health; Northwind Studios; Pinecrest Bank;"
    " Ferrow Labs; Tidewater Media; Copperleaf Design; Alder & Finch; Bluestem Energy;"
    " Marlow Analytics",
    "role": "project manager; data analyst; UX designer; nurse practitioner; sous chef;"
    " software engineer; account manager; lab technician; copywriter; physical therapist",
    "jobtitle": "team lead; senior editor; head nurse; shift supervisor; regional manager;"
    " lead designer; head of sales; principal engineer",
    "shop": "a bakery; a bike repair shop; a flower shop; a dog grooming salon; a coffee cart;"
    " a little bookshop; a vintage clothing store; a plant nursery",
    "shopname": "Crumb & Co; Spoke Theory; Petal Lane; Wag Station; Bean There; Dog-Eared;"
    " Second Stitch; Rooted",
    "city": "Lisbon|Portugal,the Portuguese capital; Denver|Colorado; Osaka|Japan;"
    " Montreal|Quebec; Edinburgh|Scotland; Austin|Texas; Melbourne|Australia; Seville|Spain;"
    " Krakow|Poland; Nairobi|Kenya; Reykjavik|Iceland; Hanoi|Vietnam; Marrakech|Morocco;"
    " Tucson|Arizona; Bergen|Norway; Vancouver|British Columbia",
    "sight": "the old cathedral; the night market; the harbour at dawn; the castle on the hill;"
    " the hot springs; the street food; the botanical garden; the cliffs by the sea;"
    " the jazz bar near our hotel",
    "month": "March; April; June; July; September; October; November; December",
    "rel": "sister|sibling; brother|sibling; cousin|relative; aunt|relative; uncle|relative",
    "parent": "mom|mother; dad|father; grandma|grandmother; grandpa|grandfather",
    "procedure": "hip replacement|joint operation; knee surgery|joint operation;"
    " cataract surgery|eye operation; heart bypass|cardiac operation;"
    " back surgery|spinal operation",
    "kid": "daughter|little girl; son|little boy",
    "milestone": "lost a baby tooth|have an incisor come out|lose a tooth;"
    " rode a bike without training wheels|cycle unassisted|ride a bike alone;"
    " swam a whole length of the pool|cross the water unaided|swim a length;"
    " read a chapter book all alone|finish a novel unaided|finish a chapter book;"
    " scored a first goal at soccer|net a debut point at football|score a goal",
    "dish": "fresh pasta|noodles by hand; sourdough bread|a loaf; ramen|noodle soup;"
    " dumplings|filled parcels; croissants|French pastries; paella|Spanish rice;"
    " tamales|corn husk parcels; biryani|spiced rice",
    "food": "sugar|sweets; dairy|milk products; coffee|caffeine; alcohol|booze;"
    " red meat|beef and lamb; fried food|greasy meals; gluten|wheat",
    "cuisine": "Ethiopian|East African; Korean|Seoul-style; Peruvian|South American;"
    " Lebanese|Middle Eastern; Sichuan|Chinese; Georgian|Caucasus; Oaxacan|Mexican",
    "rest": "Little Addis; Seoul Kitchen; Casa Inca; Cedar Table; Red Lantern; Supra House;"
    " La Milpa",
    "eatery": "Little Addis|Ethiopian|injera platter; Seoul Kitchen|Korean|bibimbap;"
    " Casa Inca|Peruvian|ceviche; Cedar Table|Lebanese|lamb shawarma;"
    " Red Lantern|Sichuan|mapo tofu; Supra House|Georgian|khachapuri;"
    " La Milpa|Oaxacan|mole negro",
    "cake": "lemon drizzle cake|citrus sponge; apple pie|fruit tart; carrot cake|spiced sponge;"
    " chocolate babka|sweet braided loaf; pecan pie|nut tart; cheesecake|creamy dessert",
    "allergen": "shellfish|seafood; peanuts|legumes; sesame|seeds; kiwi|tropical fruit;"
    " penicillin|antibiotics; latex|rubber gloves; tree nuts|almonds and walnuts",
    "body": "ankle|foot joint; wrist|hand joint; knee|leg joint; shoulder|arm socket;"
    " lower back|spine",
    "sport": "pickleball|paddle; basketball|hoops; five-a-side|football; volleyball|net;"
    " tennis|racquet; ultimate frisbee|disc",
    "exercise": "spin class|indoor cycling; hot yoga|heated stretching;"
    " bouldering|climbing; kettlebell circuits|weight training; pilates|core work;"
    " jump rope|skipping",
    "practice": "a meditation app|mindfulness; breathing exercises|controlled inhaling;"
    " a weighted blanket|heavy duvet; no screens after nine|phone-free bedtimes;"
    " chamomile tea|herbal infusions",
    "author": "Mara Ellison; Tobias Venn; June Okafor; Henrik Sol; Priya Castellano;"
    " Walter Ames; Ines Moreau; Dmitri Hale",
    "show": "The Long Harbour; Quiet Signals; Bakers of Bramley; Northern Lights Precinct;"
    " The Accountant's Wife; Glass Houses; Salt and Iron; The Lighthouse Keepers",
    "podtopic": "unsolved shipwrecks|maritime mysteries; the history of spices|culinary history;"
    " famous con artists|swindlers; the space race|space exploration;"
    " medieval medicine|historical healing; deep-sea creatures|ocean life",
    "team": "Rovers|local football club; Hawks|basketball team; Mariners|baseball side;"
    " Wolves|ice hockey team; Harriers|rugby club; Comets|netball team",
    "lsport": "volleyball|net game; softball|bat-and-ball game; ultimate frisbee|flying disc;"
    " curling|sweeping stones on ice; bowling|tenpins; futsal|indoor football;"
    " dodgeball|playground throwing",
    "peak": "Mount Rainier; Ben Nevis; Snowdon; Pikes Peak; Table Mountain; Mount Fuji;"
    " Scafell Pike; Half Dome",
    "street": "Willow Street; Hawthorne Avenue; Birch Lane; Quarry Road; Elder Crescent;"
    " Marsh Street; Linden Row",
    "room": "kitchen|cooking area; bathroom|washroom; basement|lower level; attic|loft space",
    "car": "a used Subaru|station wagon; an electric Kia|EV; a red Vespa|scooter;"
    " a camper van|motorhome; a tiny Fiat|hatchback; a pickup truck|utility vehicle",
    "study": "marine biology|ocean science; art history|the story of painting;"
    " accounting|bookkeeping; coding|programming; interior design|home decorating;"
    " nutrition|healthy eating",
    "vplace": "animal shelter|rescue centre; food bank|pantry for families;"
    " soup kitchen|meal service; hospice|care home; community garden|shared allotment;"
    " children's hospital|pediatric ward",
    "gift": "a vintage record player|a turntable; a hot-air balloon ride|a flight in a basket;"
    " a telescope|a stargazing scope; an espresso machine|a coffee maker;"
    " a weekend at a spa|a pampering getaway; a pottery wheel|a ceramics kit",
    "dream": "see the northern lights|witness the aurora|the northern lights;"
    " swim with sea turtles|snorkel beside marine reptiles|sea turtles;"
    " drive Route 66|cross America by car|Route 66;"
    " learn to fly a plane|pilot an aircraft|flying a plane;"
    " walk the Camino de Santiago|complete the Spanish pilgrimage|the Camino",
    "lang": "Spanish|Castilian; Japanese|the tongue of Tokyo;"
    " Portuguese|the language of Brazil; Korean|the language of Seoul;"
    " Italian|the tongue of Rome; Greek|the language of Athens",
    "tattoo": "compass|navigation symbol; swallow|bird; wave|ocean motif;"
    " crescent moon|lunar symbol; paper plane|folded aircraft; fern leaf|plant",
    "debt": "the student loans|college borrowing; the car loan|vehicle financing;"
    " the medical bills|hospital charges; the credit card|plastic balance",
    "thing": "bike|bicycle; laptop|computer; wallet|billfold; scooter|two-wheeler",
    "activity": "pottery|ceramics; salsa|Latin dance; life drawing|sketching;"
    " spin|indoor cycling; Italian|language; improv|comedy acting; woodworking|carpentry;"
    " photography|camera; Pilates|core workout; cooking|culinary",
    "hobbyev": "chess|board games|regional chess tournament;"
    " baking|pastry|county fair bake-off;"
    " tennis|racquet sports|club tennis championship;"
    " photography|camera work|city photo contest;"
    " debate|public argument|state debate finals; darts|pub games|league darts final;"
    " robotics|engineering|regional robot challenge; spelling|words|school spelling bee",
    "reaction": "wrecked me; was a total letdown; made no sense at all;"
    " had me crying on the bus; was perfect",
    "aspect": "the dialogue; the twist in the middle; the world-building; the villain;"
    " the narrator's voice; the last chapter",
    "house": "two-bedroom bungalow; terraced house; little cottage; narrow townhouse;"
    " top-floor flat; fixer-upper",
    "area": "Riverside; Oak Hill; the Old Town; Maple Heights; Harbourview; Elm Park;"
    " Cobble Hill; Southgate",
}
SPEAKERS = (
    "Caroline Melanie Jon Gina John Maria Joanna Nate Tim Audrey Andrew Deborah Evan Sam "
    "Calvin Dave Jolene James Priya Tomas Aisha Marcus Lena Rafael Yuki Omar Sofia Daniel "
    "Hannah Kwame"
).split()
PEOPLE = (
    "Jess Marco Tina Luis Bea Oscar Nina Felix Greta Ivan Rosa Theo Mei Kofi Ingrid Pablo "
    "Zara Hugo Elsa Ravi Lucy Ben Chloe Sean Amara Diego Freya Leo Maya Noah Iris Sami Vera "
    "Eli Nadia Otto Clara Jonah Tessa Arjun Wren Milo Esme Idris Anouk Basil"
).split()
PET_NAMES = (
    "Biscuit Pepper Luna Mochi Waffles Ziggy Olive Pickles Nugget Clover Mango Juniper "
    "Scout Pebble Toffee Dumpling Marble Noodle"
).split()
THIRD = (
    "my neighbour",
    "my cousin",
    "a friend from work",
    "my sister-in-law",
    "my old roommate",
    "a guy at the gym",
    "my aunt",
    "one of the parents at school",
)


@dataclass(frozen=True)
class Item:
    """A slot value: its surface form, paraphrases for questions, and an optional extra."""

    surface: str
    paraphrases: tuple[str, ...]
    extra: str = ""
    bank: str = ""


def _parse_banks() -> dict[str, tuple[Item, ...]]:
    banks = {}
    for name, text in BANKS_TEXT.items():
        items = []
        for entry in text.split(";"):
            parts = [p.strip() for p in entry.strip().split("|")]
            paras = (
                tuple(p.strip() for p in parts[1].split(",") if p.strip()) if len(parts) > 1 else ()
            )
            items.append(Item(parts[0], paras, parts[2] if len(parts) > 2 else "", name))
        banks[name] = tuple(items)
    return banks


BANKS = _parse_banks()


# -- fact templates ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    """One planted fact and the questions it can be asked with (one question per type)."""

    key: str
    topic: str
    slots: dict[str, str]  # slot -> bank, or "person" / "petname"
    evidence: tuple[str, ...]
    answer: str
    single: tuple[str, ...] = ()
    temporal: tuple[str, ...] = ()
    speaker: tuple[str, ...] = ()
    adversarial: tuple[str, ...] = ()
    decoys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chain:
    """Facts in 2-3 turns of different sessions that one question needs together."""

    key: str
    topic: str
    slots: dict[str, str]
    steps: tuple[tuple[str, tuple[str, ...]], ...]  # ("self" | "other", evidence forms)
    questions: tuple[str, ...]
    answer: str
    kind: str = "multi-hop"  # or "temporal" (the time between the steps)
    optional_last: bool = False  # the last step is sometimes left out (aggregations)


FACTS: tuple[Fact, ...] = (
    Fact(
        "adopt_dog",
        "pets",
        {"breed": "breed", "petname": "petname"},
        (
            "We brought home a {breed} from the shelter {when}, and {petname} has already"
            " claimed the couch.",
            "Meet {petname}, the {breed} who moved in with us {when}! Two shoes chewed so far.",
            "A {breed} rescue called {petname} came to live with us {when}. The house feels"
            " so much fuller now.",
        ),
        "a {breed} called {petname}",
        single=("What kind of dog did {who} adopt?", "Which dog breed did {who} take in?"),
        temporal=("When did {who} adopt a {breed_q}?", "When did {who} take in a {breed_q}?"),
        speaker=("Who adopted a {breed_q}?", "Which of the two took in a {breed_q}?"),
        adversarial=("What breed is the dog {who} adopted?",),
        decoys=(
            "{third_cap} adopted a dog too, some kind of {breed_alt} mix.",
            "{third_cap} keeps sending me photos of dogs up for adoption.",
            "Which dog breed is best with small kids, do you think?",
            "The dog park was packed with every breed you can imagine.",
            "Adopting a dog is a huge commitment, people forget that.",
        ),
    ),
    Fact(
        "adopt_cat",
        "pets",
        {"cat": "cat", "petname": "petname"},
        (
            "A {cat} showed up on our porch {when} and now she's ours. We're calling her"
            " {petname}.",
            "We picked a {cat} from a neighbour's litter {when}. {petname} sleeps in the"
            " laundry basket.",
        ),
        "a {cat} called {petname}",
        single=("Which pet joined {who}'s household?", "What animal did {who} end up keeping?"),
        temporal=("When did {who} welcome a {cat_q}?",),
        speaker=("Who ended up with a {cat_q}?",),
        adversarial=("What kind of cat does {who} have?",),
        decoys=(
            "My aunt has three cats and they all hate each other.",
            "Are you more of a cat person or a dog person?",
            "{third_cap} is allergic to cats, so no pets at her place.",
            "That video of the cat stealing a whole fish had me crying.",
        ),
    ),
    Fact(
        "pet_emergency",
        "pets",
        {"pet": "animal", "mishap": "mishap"},
        (
            "Spent half the night at the emergency vet {when} because our {pet} {mishap}.",
            "Our {pet} {mishap} {when}, so that was a very expensive trip to the vet.",
        ),
        "the {pet} {mishap}",
        single=(
            "Why did {who}'s {pet_q} need urgent medical care?",
            "What accident did {who}'s {pet_q} have?",
        ),
        temporal=("When did {who} rush an animal to the clinic?",),
        speaker=("Whose {pet_q} had a health scare?",),
        adversarial=("What happened to {who}'s pet that needed a doctor?",),
        decoys=(
            "My cousin's pet rabbit needed a doctor for its teeth, who knew that was a thing.",
            "Pet insurance feels like a scam until you actually need it.",
            "{third_cap} says something happened to her pet hamster but won't tell me what.",
            "Did you hear what happened to the pet shop on the corner? It closed.",
        ),
    ),
    Fact(
        "take_up_hobby",
        "hobbies",
        {"hobby": "hobby"},
        (
            "I signed up for {hobby} lessons {when}, the first class was a disaster but I"
            " loved it.",
            "So I finally tried {hobby} {when} and I'm hooked already.",
            "Went to my first {hobby} session with a group from the community centre {when}."
            " My arms are sore but it was a blast.",
        ),
        "{hobby}",
        single=("What pastime did {who} pick up?", "Which activity has {who} recently begun?"),
        temporal=("When did {who} begin {hobby_q}?", "When was {who}'s introduction to {hobby_q}?"),
        speaker=("Who is learning {hobby_q}?", "Which of them got into {hobby_q}?"),
        adversarial=("What hobby did {who} start learning?",),
        decoys=(
            "My brother wants a new hobby but can't pick one.",
            "Learning a hobby as an adult is so humbling.",
            "{third_cap} started learning the drums as a hobby and the neighbours are not"
            " thrilled.",
            "Everyone at work has some intense hobby except me.",
        ),
    ),
    Fact(
        "charity_race",
        "sports",
        {"race": "race"},
        (
            "I ran a {race} {when}! My legs are pure jelly.",
            "Finished my first {race} {when}, slowest in my age group but I don't care.",
            "Crossed the finish line of the {race} {when} and nearly cried.",
        ),
        "{race}",
        single=("Which race did {who} take part in?", "What athletic event did {who} complete?"),
        temporal=(
            "When did {who} compete in the {race_q}?",
            "When did {who} take part in a {race_q}?",
        ),
        speaker=("Who took part in a {race_q}?",),
        adversarial=("Which race did {who} do?",),
        decoys=(
            "There's a race through downtown next month, half the roads will be closed.",
            "{third_cap} is training for some race in the spring.",
            "I watched the race on TV, the finish was so close.",
            "My cousin wants me to sign up for a race with her, no thanks.",
        ),
    ),
    Fact(
        "artwork",
        "hobbies",
        {"subject": "subject"},
        (
            "Put the last brushstroke on the canvas {when}: it's {subject}.",
            "Hung my new watercolour in the hallway {when}, {subject}.",
        ),
        "{subject}",
        single=("What does {who}'s latest artwork depict?", "What did {who} paint?"),
        temporal=("When did {who} complete a painting?",),
        speaker=("Who completed a painting recently?",),
        adversarial=("What did {who} paint?",),
        decoys=(
            "My nephew painted the dog purple, long story.",
            "I want to paint the bedroom a lighter colour.",
            "{third_cap} paints every weekend and sells them at the market.",
            "We went to a paint-and-sip night and mine looked like soup.",
        ),
    ),
    Fact(
        "harvest",
        "garden",
        {"veg": "veg"},
        (
            "Our {veg} went absolutely wild this year, I picked a whole basket {when}.",
            "I brought in so many {veg} from the allotment {when}, the neighbours are getting"
            " some.",
        ),
        "{veg}",
        single=("Which crop did {who} harvest a lot of?",),
        temporal=("When did {who} gather a big haul from the garden?",),
        speaker=("Who had a bumper harvest?",),
        adversarial=("What vegetable did {who} grow the most of?",),
        decoys=(
            "My mom grows every vegetable under the sun.",
            "Vegetables from the farmers market just taste better.",
            "{third_cap} tried to grow a vegetable patch but the slugs won.",
            "I'm trying to eat more vegetables, it's going badly.",
        ),
    ),
    Fact(
        "concert",
        "music",
        {"band": "band"},
        (
            "Saw {band} live {when}, my ears are still ringing!",
            "Got to see {band} {when}, front row, I screamed myself hoarse.",
        ),
        "{band}",
        single=(
            "Which act's show did {who} attend?",
            "Whose performance did {who} catch in person?",
        ),
        temporal=("When did {who} attend the {band_q} gig?",),
        speaker=("Who went to a {band_q} performance?",),
        adversarial=("Which concert did {who} go to?",),
        decoys=(
            "Concert tickets are so expensive now.",
            "{third_cap} went to a concert and lost her phone in the crowd.",
            "There's a free jazz concert in the park on Sunday.",
            "I fell asleep at a classical concert once, so embarrassing.",
        ),
    ),
    Fact(
        "instrument",
        "music",
        {"inst": "inst"},
        (
            "Dusted off my old {inst} {when} and practiced scales for an hour.",
            "I've been practicing {inst} every night since {when}, my neighbours must love me.",
        ),
        "{inst}",
        single=("Which instrument has {who} returned to?",),
        temporal=("When did {who} pick the {inst_q} back up?",),
        speaker=("Who plays the {inst_q}?",),
        adversarial=("What instrument does {who} play?",),
        decoys=(
            "My son wants to play an instrument but only the loud ones.",
            "The school band needs anyone who can play a brass instrument.",
            "I never learned to play an instrument, big regret.",
            "{third_cap} plays three instruments and makes it look easy.",
        ),
    ),
    Fact(
        "book_club",
        "books",
        {"title": "title"},
        (
            "Our reading group chose {title} for next month, have you heard of it?",
            "The group at the library picked {title} this round, I'm only three chapters in.",
        ),
        "{title}",
        single=("Which title will {who}'s book club discuss?",),
        speaker=("Who belongs to a book club?",),
        adversarial=("What book is {who}'s book club reading?",),
        decoys=(
            "I keep buying books and never reading them.",
            "My mom's book club is mostly wine, honestly.",
            "{third_cap} started a book club at work and nobody reads the book.",
            "Do you have any book recommendations for a long flight?",
        ),
    ),
    Fact(
        "new_job",
        "work",
        {"role": "role", "company": "company"},
        (
            "Signed the contract {when}: I'll be a {role} at {company}!",
            "It's official, {company} wants me as their {role}. I said yes {when}.",
        ),
        "{role} at {company}",
        single=("What position did {who} land?", "Which role did {who} accept?"),
        temporal=("When did {who} accept the job offer?",),
        speaker=("Who is switching employers?",),
        adversarial=("What job did {who} get?",),
        decoys=(
            "Job hunting is soul crushing.",
            "{third_cap} got a job at a bakery downtown.",
            "My brother has been applying for jobs for months with nothing back.",
            "I saw a job posting that paid double what I make.",
        ),
    ),
    Fact(
        "promotion",
        "work",
        {"jobtitle": "jobtitle"},
        (
            "My boss called me in {when}: I'm officially the new {jobtitle}!",
            "They bumped me up to {jobtitle} {when}, with a raise and everything.",
        ),
        "{jobtitle}",
        single=("What title was {who} promoted to?",),
        temporal=("When was {who} promoted?",),
        speaker=("Who received a promotion?",),
        adversarial=("What promotion did {who} get at work?",),
        decoys=(
            "Everyone at work is fighting over one promotion.",
            "{third_cap} got passed over for a promotion again.",
            "Promotions at my work go to whoever golfs with the director.",
            "I'm not sure I even want a promotion, more meetings.",
        ),
    ),
    Fact(
        "own_business",
        "work",
        {"shop": "shop", "shopname": "shopname"},
        (
            "It's happening, I'm opening {shop} called {shopname} this autumn!",
            "Signed the lease {when}, {shopname} is going to be {shop} of my very own!",
        ),
        "{shop} called {shopname}",
        single=("What kind of business is {who} launching?",),
        speaker=("Who is starting their own company?",),
        adversarial=("What business is {who} starting?",),
        decoys=(
            "Starting a business in this economy sounds terrifying.",
            "{third_cap} started a business selling candles and it's actually doing well.",
            "Half the small businesses on my street have closed.",
            "My uncle always says he'll start a business when he retires.",
        ),
    ),
    Fact(
        "conference",
        "work",
        {"city": "city"},
        (
            "I'm presenting at a conference in {city} in the spring, absolutely terrified.",
            "Got accepted to speak at the big conference in {city}!",
        ),
        "{city}",
        single=("Where is {who} giving a talk?",),
        speaker=("Who will address an industry event in {city_q}?",),
    ),
    Fact(
        "engaged",
        "family",
        {"rel": "rel", "rname": "person"},
        (
            "My {rel} {rname} got engaged {when}! The ring is gorgeous.",
            "{rname}, my {rel}, popped the question {when} and the answer was yes!",
        ),
        "{rel} {rname}",
        single=("Which of {who}'s relatives is getting married?",),
        temporal=("When did {who}'s {rel_q} decide to marry?",),
        speaker=("Whose {rel_q} is planning a wedding?",),
        adversarial=("Who in {who}'s family is getting married?",),
        decoys=(
            "Weddings are so expensive these days.",
            "{third_cap} is getting married in Greece and I can't afford to go.",
            "My parents got married after knowing each other for three weeks.",
            "Is it weird that I never want to get married?",
        ),
    ),
    Fact(
        "new_baby",
        "family",
        {"rel": "rel", "babyname": "person"},
        (
            "My {rel} had a baby boy {when}! {babyname}, eight pounds and already loud.",
            "Little {babyname} arrived {when}, my {rel}'s first kid! I'm already obsessed.",
        ),
        "{babyname}",
        single=("What did {who}'s {rel_q} name the newborn?",),
        temporal=("When was {who}'s {rel_q}'s child born?",),
        speaker=("Whose {rel_q} welcomed a newborn?",),
    ),
    Fact(
        "kid_milestone",
        "family",
        {"kid": "kid", "kname": "person", "milestone": "milestone"},
        (
            "My {kid} {kname} {milestone} {when}, I nearly cried.",
            "Big day here: {kname} {milestone} {when}! My {kid} is growing up way too fast.",
        ),
        "{milestone}",
        single=("What milestone did {who}'s {kid_q} reach?",),
        temporal=("When did {who}'s {kid_q} {milestone_q}?",),
        speaker=("Whose {kid_q} hit a milestone?",),
    ),
    Fact(
        "parent_surgery",
        "health",
        {"parent": "parent", "procedure": "procedure"},
        (
            "{parent_cap}'s {procedure} went well {when}, already bossing the nurses around.",
            "{parent_cap} is home after the {procedure} {when} and recovering at our place.",
        ),
        "{procedure}",
        single=("What operation did {who}'s {parent_q} have?",),
        temporal=("When did {who}'s {parent_q} undergo the {procedure_q}?",),
        speaker=("Whose {parent_q} was in the hospital for an {procedure_q}?",),
        adversarial=("What surgery did {who}'s parent have?",),
        decoys=(
            "My uncle needs surgery on his shoulder next month.",
            "Hospital parking is a total racket.",
            "{third_cap}'s dad is recovering from surgery and hates sitting still.",
            "I'd be so nervous before any kind of surgery.",
        ),
    ),
    Fact(
        "anniversary",
        "family",
        {"partner": "person", "city": "city"},
        (
            "{partner} and I celebrated ten years together with a long weekend in {city} {when}.",
            "For our anniversary {partner} whisked me off to {city}, I'm still glowing.",
        ),
        "{city}",
        single=("Where did {who} and their spouse mark a milestone as a couple?",),
        speaker=("Who took a romantic getaway to {city_q}?",),
    ),
    Fact(
        "trip_back",
        "travel",
        {"city": "city", "sight": "sight"},
        (
            "Just got back from {city}, {sight} took my breath away.",
            "Home from {city} at last! Honestly {sight} was the highlight.",
        ),
        "{sight}",
        single=("What impressed {who} most on the vacation to {city_q}?",),
        temporal=("When did {who} return from {city_q}?",),
        speaker=("Who holidayed in {city_q}?",),
        adversarial=("What was the best part of {who}'s trip?",),
        decoys=(
            "The best part of any trip is the food, fight me.",
            "{third_cap} is planning a trip to see the pyramids.",
            "Our last family trip was a disaster from start to finish.",
            "I need a trip somewhere warm, badly.",
        ),
    ),
    Fact(
        "trip_plan",
        "travel",
        {"city": "city", "month": "month"},
        (
            "We booked flights to {city} for {month}, finally!",
            "It's settled: {city} in {month}. I've already made a spreadsheet of bakeries.",
        ),
        "{city} in {month}",
        single=("Where is {who} heading on holiday?",),
        speaker=("Who is going to {city_q}?",),
    ),
    Fact(
        "lost_luggage",
        "travel",
        {"city": "city"},
        (
            "The airline lost my suitcase on the way to {city}, I'm living in one outfit.",
            "Landed in {city} {when} and my bag went to a different continent.",
        ),
        "lost luggage on the way to {city}",
        single=(
            "What went wrong with {who}'s luggage during the journey?",
            "What travel mishap did {who} have?",
        ),
        temporal=("When did {who} arrive somewhere without luggage?",),
        speaker=("Whose luggage vanished on a journey?",),
    ),
    Fact(
        "cooked",
        "food",
        {"dish": "dish"},
        (
            "Made {dish} from scratch for the first time {when}, it took four hours but wow.",
            "Spent all afternoon {when} on homemade {dish}, the kitchen is a war zone.",
        ),
        "{dish}",
        single=("What did {who} cook?",),
        temporal=("When did {who} attempt {dish_q}?",),
        speaker=("Who tried cooking {dish_q}?",),
        adversarial=("What dish did {who} cook?",),
        decoys=(
            "I can only cook about three dishes, all involving eggs.",
            "{third_cap} cooked a dish from every country in the world cup.",
            "Who knew one dish could use every pot I own?",
            "My dad cooks the same dish every Sunday and we love it.",
        ),
    ),
    Fact(
        "quit_food",
        "food",
        {"food": "food"},
        (
            "I cut out {food} completely {when}, and weirdly I feel great.",
            "Day one of no {food} was {when}. Wish me luck.",
        ),
        "{food}",
        single=("What did {who} eliminate from their diet?",),
        temporal=("When did {who} quit {food_q}?",),
        speaker=("Who gave up {food_q}?",),
        adversarial=("What did {who} give up?",),
        decoys=(
            "I tried to give up eating late at night, lasted two days.",
            "{third_cap} gave up eating bread and talks about it constantly.",
            "Eating out every day is killing my budget.",
            "I could never give up cheese, never.",
        ),
    ),
    Fact(
        "restaurant",
        "food",
        {"cuisine": "cuisine", "rest": "rest"},
        (
            "There's a {cuisine} spot near my flat called {rest} and I'm obsessed.",
            "{rest} is my new favourite, the best {cuisine} food I've had outside a"
            " grandmother's kitchen.",
        ),
        "{rest}",
        single=("Which eatery does {who} love?",),
        speaker=("Who raves about a {cuisine_q} place?",),
    ),
    Fact(
        "bake_off",
        "food",
        {"cake": "cake"},
        (
            "My {cake} took second place at the county fair {when}!",
            "The judges gave my {cake} a ribbon at the village show {when}.",
        ),
        "{cake}",
        single=("Which dessert earned {who} a prize?",),
        temporal=("When did {who} win a baking award?",),
        speaker=("Who won a baking competition?",),
    ),
    Fact(
        "allergy",
        "health",
        {"allergen": "allergen"},
        (
            "Turns out I'm allergic to {allergen}, the skin test came back positive {when}.",
            "The doctor confirmed {when} that {allergen} is what makes me break out in hives.",
        ),
        "{allergen}",
        single=("What is {who} sensitive to?",),
        temporal=("When did {who} learn about the {allergen_q} reaction?",),
        speaker=("Who found out they react badly to {allergen_q}?",),
    ),
    Fact(
        "injury",
        "health",
        {"body": "body", "sport": "sport"},
        (
            "I sprained my {body} playing {sport} {when}, so I'm stuck on the couch.",
            "Rolled my {body} during {sport} {when}. The ice pack is my best friend now.",
        ),
        "{body}, playing {sport}",
        single=("How did {who} get hurt?",),
        temporal=("When did {who} injure a {body_q}?",),
        speaker=("Who got injured during a {sport_q} game?",),
        adversarial=("How did {who} hurt themselves?",),
        decoys=(
            "I hurt my back just picking up a sock.",
            "{third_cap} hurt himself trying to do a backflip at a wedding.",
            "My knee hurts every time it rains.",
            "It hurts just watching those parkour videos.",
        ),
    ),
    Fact(
        "exercise",
        "health",
        {"exercise": "exercise"},
        (
            "I've been doing {exercise} three mornings a week before work.",
            "New habit: {exercise} at 6 am, then coffee. Three weeks in!",
        ),
        "{exercise}",
        single=("What workout routine does {who} follow?",),
        speaker=("Who does {exercise_q} regularly?",),
    ),
    Fact(
        "sleep",
        "health",
        {"practice": "practice"},
        (
            "{practice_cap} has honestly fixed my insomnia, I'm out by ten every night.",
            "Thanks to {practice} I finally stopped lying awake until 3 am.",
        ),
        "{practice}",
        single=("What helped {who} sleep better?",),
        speaker=("Who beat their sleeping trouble?",),
    ),
    Fact(
        "author",
        "books",
        {"author": "author"},
        (
            "{author}'s novels are my comfort reads, I go back to them every winter.",
            "Nobody writes like {author}, I've reread everything at least twice.",
        ),
        "{author}",
        single=("Which writer does {who} return to again and again?",),
        speaker=("Who keeps rereading the same author?",),
        adversarial=("Who is {who}'s favourite author?",),
        decoys=(
            "My favourite author just announced a new book, I screamed.",
            "{third_cap} met a favourite author at a signing and cried.",
            "Do you have a favourite author or is that too hard?",
            "That author's interview was so pretentious.",
        ),
    ),
    Fact(
        "tv_binge",
        "movies",
        {"show": "show"},
        (
            "We watched all of {show} {when}, eight episodes in one go.",
            "Stayed up until 2 am finishing {show} {when}, zero regrets.",
        ),
        "{show}",
        single=("What series did {who} get through so quickly?",),
        temporal=("When did {who} binge a whole season of television?",),
        speaker=("Who marathoned a TV drama?",),
        adversarial=("What show did {who} binge?",),
        decoys=(
            "Everyone at work is talking about some show I haven't seen.",
            "{third_cap} binged a cooking show and now thinks she's a chef.",
            "I can't binge anything anymore, I fall asleep by episode two.",
            "That show everyone loves? I gave up after one season.",
        ),
    ),
    Fact(
        "podcast",
        "books",
        {"pod": "podtopic"},
        (
            "I'm hooked on a podcast about {pod}, it's my commute every morning.",
            "Found a podcast on {pod} and I've done twenty episodes in a week.",
        ),
        "{pod}",
        single=("What topic does the audio series {who} follows cover?",),
        speaker=("Who is into an audio show about {pod_q}?",),
    ),
    Fact(
        "team_win",
        "sports",
        {"team": "team"},
        (
            "Saw the {team} win at home {when}, the stadium was shaking!",
            "We had seats behind the goal when the {team} won {when}!",
        ),
        "the {team}",
        single=("Which side's victory did {who} watch in person?",),
        temporal=("When did {who} attend a match?",),
        speaker=("Who cheered on the {team_q} from the stands?",),
    ),
    Fact(
        "league",
        "sports",
        {"lsport": "lsport"},
        (
            "I joined a local {lsport} league at the rec centre, we're terrible but it's fun.",
            "First {lsport} game with my new league {when}, we lost by a mile.",
        ),
        "{lsport}",
        single=("Which team sport did {who} sign up for?",),
        speaker=("Who plays {lsport_q} on an amateur team?",),
    ),
    Fact(
        "hike",
        "travel",
        {"peak": "peak"},
        (
            "We hiked up {peak} {when}, the view from the top was worth every blister.",
            "Made it to the top of {peak} {when}! My calves are screaming.",
        ),
        "{peak}",
        single=("Which summit did {who} reach?",),
        temporal=("When did {who} climb a mountain?",),
        speaker=("Who trekked to a summit?",),
    ),
    Fact(
        "moved",
        "home",
        {"street": "street"},
        (
            "We finally moved into the flat on {street} {when}, boxes everywhere.",
            "Got the keys to our place on {street} {when}, still can't believe it.",
        ),
        "{street}",
        single=("Where does {who} live now?",),
        temporal=("When did {who} relocate?",),
        speaker=("Who changed apartments?",),
    ),
    Fact(
        "renovation",
        "home",
        {"room": "room"},
        (
            "We tore out the old {room} {when}, the contractor says six weeks.",
            "Demolition day was {when}: the {room} is now just studs and dust.",
        ),
        "{room}",
        single=("Which part of the house is {who} remodelling?",),
        temporal=("When did {who} begin the renovation?",),
        speaker=("Who is redoing a {room_q}?",),
    ),
    Fact(
        "car",
        "home",
        {"car": "car"},
        (
            "I traded in my old car for {car} {when}.",
            "Picked up {car} from the dealer {when}, it still smells new.",
        ),
        "{car}",
        single=("What vehicle did {who} buy?",),
        temporal=("When did {who} purchase the {car_q}?",),
        speaker=("Who bought a {car_q}?",),
        adversarial=("What car did {who} get?",),
        decoys=(
            "My car is making a noise like a dying goose.",
            "{third_cap} wants an electric car but can't charge it at his flat.",
            "Car insurance went up again for no reason.",
            "I'd happily never own a car again.",
        ),
    ),
    Fact(
        "course",
        "school",
        {"study": "study"},
        (
            "I enrolled in an evening course on {study}, two nights a week.",
            "Back in a classroom at my age! The {study} course started {when}.",
        ),
        "{study}",
        single=("What is {who} studying?",),
        temporal=("When did {who}'s {study_q} lessons begin?",),
        speaker=("Who went back to school for {study_q}?",),
    ),
    Fact(
        "volunteer",
        "community",
        {"vplace": "vplace"},
        (
            "I've been helping out at the {vplace} on Saturdays, it's the best part of my week.",
            "Did my first shift at the {vplace} {when}, I'm going back next week.",
        ),
        "{vplace}",
        single=("Where does {who} volunteer?",),
        temporal=("When did {who} start volunteering?",),
        speaker=("Who gives free time to a {vplace_q}?",),
    ),
    Fact(
        "gift",
        "family",
        {"gift": "gift", "partner": "person"},
        (
            "For my birthday {partner} surprised me with {gift}!",
            "{partner} gave me {gift} for my birthday {when}, I'm speechless.",
        ),
        "{gift}",
        single=("What present did {who} receive?",),
        temporal=("When did {who} turn a year older?",),
        speaker=("Who was given {gift_q}?",),
    ),
    Fact(
        "bucket",
        "personal",
        {"dream": "dream"},
        (
            "One thing I have to do before I die: {dream}.",
            "My big dream is to {dream} someday.",
        ),
        "{dream}",
        single=("What is on {who}'s bucket list?",),
        speaker=("Who longs to {dream_q}?",),
    ),
    Fact(
        "language",
        "school",
        {"lang": "lang"},
        (
            "I'm on a 100-day streak in {lang} on my app, don't let me break it!",
            "Ordered dinner entirely in {lang} {when} and the waiter understood me!",
        ),
        "{lang}",
        single=("Which language is {who} learning?",),
        speaker=("Who is picking up {lang_q}?",),
    ),
    Fact(
        "tattoo",
        "personal",
        {"tattoo": "tattoo"},
        (
            "Got a tiny {tattoo} inked on my wrist {when}, my mom is going to freak.",
            "So I have a {tattoo} tattoo now, since {when}. No regrets!",
        ),
        "{tattoo}",
        single=("What design is on {who}'s new body art?",),
        temporal=("When did {who} get body art?",),
        speaker=("Who has fresh body art?",),
    ),
    Fact(
        "debt",
        "money",
        {"debt": "debt"},
        (
            "We made the last payment on {debt} {when}, I actually danced.",
            "Paid off the final bit of {debt} {when}! Gone forever.",
        ),
        "{debt}",
        single=("What loan did {who} clear?",),
        temporal=("When did {who} finish repaying the {debt_q}?",),
        speaker=("Who is free of {debt_q}?",),
    ),
    Fact(
        "moving_city",
        "home",
        {"city": "city"},
        (
            "We've decided to move to {city} next year, I need a change.",
            "Big decision made: we're packing up for {city} in the new year.",
        ),
        "{city}",
        single=("Where is {who} planning to relocate?",),
        speaker=("Who wants to resettle in {city_q}?",),
    ),
    Fact(
        "theft",
        "personal",
        {"thing": "thing"},
        (
            "Someone stole my {thing} from outside the gym {when}, I'm furious.",
            "My {thing} got nicked from the café {when}. Police just shrugged.",
        ),
        "{thing}",
        single=("What did a thief take from {who}?",),
        temporal=("When was {who} robbed?",),
        speaker=("Who was the victim of a theft?",),
    ),
)

CHAINS: tuple[Chain, ...] = (
    Chain(
        "friend_moved",
        "friends",
        {"friend": "person", "activity": "activity", "city": "city"},
        (
            (
                "self",
                (
                    "I met {friend} at my {activity} class and we clicked right away.",
                    "{friend} and I got paired up in {activity} class, now we text every day.",
                ),
            ),
            (
                "self",
                (
                    "{friend} packed up and moved to {city} {when}, I'm gutted.",
                    "Big news from {friend}: relocating to {city} for good.",
                ),
            ),
        ),
        (
            "Which city is the pal from {who}'s {activity_q} course based in now?",
            "Where does the buddy {who} made in {activity_q} lessons live these days?",
        ),
        "{city}",
    ),
    Chain(
        "relative_win",
        "family",
        {"rel": "rel", "rname": "person", "hobby": "hobbyev"},
        (
            (
                "self",
                (
                    "My {rel} {rname} has gotten really into {hobby} lately.",
                    "{rname}, my {rel}, spends every free minute on {hobby} these days.",
                ),
            ),
            (
                "self",
                (
                    "{rname} took first place at the {hobby_x} {when}!",
                    "Guess who came out on top at the {hobby_x} {when}? {rname}!",
                ),
            ),
        ),
        (
            "Which contest did {who}'s {rel_q} win?",
            "What competition was {who}'s {rel_q} victorious in?",
        ),
        "the {hobby_x}",
    ),
    Chain(
        "pet_chain",
        "pets",
        {"animal": "animal", "petname": "petname", "mishap": "mishap"},
        (
            (
                "self",
                (
                    "Our {animal} is called {petname}, and she runs this house.",
                    "Have I told you about {petname}? Our {animal}, total diva.",
                ),
            ),
            (
                "self",
                (
                    "{petname} {mishap} {when}, I about had a heart attack.",
                    "Update on {petname}: {mishap} {when}. Never a dull moment.",
                ),
            ),
        ),
        (
            "What trouble did {who}'s {animal_q} get into?",
            "What mishap happened to {who}'s {animal_q}?",
        ),
        "{mishap}",
    ),
    Chain(
        "coworker_book",
        "books",
        {"cname": "person", "title": "title", "reaction": "reaction"},
        (
            (
                "self",
                (
                    "{cname} from the office swears by {title}, so I borrowed the copy.",
                    "{cname}, who sits next to me at the office, lent me {title}.",
                ),
            ),
            (
                "self",
                (
                    "Finished {title} {when}. The ending {reaction}.",
                    "Just closed the final page of {title}, and the ending {reaction}.",
                ),
            ),
        ),
        (
            "What did {who} think of the novel a colleague recommended?",
            "How did {who} feel about the story a coworker suggested?",
        ),
        "the ending {reaction}",
    ),
    Chain(
        "visit_relative",
        "family",
        {"rel": "rel", "rname": "person", "city": "city"},
        (
            (
                "self",
                (
                    "My {rel} {rname} lives in {city} now, I miss that face.",
                    "{rname}, my {rel}, just settled in {city}.",
                ),
            ),
            (
                "self",
                (
                    "Flying out to see {rname} {when}, can't wait.",
                    "Booked a trip to see {rname} for my birthday!",
                ),
            ),
        ),
        (
            "Which city is {who} travelling to for a family visit?",
            "Where is {who} going to visit a relative?",
        ),
        "{city}",
    ),
    Chain(
        "interview_offer",
        "work",
        {"company": "company", "role": "role"},
        (
            (
                "self",
                (
                    "I had an interview at {company} for a {role} position {when}.",
                    "{company} wants to interview me for their {role} opening!",
                ),
            ),
            (
                "self",
                (
                    "They called back, the job is mine! I start after the holidays.",
                    "Got the call, they want me! My notice period starts Monday.",
                    "The recruiter rang, I got it! Handing in my notice tomorrow.",
                ),
            ),
        ),
        ("Which firm hired {who}?", "Who is {who}'s next employer?"),
        "{company}",
    ),
    Chain(
        "instruments_agg",
        "music",
        {"inst1": "inst", "inst2": "inst", "inst3": "inst"},
        (
            (
                "self",
                (
                    "I've been practicing {inst1} every night.",
                    "My {inst1} teacher says I'm improving!",
                ),
            ),
            ("self", ("Picked up a used {inst2} at a flea market, teaching myself from videos.",)),
            ("self", ("Took my {inst3} to the open mic {when}, only messed up once.",)),
        ),
        ("Which musical instruments does {who} play?",),
        "{inst1}, {inst2}, {inst3}",
        optional_last=True,
    ),
    Chain(
        "trips_agg",
        "work",
        {"city1": "city", "city2": "city", "sight1": "sight"},
        (
            (
                "self",
                (
                    "The office sent me to {city1} {when} for a client meeting, at least"
                    " {sight1} was lovely.",
                ),
            ),
            ("self", ("Another work trip! Just landed in {city2}, expenses paid.",)),
        ),
        ("Name the destinations {who} has been to for the job.",),
        "{city1} and {city2}",
    ),
    Chain(
        "house_purchase",
        "home",
        {"house": "house", "area": "area"},
        (
            (
                "self",
                (
                    "We put in an offer on a {house} in {area}.",
                    "Fell in love with a {house} in {area}, the offer is in.",
                ),
            ),
            (
                "self",
                (
                    "The sale went through {when}, we get the keys next month!",
                    "It's official, the paperwork cleared {when}. Keys next month!",
                ),
            ),
        ),
        ("In which neighbourhood did {who} buy a home?", "Where is the property {who} purchased?"),
        "{area}",
    ),
    Chain(
        "recommend_book",
        "books",
        {"title": "title", "aspect": "aspect"},
        (
            (
                "self",
                (
                    "{other}, you have to pick up {title}, I couldn't put it down.",
                    "Seriously, {other}, drop everything and grab {title}.",
                ),
            ),
            (
                "other",
                (
                    "Okay, I started {title} because of you. {aspect_cap} is brilliant.",
                    "You were right about {title}! {aspect_cap} blew me away.",
                ),
            ),
        ),
        ("What did {other} praise about the novel {who} recommended?",),
        "{aspect}",
    ),
    Chain(
        "restaurant_friend",
        "food",
        {"friend": "person", "eatery": "eatery"},
        (
            (
                "self",
                ("My old roommate {friend} opened a {eatery_q} place downtown called {eatery}.",),
            ),
            (
                "self",
                (
                    "We finally tried {eatery} {when}, the {eatery_x} was incredible.",
                    "Dinner at {eatery} {when}: I'd go back just for the {eatery_x}.",
                ),
            ),
        ),
        ("Which dish did {who} love at the eatery run by a former flatmate?",),
        "{eatery_x}",
    ),
    Chain(
        "spouse_restaurant",
        "friends",
        {"friend": "person", "spouse": "person", "activity": "activity", "city": "city"},
        (
            ("self", ("I met {friend} at my {activity} class and we clicked right away.",)),
            ("self", ("{friend}'s other half, {spouse}, is a chef and made us the best risotto.",)),
            ("self", ("{spouse} is opening a restaurant in {city}!",)),
        ),
        (
            "In which city will the spouse of {who}'s {activity_q} classmate start an eatery?",
            "Where will the partner of {who}'s {activity_q} buddy launch a dining spot?",
        ),
        "{city}",
    ),
    Chain(
        "job_to_promotion",
        "work",
        {"company": "company", "jobtitle": "jobtitle"},
        (
            ("self", ("First day at {company} {when}, everyone seems lovely.",)),
            (
                "self",
                (
                    "They made me {jobtitle} {when}!",
                    "Promoted to {jobtitle} {when}, can you believe it?",
                ),
            ),
        ),
        ("How long after joining the firm was {who} promoted?",),
        "",
        kind="temporal",
    ),
    Chain(
        "which_first",
        "travel",
        {"city": "city", "race": "race"},
        (
            ("self", ("Back from {city} {when}, still unpacking.",)),
            ("self", ("Did a {race} {when}, legs destroyed.",)),
        ),
        ("Which came first: {who}'s journey to {city_q} or the {race_q}?",),
        "",
        kind="temporal",
    ),
)

# Facts of one family are alike: a speaker question is asked only when the other speaker has
# no fact of the same family, and the pairs below never go to the same speaker (the question
# of one would be ambiguous with the other: two dogs, two new jobs, two lists of instruments).
FAMILY = {
    **dict.fromkeys(("adopt_dog", "adopt_cat", "pet_emergency", "pet_chain"), "pets"),
    **dict.fromkeys(("instrument", "instruments_agg"), "instruments"),
    **dict.fromkeys(("new_job", "interview_offer", "job_to_promotion", "promotion"), "job"),
    **dict.fromkeys(("restaurant", "restaurant_friend"), "restaurant"),
    **dict.fromkeys(("charity_race", "which_first"), "race"),
    **dict.fromkeys(("moved", "house_purchase", "moving_city"), "home"),
    **dict.fromkeys(("trip_back", "which_first", "trips_agg", "lost_luggage"), "trip"),
}
CONFLICTS = {
    frozenset(pair)
    for pair in (
        ("pet_chain", "pet_emergency"), ("pet_chain", "adopt_dog"), ("pet_chain", "adopt_cat"),
        ("instruments_agg", "instrument"), ("interview_offer", "new_job"),
        ("interview_offer", "job_to_promotion"), ("new_job", "job_to_promotion"),
        ("promotion", "job_to_promotion"), ("which_first", "charity_race"),
        ("which_first", "trip_back"), ("moved", "house_purchase"),
    )
}  # fmt: skip
REPEATABLE_CHAINS = ("friend_moved", "spouse_restaurant")  # the question names the activity

# -- natural wordings --------------------------------------------------------------------------
# How a user who remembers the conversation asks: with the fact's own key word(s) (the breed,
# the race, "the vet", "lessons"...), never a copy of the evidence. Each draft must share 1-3
# content words with the evidence turns under both stemmers (with the first hop for
# multi-hop questions; bridge names stay out), and must not contain its expected answer where
# the answer is a fact. Drafts are tried in a random order and the first that passes is kept;
# "question => answer" gives the expected answer where the question asks for another part of
# the fact ("What did Caroline name the beagle?" => the pet's name).
NATURAL: dict[str, dict[str, tuple[str, ...]]] = {
    "adopt_dog": {
        "single-hop": (
            "What did {who} name the {breed}? => {petname}",
            "What is the name of the {breed} {who} brought home? => {petname}",
            "What is {who}'s {breed} called? => {petname}",
        ),
        "temporal": (
            "When did {who} bring home the {breed}?",
            "When did {who} get {petname}?",
            "When did {petname} the {breed} move in with {who}?",
        ),
        "speaker": (
            "Who has {breed_a} called {petname}?",
            "Who adopted {breed_a}?",
            "Whose dog is {petname}?",
        ),
        "adversarial": (
            "What is the name of the {breed} {who} adopted? => {petname}",
            "What did {who} name the {breed} from the shelter? => {petname}",
        ),
    },
    "adopt_cat": {
        "single-hop": (
            "What did {who} name the {cat}? => {petname}",
            "What is {who}'s {cat} called? => {petname}",
        ),
        "temporal": (
            "When did {who} get the {cat}?",
            "When did {petname} the {cat} join {who}'s family?",
        ),
        "speaker": ("Who has {cat_a} called {petname}?", "Whose cat is {petname}?"),
        "adversarial": (
            "What kind of cat is {petname}? => {cat}",
            "What kind of cat is {who}'s {petname}? => {cat}",
        ),
    },
    "pet_emergency": {
        "single-hop": (
            "Why did {who} have to take the {pet} to the vet? => {mishap}",
            "What happened to {who}'s {pet} that meant a trip to the vet? => {mishap}",
            "Why was {who} at the emergency vet with the {pet}? => {mishap}",
        ),
        "temporal": (
            "When did {who} take the {pet} to the vet?",
            "When did {who}'s {pet} end up at the emergency vet?",
        ),
        "speaker": (
            "Whose {pet} had to go to the vet?",
            "Whose {pet} ended up at the emergency vet?",
        ),
        "adversarial": ("What happened to {who}'s {pet} at the vet? => {mishap}",),
    },
    "take_up_hobby": {
        "single-hop": (
            "What did {who} sign up for lessons in?",
            "What did {who} finally try and get hooked on?",
            "What did {who} start at the community centre?",
        ),
        "temporal": (
            "When did {who} take up {hobby}?",
            "When was {who}'s first {hobby} class?",
            "When did {who} try {hobby}?",
        ),
        "speaker": (
            "Who took up {hobby}?",
            "Who signed up for {hobby} lessons?",
            "Who is doing {hobby} now?",
        ),
        "adversarial": (
            "What hobby did {who} sign up for lessons in?",
            "What hobby is {who} hooked on now?",
            "What hobby did {who} start at the community centre?",
        ),
    },
    "charity_race": {
        "single-hop": (
            "What race did {who} run?",
            "Which race did {who} finish?",
            "What race turned {who}'s legs to jelly?",
        ),
        "temporal": ("When did {who} run the {race}?", "When did {who} do the {race}?"),
        "speaker": ("Who ran {race_a}?", "Who did the {race}?"),
        "adversarial": (
            "Which race did {who} finish?",
            "What race did {who} run?",
            "Which race left {who}'s legs like jelly?",
        ),
    },
    "artwork": {
        "single-hop": (
            "What is on {who}'s new canvas?",
            "What does the watercolour in {who}'s hallway show?",
        ),
        "temporal": (
            "When did {who} finish the canvas of the {subject_x}?",
            "When did {who} hang the watercolour of the {subject_x}?",
            "When did {who} paint the {subject_x}?",
        ),
        "speaker": ("Who painted the {subject_x}?", "Who hung a watercolour in the hallway?"),
        "adversarial": (
            "What did {who} paint on the canvas?",
            "What did {who} paint for the hallway?",
        ),
    },
    "harvest": {
        "single-hop": (
            "What did {who} pick a whole basket of?",
            "What did {who} bring in from the allotment?",
        ),
        "temporal": ("When did {who} pick all those {veg}?", "When did {who} harvest the {veg}?"),
        "speaker": ("Who grew loads of {veg}?", "Who had {veg} from the allotment?"),
        "adversarial": (
            "What vegetable did {who} pick a basket of?",
            "What vegetable did {who} bring in from the allotment?",
        ),
    },
    "concert": {
        "single-hop": (
            "Who did {who} see live? => {band}",
            "Which band did {who} see from the front row?",
        ),
        "temporal": ("When did {who} see {band} live?", "When did {who} see {band}?"),
        "speaker": ("Who saw {band} live?", "Who went to see {band}?"),
        "adversarial": (
            "Which concert did {who} see live?",
            "Which concert did {who} see from the front row?",
        ),
    },
    "instrument": {
        "single-hop": (
            "What instrument is {who} practicing every night?",
            "Which old instrument did {who} dust off?",
            "What does {who} practice scales on?",
        ),
        "temporal": (
            "When did {who} dust off the {inst}?",
            "When did {who} start practicing the {inst}?",
        ),
        "speaker": ("Who practices the {inst}?", "Who is practicing {inst} every night?"),
        "adversarial": (
            "What instrument is {who} practicing every night?",
            "Which old instrument did {who} dust off?",
        ),
    },
    "book_club": {
        "single-hop": (
            "What book did {who}'s reading group pick?",
            "What is {who}'s group at the library reading?",
        ),
        "speaker": (
            "Who is in a reading group?",
            "Who is in a book group at the library?",
            "Whose group is reading {title}?",
        ),
        "adversarial": (
            "What book is {who}'s reading group on?",
            "What book did {who}'s library group pick?",
        ),
    },
    "new_job": {
        "single-hop": (
            "What job did {who} get at {company}? => {role}",
            "What will {who} be at {company}? => {role}",
            "Where will {who} work as {role_a}? => {company}",
        ),
        "temporal": (
            "When did {who} sign the contract with {company}?",
            "When did {who} say yes to {company}?",
            "When did {who} get the {role} job?",
        ),
        "speaker": ("Who is going to work at {company}?", "Who is the new {role} at {company}?"),
        "adversarial": (
            "What job did {who} get at {company}? => {role}",
            "What job did {who} sign a contract for?",
        ),
    },
    "promotion": {
        "single-hop": (
            "What did {who} get bumped up to?",
            "What is {who} officially now, according to the boss?",
            "What did {who} get bumped up to, with a raise?",
        ),
        "temporal": (
            "When did {who} become {jobtitle}?",
            "When did {who} get bumped up to {jobtitle}?",
            "When did {who} become the new {jobtitle}?",
        ),
        "speaker": ("Who is the new {jobtitle}?", "Who got bumped up to {jobtitle}?"),
        "adversarial": (
            "Which promotion did {who} get from the boss?",
            "What was {who} bumped up to in the promotion?",
        ),
    },
    "own_business": {
        "single-hop": (
            "What is {who} opening this autumn?",
            "What did {who} sign a lease for?",
            "What kind of place is {shopname}? => {shop}",
        ),
        "speaker": ("Who is opening {shop}?", "Who owns {shopname}?", "Whose shop is {shopname}?"),
        "adversarial": (
            "What business is {who} opening this autumn?",
            "What business did {who} sign the lease for?",
            "What kind of business is {shopname}? => {shop}",
        ),
    },
    "conference": {
        "single-hop": (
            "Where is the conference {who} is presenting at?",
            "Where is the conference {who} got accepted to speak at?",
            "Where is {who} presenting in the spring?",
        ),
        "speaker": (
            "Who is presenting at a conference in {city}?",
            "Who is speaking at the conference in {city}?",
            "Who got accepted to speak in {city}?",
        ),
    },
    "engaged": {
        "single-hop": (
            "Which of {who}'s relatives got engaged?",
            "Who popped the question in {who}'s family?",
        ),
        "temporal": (
            "When did {rname} get engaged?",
            "When did {who}'s {rel} get engaged?",
            "When did {rname} pop the question?",
        ),
        "speaker": (
            "Whose {rel} got engaged?",
            "Whose {rel} is {rname}?",
            "Whose {rel} popped the question?",
        ),
        "adversarial": (
            "Who in {who}'s family got engaged to be married?",
            "Which of {who}'s relatives popped the question?",
        ),
    },
    "new_baby": {
        "single-hop": (
            "What is the name of {who}'s {rel}'s baby?",
            "What is the name of {who}'s {rel}'s first kid?",
        ),
        "temporal": (
            "When was {who}'s {rel}'s baby born?",
            "When did little {babyname} arrive?",
            "When was {babyname} born?",
        ),
        "speaker": ("Whose {rel} had a baby?", "Whose {rel} had little {babyname}?"),
    },
    "kid_milestone": {
        "single-hop": (
            "What did {who}'s {kid} {kname} manage to do?",
            "What did {kname} do on the big day?",
        ),
        "temporal": ("When did {kname} {milestone_x}?", "When did {who}'s {kid} {milestone_x}?"),
        "speaker": ("Whose {kid} is {kname}?", "Who is {kname}'s parent?"),
    },
    "parent_surgery": {
        "single-hop": (
            "What surgery did {who}'s {parent} have?",
            "What is {who}'s {parent} recovering from?",
        ),
        "temporal": (
            "When did {who}'s {parent} have the {procedure}?",
            "When did {who}'s {parent} get home after the {procedure}?",
        ),
        "speaker": (
            "Whose {parent} had {procedure_a}?",
            "Whose {parent} is recovering from {procedure_a}?",
        ),
        "adversarial": (
            "What surgery did {who}'s {parent} have?",
            "What surgery is {who}'s {parent} recovering from?",
        ),
    },
    "anniversary": {
        "single-hop": (
            "Where did {who} and {partner} go for their anniversary?",
            "Where did {partner} whisk {who} off to?",
            "Where did {who} and {partner} spend a long weekend?",
        ),
        "speaker": (
            "Who went to {city} with {partner}?",
            "Who celebrated ten years with {partner}?",
        ),
    },
    "trip_back": {
        "single-hop": (
            "What was the highlight of {who}'s trip to {city}?",
            "What took {who}'s breath away in {city}?",
        ),
        "temporal": (
            "When did {who} get back from {city}?",
            "When did {who} come home from {city}?",
        ),
        "speaker": ("Who just got back from {city}?", "Who went to {city}?"),
        "adversarial": (
            "What was the best part of {who}'s trip to {city}?",
            "What was the highlight of {who}'s trip to {city}?",
        ),
    },
    "trip_plan": {
        "single-hop": (
            "Where is {who} going in {month}? => {city}",
            "Where did {who} book flights to?",
        ),
        "speaker": ("Who booked flights to {city}?", "Who is going to {city} in {month}?"),
    },
    "lost_luggage": {
        "single-hop": (
            "What happened with the airline on {who}'s trip to {city}?",
            "What went wrong when {who} landed in {city}?",
        ),
        "temporal": (
            "When did {who} land in {city} without a bag?",
            "When did {who} land in {city}?",
        ),
        "speaker": (
            "Whose suitcase did the airline lose?",
            "Whose bag got lost on the way to {city}?",
            "Who lost a bag on the way to {city}?",
        ),
    },
    "cooked": {
        "single-hop": (
            "What did {who} make from scratch?",
            "What did {who} spend all afternoon making?",
        ),
        "temporal": (
            "When did {who} make {dish}?",
            "When did {who} make {dish} from scratch?",
            "When did {who} try homemade {dish}?",
        ),
        "speaker": (
            "Who made {dish} from scratch?",
            "Who made homemade {dish}?",
            "Who cooked {dish}?",
        ),
        "adversarial": (
            "What dish did {who} make from scratch?",
            "What dish did {who} spend all afternoon on?",
        ),
    },
    "quit_food": {
        "single-hop": ("What did {who} cut out completely?", "What did {who} need luck giving up?"),
        "temporal": (
            "When did {who} cut out {food}?",
            "When did {who} stop {food}?",
            "When was {who}'s day one without {food}?",
        ),
        "speaker": ("Who cut out {food}?", "Who stopped {food}?"),
        "adversarial": (
            "What did {who} give up completely?",
            "What did {who} give up, wishing for luck?",
        ),
    },
    "restaurant": {
        "single-hop": (
            "What is the {cuisine} place {who} is obsessed with?",
            "What is {who}'s favourite {cuisine} restaurant?",
        ),
        "speaker": ("Who loves {rest}?", "Who is obsessed with {rest}?"),
    },
    "bake_off": {
        "single-hop": (
            "What did {who} enter at the county fair?",
            "What won {who} a ribbon?",
            "What did {who} bake for the village show?",
        ),
        "temporal": (
            "When did {who} place at the county fair?",
            "When did {who} win a ribbon?",
            "When did {who}'s {cake} win a prize?",
        ),
        "speaker": ("Who won a ribbon for {cake_a}?", "Whose {cake} won a prize?"),
    },
    "allergy": {
        "single-hop": ("What is {who} allergic to?", "What makes {who} break out in hives?"),
        "temporal": (
            "When did {who} find out about the {allergen} allergy?",
            "When did {who} learn about being allergic to {allergen}?",
        ),
        "speaker": ("Who is allergic to {allergen}?", "Who breaks out in hives from {allergen}?"),
    },
    "injury": {
        "single-hop": (
            "What did {who} sprain? => {body}",
            "What did {who} hurt playing {sport}? => {body}",
            "How did {who} sprain the {body}? => playing {sport}",
        ),
        "temporal": (
            "When did {who} sprain the {body}?",
            "When did {who} get hurt playing {sport}?",
        ),
        "speaker": ("Who hurt {body_a} playing {sport}?", "Who got injured playing {sport}?"),
        "adversarial": (
            "How did {who} hurt the {body}? => playing {sport}",
            "What did {who} hurt playing {sport}? => {body}",
        ),
    },
    "exercise": {
        "single-hop": (
            "What does {who} do three mornings a week?",
            "What is {who}'s new habit before coffee?",
        ),
        "speaker": ("Who does {exercise} before work?", "Who has a new {exercise} habit?"),
    },
    "sleep": {
        "single-hop": ("What fixed {who}'s insomnia?", "What stopped {who} lying awake?"),
        "speaker": ("Who fixed their insomnia?", "Who sleeps better thanks to {practice}?"),
    },
    "author": {
        "single-hop": (
            "Whose novels are {who}'s comfort reads?",
            "Which author does {who} reread every winter?",
            "Which writer does {who} reread?",
        ),
        "speaker": ("Who loves {author}'s novels?", "Who keeps rereading {author}?"),
        "adversarial": (
            "Which author does {who} reread every winter?",
            "Which author's novels are {who}'s comfort reads?",
        ),
    },
    "tv_binge": {
        "single-hop": (
            "What did {who} watch all eight episodes of?",
            "What did {who} stay up until 2 am finishing?",
        ),
        "temporal": ("When did {who} watch {show}?", "When did {who} finish {show}?"),
        "speaker": ("Who watched all of {show}?", "Who binged {show}?"),
        "adversarial": (
            "What show did {who} watch all eight episodes of?",
            "What show did {who} stay up until 2 am finishing?",
        ),
    },
    "podcast": {
        "single-hop": (
            "What is the podcast {who} listens to on the commute about?",
            "What is the podcast {who} is hooked on about?",
        ),
        "speaker": (
            "Who listens to a podcast about {pod}?",
            "Who is hooked on a podcast about {pod}?",
            "Who is into {pod}?",
        ),
    },
    "team_win": {
        "single-hop": (
            "Which team did {who} see win at home?",
            "Who did {who} watch win from behind the goal?",
        ),
        "temporal": ("When did {who} see the {team} win?", "When did {who} watch the {team} win?"),
        "speaker": ("Who saw the {team} win?", "Who watched the {team} win?"),
    },
    "league": {
        "single-hop": ("What league did {who} join?", "What sport is {who}'s new league?"),
        "speaker": ("Who plays in {lsport_a} league?", "Who joined {lsport_a} league?"),
    },
    "hike": {
        "single-hop": (
            "What did {who} hike up?",
            "Which mountain did {who} make it to the top of?",
        ),
        "temporal": ("When did {who} hike up {peak}?", "When did {who} climb {peak}?"),
        "speaker": ("Who hiked {peak}?", "Who made it to the top of {peak}?"),
    },
    "moved": {
        "single-hop": (
            "What street is {who}'s new flat on?",
            "Where is the place {who} got the keys to?",
        ),
        "temporal": (
            "When did {who} move to {street}?",
            "When did {who} get the keys on {street}?",
        ),
        "speaker": ("Who moved to {street}?", "Who lives on {street}?"),
    },
    "renovation": {
        "single-hop": (
            "Which room is the contractor redoing for {who}?",
            "What did {who} have demolition day for?",
        ),
        "temporal": (
            "When did {who} tear out the {room}?",
            "When was demolition day for {who}'s {room}?",
        ),
        "speaker": ("Who is redoing the {room}?", "Whose {room} is just studs and dust?"),
    },
    "car": {
        "single-hop": (
            "What did {who} trade the old car in for?",
            "What did {who} pick up from the dealer?",
        ),
        "temporal": ("When did {who} get the {car_n}?", "When did {who} pick up the {car_n}?"),
        "speaker": ("Who bought {car}?", "Who drives {car} now?"),
        "adversarial": (
            "What car did {who} trade the old one for?",
            "What car did {who} pick up from the dealer?",
        ),
    },
    "course": {
        "single-hop": ("What evening course is {who} taking?", "What course did {who} start?"),
        "temporal": (
            "When did {who}'s {study} course start?",
            "When did {who} go back to a classroom?",
        ),
        "speaker": (
            "Who is taking a course on {study}?",
            "Who is doing an evening course on {study}?",
        ),
    },
    "volunteer": {
        "single-hop": (
            "Where does {who} help out on Saturdays?",
            "Where did {who} do a first shift?",
        ),
        "temporal": (
            "When was {who}'s first shift at the {vplace}?",
            "When did {who} start helping at the {vplace}?",
        ),
        "speaker": ("Who helps out at the {vplace}?", "Who volunteers at the {vplace}?"),
    },
    "gift": {
        "single-hop": (
            "What did {partner} get {who} for their birthday?",
            "What did {partner} surprise {who} with?",
        ),
        "temporal": ("When was {who}'s birthday?", "When did {partner} give {who} {gift}?"),
        "speaker": (
            "Who did {partner} surprise on their birthday?",
            "Who got {gift} for their birthday?",
        ),
    },
    "bucket": {
        "single-hop": (
            "What is {who}'s big dream?",
            "What is the one thing {who} has to do before dying?",
        ),
        "speaker": ("Who dreams of {dream_x}?", "Whose big dream is {dream_x}?"),
    },
    "language": {
        "single-hop": (
            "What language is {who}'s app streak in?",
            "What language did {who} order dinner in?",
        ),
        "speaker": ("Who is learning {lang}?", "Who has {lang_a} streak going?"),
    },
    "tattoo": {
        "single-hop": ("What did {who} get inked on the wrist?", "What tattoo did {who} get?"),
        "temporal": ("When did {who} get the {tattoo} tattoo?", "When did {who} get inked?"),
        "speaker": ("Who got {tattoo_a} tattoo?", "Who has {tattoo_a} on the wrist?"),
    },
    "debt": {
        "single-hop": ("What did {who} make the last payment on?", "What did {who} pay off?"),
        "temporal": (
            "When did {who} pay off {debt}?",
            "When did {who} make the last payment on {debt}?",
        ),
        "speaker": ("Who paid off {debt}?", "Who made the last payment on {debt}?"),
    },
    "moving_city": {
        "single-hop": ("Where has {who} decided to move?", "Where is {who} packing up for?"),
        "speaker": ("Who is moving to {city}?", "Who is packing up for {city}?"),
    },
    "theft": {
        "single-hop": (
            "What was stolen from {who} outside the gym?",
            "What did {who} get nicked at the café?",
        ),
        "temporal": ("When was {who}'s {thing} stolen?", "When did {who}'s {thing} get nicked?"),
        "speaker": ("Whose {thing} was stolen?", "Whose {thing} got nicked?"),
    },
    # chains: the words come from the first hop at least; the bridge name never
    "friend_moved": {
        "multi-hop": (
            "Where did {who}'s friend from {activity} class move to?",
            "Where does {who}'s friend from {activity} live now?",
            "Which city did {who}'s {activity} friend move to?",
        ),
    },
    "relative_win": {
        "multi-hop": (
            "Which {hobby} competition did {who}'s {rel} win?",
            "What did {who}'s {rel} win at {hobby}?",
            "Which contest did {who}'s {rel} win?",
        ),
    },
    "pet_chain": {
        "multi-hop": (
            "What happened to {who}'s {animal}?",
            "What trouble did {who}'s {animal} get into?",
        ),
    },
    "coworker_book": {
        "multi-hop": (
            "What did {who} think of the book from the office?",
            "How did {who} like the book borrowed from the office?",
            "What did {who} think of the ending of the book from the office?",
        ),
    },
    "visit_relative": {
        "multi-hop": (
            "Where is {who} going to see the {rel}?",
            "Which city is {who} flying to, to see the {rel}?",
        ),
    },
    "interview_offer": {
        "multi-hop": (
            "Which company hired {who} as {role_a}?",
            "Which company offered {who} the {role} job after the interview?",
        ),
    },
    "instruments_agg": {
        "multi-hop": (
            "What instruments has {who} been practicing?",
            "Which instruments does {who} play besides the {inst1}? => {others}",
            "What instruments does {who} play, counting the {inst1}?",
        ),
    },
    "trips_agg": {
        "multi-hop": (
            "Where has the office sent {who} for work?",
            "Where has {who} gone for client meetings?",
            "Which cities has {who} been sent to by the office?",
        ),
    },
    "house_purchase": {
        "multi-hop": (
            "In which neighbourhood did {who} buy the {house}?",
            "Where is the {house} {who} bought?",
        ),
    },
    "recommend_book": {
        "multi-hop": (
            "What did {other} like about {title}?",
            "What did {other} think was brilliant in {title}?",
            "What did {other} love about {title} after {who} recommended it?",
        ),
    },
    "restaurant_friend": {
        "multi-hop": (
            "What did {who} love at the place the old roommate opened?",
            "What dish did {who} like at the old roommate's restaurant downtown?",
        ),
    },
    "spouse_restaurant": {
        "multi-hop": (
            "Where is {who}'s {activity} friend's partner opening a restaurant?",
            "Where is the chef married to {who}'s {activity} friend cooking now?",
            "Where is the partner of {who}'s friend from {activity} opening a restaurant?",
        ),
    },
    "job_to_promotion": {
        "temporal": (
            "How long after starting at {company} did {who} get promoted?",
            "How long did it take {who} to get promoted at {company}?",
            "How long after the first day at {company} did {who} become {jobtitle}?",
        ),
    },
    "which_first": {
        "temporal": (
            "Which came first: {who}'s trip to {city} or the {race}?",
            "Did {who} get back from {city} before or after the {race}?",
            "Which came first for {who}: {city} or the race?",
        ),
    },
}
ANSWER_KINDS = ("single-hop", "multi-hop", "adversarial")  # a natural one must not give it away
WORDINGS = ("natural", "paraphrased")

# -- relative dates ----------------------------------------------------------------------------


def fmt_date(d: dt.date) -> str:
    """ "8 May 2023"."""
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def _weekday_before(d: dt.date, weekday: int) -> dt.date:
    return d - dt.timedelta(days=(d.weekday() - weekday) % 7 or 7)


def _last_month(d: dt.date) -> str:
    prev = d.replace(day=1) - dt.timedelta(days=1)
    return f"{MONTHS[prev.month - 1]} {prev.year}"


# (phrase, the date it means for a session on d, the day used for ordering)
WHEN: tuple[tuple[str, Callable[[dt.date], str], Callable[[dt.date], dt.date]], ...] = (
    ("yesterday", lambda d: fmt_date(d - dt.timedelta(1)), lambda d: d - dt.timedelta(1)),
    ("this morning", fmt_date, lambda d: d),
    ("today", fmt_date, lambda d: d),
    ("two days ago", lambda d: fmt_date(d - dt.timedelta(2)), lambda d: d - dt.timedelta(2)),
    ("three days ago", lambda d: fmt_date(d - dt.timedelta(3)), lambda d: d - dt.timedelta(3)),
    (
        "last weekend",
        lambda d: "the weekend of " + fmt_date(d - dt.timedelta(d.weekday() + 2)),
        lambda d: d - dt.timedelta(d.weekday() + 2),
    ),
    (
        "last week",
        lambda d: "the week of " + fmt_date(d - dt.timedelta(d.weekday() + 7)),
        lambda d: d - dt.timedelta(d.weekday() + 7),
    ),
    ("last month", _last_month, lambda d: d.replace(day=1) - dt.timedelta(15)),
    *(
        (
            f"last {name}",
            (lambda d, w=w: fmt_date(_weekday_before(d, w))),
            (lambda d, w=w: _weekday_before(d, w)),
        )
        for w, name in ((0, "Monday"), (2, "Wednesday"), (4, "Friday"), (5, "Saturday"))
    ),
    ("a few days ago", lambda d: "a few days before " + fmt_date(d), lambda d: d),
)

# -- filler: chit-chat on the same topics as the facts -----------------------------------------
FILLER: dict[str, tuple[str, ...]] = {
    "work": (
        "Work has been {hectic|nonstop|brutal|a lot|intense} {lately|this week|since Monday},"
        " {so many meetings|deadlines everywhere|my inbox is a disaster|everyone wants"
        " something yesterday}.",
        "My manager moved the {deadline|launch|review|presentation} up {a week|two days|to"
        " Friday}, so {there goes my weekend|I'm living on coffee|I'm panicking a little}.",
        "We had a {team lunch|team offsite|quiz night with the team|leaving do for a"
        " colleague} and it was {actually fun|surprisingly nice|mostly awkward|chaotic}.",
        "I spent {the whole afternoon|two hours|all morning} fixing a {spreadsheet|slide"
        " deck|report|shared document} someone else broke.",
        "The new {software|scheduling system|coffee machine|printer|expense tool} at the"
        " office is driving everyone {nuts|up the wall|to despair}.",
        "Thinking about asking for a raise, but the timing {feels off|is never right|seems"
        " bad with the budget cuts}.",
        "One of my {clients|customers|interns} sent {the sweetest thank-you note|me"
        " flowers|a box of cookies} {this week|today|out of nowhere}.",
        "The commute has been {awful|a nightmare|fine for once|extra slow} with {all the"
        " roadworks|the train strikes|the rain}.",
        "I might start working from home {a couple of days|on Fridays|three days} a week.",
        "Our {team|department|little group} finally hit its target for the {quarter|year|month}.",
        "There's a rumour the company is {restructuring|merging with a competitor|moving"
        " offices|hiring again}.",
        "I had to present to the {directors|whole floor|board} and my {hands were"
        " shaking|voice cracked twice|slides froze}.",
        "A {coworker|colleague|guy on my team} keeps booking meetings {over lunch|at 8"
        " am|on Friday afternoons}, it's maddening.",
        "I'm counting down the days until my {vacation|long weekend|next day off}.",
        "Everyone at the job seems to be {burnt out|job hunting|on holiday|sick} at the same time.",
        "My boss {actually said thank you|remembered my name|brought doughnuts} today, I"
        " almost fell off my chair.",
        "{Payroll|IT|HR} lost my {form|request|ticket} {again|for the third time|somehow}.",
        "I stayed late {again|twice this week|on Tuesday} to finish a {proposal|budget"
        " plan|grant application}.",
    ),
    "family": (
        "My {mom|dad|grandma|mother-in-law} called for {an hour|ages|forty minutes} to talk"
        " about {the neighbours|her garden|a TV show|nothing in particular}.",
        "We're hosting {the whole family|twelve people|both sides of the family} for"
        " {Thanksgiving|the holidays|a birthday lunch|Sunday roast}, send help.",
        "My {brother|sister|cousin} borrowed my {car|drill|suitcase|good jacket} and hasn't"
        " returned it {yet|in months|since spring}.",
        "The kids have been {bouncing off the walls|so sweet lately|fighting nonstop|glued"
        " to their tablets}.",
        "Family group chat is {on fire|a mess|mostly memes|arguing about holidays} again.",
        "My parents are thinking about {downsizing|retiring abroad|getting a dog}, which is"
        " a whole saga.",
        "Sunday dinner at my {aunt's|grandparents'|in-laws'} went on for {four|five|three} hours.",
        "My {nephew|niece|youngest} wants to be a {dinosaur expert|pilot|YouTuber|vet} when"
        " they grow up.",
        "I finally printed some {family photos|old pictures|holiday snaps} for the"
        " {hallway|fridge|living room}.",
        "We dug out old home videos and {laughed until we cried|cringed so hard|got weirdly"
        " emotional}.",
        "My relatives keep asking when I'm going to {settle down|buy a house|visit more}.",
        "My {dad|uncle|grandpa} has discovered {voice messages|emojis|video calls} and uses"
        " them {ten times a day|at 6 am|constantly}.",
        "{Mom|Dad|My sister} sent me a {care package|newspaper clipping|recipe card} in the"
        " post, so sweet.",
    ),
    "hobbies": (
        "I've been trying to make time for {a hobby|something creative|anything fun} {again|this"
        " month|on weekends}.",
        "I watched way too many tutorials {this weekend|last night|on my lunch break}"
        " instead of actually practicing.",
        "My craft corner is basically a pile of {half-finished projects|tangled supplies|good"
        " intentions}.",
        "I've been {sketching|doodling|writing little poems} on the train, nothing serious.",
        "There's a {maker fair|craft market|hobby expo} in town {next month|this weekend|in the"
        " autumn}.",
        "I keep buying supplies for {things I'll never start|projects I forget about|hobbies"
        " I tried once}.",
        "The community centre has classes in everything from {clay|glass blowing|jewellery"
        " making} to {dance|coding|sewing}.",
        "I need a hobby that doesn't involve {a screen|spending money|my back}.",
        "{Puzzles|Lego sets|Model trains} have taken over our dining table again.",
        "My friends want to start a {board game night|book swap|weekly craft night|film club}.",
        "I tried {origami|whittling|soap making} from a video and it went {badly|surprisingly"
        " well|sideways}.",
    ),
    "travel": (
        "I've been looking at flights, prices are {ridiculous|not too bad|all over the place}.",
        "The {train|ferry|bus} there takes {forever|six hours|all day}, but the views are worth"
        " it.",
        "We're thinking about a road trip {in the summer|next spring|sometime this year}.",
        "I always overpack, {every single time|even for one night|without fail}.",
        "Airports at {5 am|rush hour|holiday time} are my personal nightmare.",
        "I'd love to go somewhere with {mountains|beaches|good food|old towns} and no"
        " {emails|alarms|crowds}.",
        "My passport expires {soon|next year|in March}, I need to sort that out.",
        "Hostels were fun in my twenties, now I need {a real bed|blackout curtains|my own"
        " bathroom}.",
        "We found a cheap {cabin|cottage|caravan} by the {lake|coast|woods} for a long weekend.",
        "Jet lag hit me like {a truck|a wall|a brick} {last time|after the red-eye|for days}.",
        "I keep a list of places I want to see, it {just keeps getting longer|is mostly"
        " islands|has forty entries}.",
        "Travel insurance is so boring but it {saved us once|is worth it|paid for a lost bag}.",
        "I want to do a {rail|cycling|walking} trip {through the Alps|along the coast|somewhere"
        " flat} someday.",
    ),
    "food": (
        "I tried a new {curry|soup|stew|stir-fry} recipe and it was {surprisingly good|too"
        " spicy|a bit bland}.",
        "We ordered {pizza|takeout|noodles|tacos} {three nights in a row|twice this week|again},"
        " no shame.",
        "The farmers market had the best {peaches|bread|cheese|mushrooms} this week.",
        "I'm trying to meal prep on {Sundays|Mondays|weekends}, wish me luck.",
        "My {air fryer|slow cooker|rice cooker|blender} is the best thing I ever bought.",
        "There's a new {taco|ramen|brunch|dumpling} place near {work|the station|us} with a huge"
        " line.",
        "I burned the {garlic|toast|rice|onions} again, the smoke alarm agrees.",
        "{Breakfast for dinner|Soup for breakfast|Cold pizza} is underrated.",
        "I've been making a lot of {soup|salads|smoothies|omelettes} lately.",
        "Our fridge is just {condiments and hope|one lemon and mustard|leftovers} right now.",
        "Grandma's {lasagna|dumplings|apple cake|stew} recipe is still {the best thing"
        " ever|unbeatable|a family secret}.",
        "I can't stop snacking when I {work from home|get bored|watch TV}.",
        "We had a picnic with {way too much food|only crisps|the good cheese} {on Sunday|by the"
        " river|in the park}.",
    ),
    "pets": (
        "The {dog|cat|puppy|kitten} knocked a {glass|plant|mug} off the table just to watch it"
        " fall.",
        "Walks in the {rain|snow|wind} with a pet are character building.",
        "Our vet is lovely but the {bills|waiting room|parking} {are not|is not|could be better}.",
        "The neighbour's {dog|parrot|cat|rooster} is louder than my alarm.",
        "I bought a fancy pet bed and the animal sleeps in {the box|my laundry|the sink} instead.",
        "Pet hair is now a permanent part of my {wardrobe|sofa|diet}.",
        "There's a {dog|cat} in our street who visits every house for {treats|cuddles|attention}.",
        "Training a pet takes so much {patience|cheese|time}.",
        "The {hamster|rabbit|fish|gecko} at my sister's place has more personality than I"
        " expected.",
        "Every {animal|dog|toddler} at the park today wanted to say hi.",
        "My {dog|cat} has figured out how to open the {cupboard|fridge|back door}.",
    ),
    "health": (
        "I've been sleeping {badly|a bit better|so much|at weird hours} lately.",
        "Trying to drink more water, it's harder than it sounds.",
        "I finally booked that {dentist|doctor|eye|skin} appointment I'd been avoiding.",
        "My {back has|neck has|shoulders have} been stiff from sitting all day.",
        "A {cold|stomach bug|nasty cough} is going around the office, I'm hiding.",
        "I started stretching {in the evening|after lunch|before bed} and it helps a bit.",
        "My step count this week is {embarrassing|actually decent|a joke}.",
        "The gym was {packed|closed|freezing}, so I just walked home instead.",
        "I'm trying to cut down on {screen time|caffeine|sugar} {before bed|after lunch|in"
        " general}.",
        "My {allergies|sinuses|eyes} are acting up with all the {pollen|dust|wind}.",
        "Physio exercises are so {boring|tedious|repetitive} but they work.",
        "I've had a headache {all day|since Tuesday|on and off}, probably dehydration.",
    ),
    "books": (
        "I joined the library's {reading challenge|summer scheme|audiobook app} {on a whim|with"
        " the kids|finally}.",
        "A {comic|graphic novel|cookbook} I bought on a whim turned out great.",
        "I left my {book|e-reader|glasses} on the {bus|plane|train} {again|last week|like an"
        " idiot}.",
        "I'm halfway through a {mystery|thriller|fantasy novel|romance} and can't guess the"
        " ending.",
        "The library has a {huge sale|book swap|reading challenge} {this weekend|next month|all"
        " summer}.",
        "I fell asleep reading again, {three pages|one chapter|half a page} a night at this rate.",
        "Audiobooks have saved my {commute|chores|sanity}.",
        "I keep buying books faster than I can read them.",
        "My to-read pile is {a tower|a hazard|getting out of hand}.",
        "Have you read anything good lately?",
        "I reread an old favourite and it hit differently {this time|as an adult|on holiday}.",
        "There's a cosy little {bookshop café|second-hand bookshop|reading room} near the station.",
        "I can't get into {poetry|sci-fi|classics}, but I keep trying.",
        "A friend lent me a {memoir|biography|short story collection} I'm {enjoying|struggling"
        " with|loving}.",
    ),
    "sports": (
        "I signed up for a {charity walk|fun cycle|corporate relay} at work, no idea why.",
        "The {match|race|game} went into {overtime|extra time|a photo finish} and I lost my voice.",
        "My {cousin|neighbour|boss} is obsessed with {fantasy football|cycling stats|golf swings}.",
        "Did you catch the game {last night|on Sunday|at the weekend}? What a finish.",
        "Our local team is {on a losing streak|actually winning|hopeless} this season.",
        "I tried {golf|squash|badminton} once and was terrible.",
        "The gym has a new {spin studio|climbing wall|sauna}, it's {intense|fancy|always full}.",
        "Watching sports with my {dad|friends|neighbours} is more about the snacks.",
        "My knees are not what they used to be on the {court|pitch|stairs}.",
        "The {league playoffs|cup final|derby} {start|is} next week.",
        "I've been jogging a little, mostly to the {bakery|park|corner shop}.",
        "The referee made some {questionable|truly baffling|brave} calls.",
        "Swimming {laps|in the lake|at the lido} is the only exercise I don't hate.",
    ),
    "music": (
        "My {neighbour|nephew|coworker} is learning the {drums|trumpet|bagpipes}, pray for me.",
        "A street {busker|band|choir} near the station made my whole morning.",
        "I made a {road trip|rainy day|dance} playlist and it's {three hours long|perfect|very"
        " chaotic}.",
        "I've had the same song stuck in my head for {three days|a week|hours}.",
        "My playlist is {all over the place|mostly 90s hits|embarrassing} right now.",
        "There's a festival in town this {summer|autumn|weekend} with a great lineup.",
        "I found my old {CDs|cassettes|band posters} in a box, total time capsule.",
        "The neighbours were playing music until {2 am|midnight|sunrise}.",
        "I love discovering new bands on {long drives|rainy days|the radio}.",
        "Vinyl is back and my wallet is suffering.",
        "Karaoke night went {better than expected|horribly|off the rails}.",
        "I want to learn to sing properly {someday|before I'm fifty|just for me}.",
        "Music while {cleaning|cooking|running} makes everything better.",
    ),
    "movies": (
        "The {sequel|remake|prequel} was {better than expected|a mess|so long}.",
        "We went to an {outdoor screening|old-school cinema|anime marathon} {in the"
        " park|downtown|last Friday}.",
        "I've been watching {cooking competitions|nature documentaries|old sitcoms} to wind down.",
        "We watched a {horror|romantic|sci-fi|heist} movie and it was so bad it was good.",
        "The cinema near us does cheap tickets on {Tuesdays|Mondays|weekday mornings}.",
        "Is it just me, or are films getting longer?",
        "I fell asleep halfway through the {documentary|movie|finale}.",
        "Everyone keeps telling me to watch that new {series|comedy|drama}.",
        "We rewatched an old favourite for the {hundredth|tenth|fiftieth} time.",
        "Streaming services are getting so expensive.",
        "The trailer gave away the whole plot.",
        "I cried at an animated film, no regrets.",
        "We made popcorn and had a proper movie night {with the kids|on the floor|in a blanket"
        " fort}.",
    ),
    "home": (
        "Our landlord finally fixed the {heater|leaky tap|front door|boiler}.",
        "I spent the weekend decluttering and found so much {junk|old paperwork|stuff I forgot I"
        " owned}.",
        "The neighbours are renovating and the drilling starts at {8 am|7 am|dawn}.",
        "We bought a new {sofa|rug|lamp|bookshelf} and it changed the whole room.",
        "Laundry is my never-ending nemesis.",
        "Our apartment gets so {hot|cold|dark} in the afternoons.",
        "I put up {shelves|curtains|a mirror} by myself and {they're|it's} only slightly crooked.",
        "Houseplants are thriving, unlike my bank account.",
        "The {washing machine|fridge|dishwasher} made a noise I didn't like.",
        "We repainted the hallway a {soft green|warm white|deep blue}.",
        "Rent went up again, ugh.",
    ),
    "weather": (
        "The forecast said {sun|clear skies|a dry day} and {it poured|we got hail|it drizzled all"
        " day}.",
        "{Foggy|Frosty|Muggy|Blustery} mornings like this make me want to stay in bed.",
        "We sat outside {until the mosquitoes came|with blankets|till it got dark}, it was"
        " {lovely|freezing|magical}.",
        "The heatwave finally broke {last night|this afternoon|after a week}.",
        "I got caught in a {downpour|hailstorm|sudden shower} on my way {home|to the shops|to"
        " work}.",
        "There was a rainbow over the {station|park|river} {this evening|after lunch|earlier}.",
        "It's been {raining nonstop|so hot|freezing|grey and windy} all week.",
        "The sun finally came out and everyone was outside.",
        "A storm knocked out the power for {a couple of hours|the evening|most of the night}.",
        "I love {autumn|spring|winter mornings}, the light is so pretty.",
        "It snowed a little and the whole city panicked.",
        "The humidity here is unreal.",
        "Perfect weather for a walk {today|this afternoon|by the river}.",
        "My umbrella gave up in the wind {this morning|on the way home|again}.",
    ),
    "school": (
        "The school run this morning was {chaos|surprisingly calm|a comedy of errors}.",
        "We have a {science fair|school play|sports day} coming up and I'm making {a costume|a"
        " volcano|snacks}.",
        "I'm taking a {free online|weekend|short} class on {public speaking|first aid|photo"
        " editing}.",
        "The {teacher|head teacher|coach} emailed about {lice|a field trip|uniforms} again.",
        "I still have dreams about {forgetting an exam|being late for class|my old maths teacher}.",
        "Our {niece|son|daughter} got a gold star for {reading|helping a friend|tidying up}.",
        "The kids' school has a bake sale and I volunteered way too much.",
        "Exams are coming up for my {niece|nephew|little brother}.",
        "I miss being a student sometimes, fewer bills.",
        "Parent-teacher night was... an experience.",
        "Online courses are great until you stop watching them.",
        "My {cousin|neighbour|friend} is going back to university at {forty|fifty|thirty-five}.",
        "I signed up for a webinar and forgot to attend.",
        "Homework for a {seven|nine|six}-year-old shouldn't be this hard.",
    ),
    "money": (
        "The {car|boiler|fridge} repair cost way more than I budgeted.",
        "I've started a spreadsheet for {every expense|coffee spending|the holidays}, it's"
        " humbling.",
        "{Insurance|Council tax|The electricity bill} went up {again|by a lot|for no reason}.",
        "I treated myself to {new shoes|a nice dinner|a massage} and regret nothing.",
        "We split the bill {eight ways|with a calculator|badly} and someone still underpaid.",
        "Payday can't come soon enough this month.",
        "I'm trying to stick to a budget this {month|year|week}.",
        "Groceries are so expensive now.",
        "Tax season is stressing me out.",
        "I finally cancelled {three|two|four} subscriptions I never use.",
        "We're saving up for {a trip|a new car|a deposit|a new sofa}.",
        "My phone bill was double what I expected.",
        "I found {twenty bucks|a tenner|some coins} in an old coat, best day ever.",
        "Someday I'll understand how pensions work.",
    ),
    "friends": (
        "{An old friend|A school friend|My former flatmate} messaged me out of the blue"
        " {yesterday|this week|last night}.",
        "We're planning a {camping trip|weekend away|dinner party} with the usual crowd.",
        "My friends roasted me for {my haircut|my playlist|being late again}, fair enough.",
        "It was so nice to just {sit in the park|walk and talk|cook together} with friends.",
        "Someone in our group is {moving away|having a baby|getting a dog} and we're all"
        " emotional.",
        "I finally met my friend's new {partner|roommate|puppy} and approve.",
        "Had coffee with {a friend|an old classmate|my neighbour} I hadn't seen in ages.",
        "Our group chat planned a reunion and then nobody replied.",
        "A friend of mine is having a housewarming {this weekend|on Friday|next month}.",
        "I need more friends who like {early mornings|hiking|quiet nights in}.",
        "We had a games night and it got very competitive.",
        "My best friend and I talked on the phone for {two hours|ages|most of the evening}.",
        "It's hard to keep up with everyone as you get older.",
        "A friend asked me to be her plus-one at a {wedding|gala|work party}.",
    ),
    "garden": (
        "The {apple tree|plum tree|hedge} needs pruning {badly|before winter|this weekend}.",
        "I bought {way too many seeds|a new hose|gardening gloves} at the garden centre.",
        "The {bees|butterflies|birds} love the {lavender|wildflowers|feeder} this year.",
        "Our lawn is more {moss|clover|dandelions} than grass at this point.",
        "I've been {repotting everything|building a raised bed|starting seedlings on the"
        " windowsill}.",
        "The {tomatoes|roses|herbs|sunflowers} are finally doing something.",
        "Slugs ate half my {lettuce|basil|seedlings} overnight.",
        "I spent the whole morning weeding and my back knows it.",
        "Our balcony garden is basically three pots and a dream.",
        "The compost bin smells... alive.",
        "I planted some bulbs, fingers crossed for spring.",
        "Watering the garden at sunset is so peaceful.",
        "The squirrels dug up everything I planted.",
    ),
    "community": (
        "The {farmers market|night market|flea market} is back on {Saturdays|Sundays|Thursdays}.",
        "Someone's been leaving {books|plants|free jam} on a table outside their house.",
        "Our {local council|residents' group|parish} finally fixed the"
        " {potholes|streetlights|bench}.",
        "There's a {quiz night|open mic|charity auction} at the pub down the road.",
        "The {bakery|corner shop|café} on our street is closing and everyone's sad.",
        "We had a street clean-up {on Saturday|this morning|last month} and met so many"
        " neighbours.",
        "Our street is having a block party next month.",
        "The local library started a repair café, so cool.",
        "There's a fundraiser for the {park|school|shelter} this weekend.",
        "Our neighbourhood group is mostly complaints about parking.",
        "A new community centre opened near us.",
        "Volunteers cleaned up the river path and it looks great.",
    ),
    "personal": (
        "I'm trying to {wake up earlier|read more|call people back faster} this month.",
        "I had {the weirdest dream|a very lazy day|an accidental nap} {last night|on Sunday|this"
        " afternoon}.",
        "Turns out I've been {pronouncing a word wrong|wearing my jumper inside"
        " out|mispronouncing my colleague's name} for years.",
        "I bought {a planner|a fancy notebook|an alarm clock} and I'm weirdly excited about it.",
        "I'm learning to {say no|rest without guilt|ask for help}, slowly.",
        "I spent {the evening|an hour|all Sunday} reorganising my {wardrobe|desk|bookshelf}.",
        "I've been trying to be better about journaling.",
        "Some days I just need a quiet evening with {tea|a bath|a good show}.",
        "I've been thinking a lot about what I want from the next few years.",
        "I got my hair cut and I'm still deciding if I like it.",
        "Trying to say yes to more things this year.",
        "I cleaned out my phone photos, there were thousands of screenshots.",
        "Ever have a week where nothing goes right?",
        "I'm proud of myself for little things lately.",
    ),
    "tech": (
        "I dropped my phone {again|in the sink|on the stairs}, the screen survived somehow.",
        "The {printer|router|smart TV} needed {three restarts|a firmware update|a stern"
        " talking-to}.",
        "I spent {an hour|the evening|ages} on hold with {tech support|the broadband company|my"
        " bank's app team}.",
        "My {headphones|earbuds|keyboard} {stopped working|lost a key|died} {mid-call|this"
        " morning|yesterday}.",
        "I turned off notifications and my brain feels {quieter|lighter|suspicious}.",
        "My laptop battery dies in {an hour|forty minutes|no time} now.",
        "The phone update moved all my buttons around.",
        "Our wifi drops every time someone uses the microwave.",
        "I finally backed up my photos, only took five years.",
        "Smart speakers are creepy and I have three.",
    ),
}
# Turn openers and tails, so that filler sentences rarely repeat word for word.
OPENERS = (
    "Honestly, ", "Funny thing, ", "Not gonna lie, ", "Anyway, ", "Also, ", "So, ", "Oh, ",
    "Random, but ", "Okay so ", "Ugh, ", "Well, ", "Side note: ",
)  # fmt: skip
TAILS = (
    " Haha.", " Ugh.", " Typical.", " Anyway.", " Life, right?", " So that's that.",
    " Wild.", " Fun times.",
)  # fmt: skip
LEAD_IN: dict[str, tuple[str, ...]] = {
    "work": ("How's work treating you?", "Anything new at your job?", "How's the office?"),
    "family": ("How's the family?", "How are your folks doing?", "Any family news?"),
    "hobbies": ("Doing anything fun in your free time?", "Any new projects?"),
    "travel": ("Any trips lately?", "Been anywhere nice?", "How was the time away?"),
    "food": ("Cooked anything good lately?", "Eaten anywhere nice recently?"),
    "pets": ("How are the animals?", "How's life with the pets?"),
    "health": ("How are you feeling these days?", "Taking care of yourself?"),
    "books": ("Reading anything good?", "What's on your nightstand?"),
    "sports": ("Been active lately?", "Doing any sport these days?"),
    "music": ("Listening to anything good?", "Any music news?"),
    "movies": ("Watched anything good?", "Seen any good shows lately?"),
    "home": ("How's the place?", "Any news on the home front?"),
    "school": ("How's the studying going?", "Learning anything new?"),
    "money": ("How's the budget holding up?",),
    "friends": ("How's your crew?", "Seen your friends lately?"),
    "garden": ("How's the garden?", "Anything growing?"),
    "community": ("What's going on in your neighbourhood?",),
    "personal": ("What's new with you?", "How have you been, really?"),
    "tech": ("Any gadget drama?",),
}
REACTIONS = (
    "Wow, really?",
    "No way!",
    "Oh, tell me more!",
    "That's big news.",
    "Ha, I did not see that coming.",
    "Oh my gosh.",
    "Seriously?",
    "That's a lot!",
    "Good for you!",
    "Oh wow, okay.",
    "I love that for you.",
    "Well, that's life.",
    "Haha, classic.",
)
GLUE = (
    "Haha, I know the feeling.",
    "Totally get that.",
    "Fair enough.",
    "Oh really?",
    "Same here, honestly.",
    "Makes sense.",
    "Ugh, I hear you.",
    "That sounds nice.",
    "Oh no.",
    "Ha, fair.",
    "Right?",
    "I hope it gets better.",
)
ASKS = (
    "How about you?",
    "What have you been up to?",
    "How's everything on your end?",
    "Any plans for the weekend?",
    "What do you think?",
    "Does that make sense?",
    "Have you ever tried that?",
)
GREETINGS = (
    "Hey {name}! How's it going?",
    "Hi {name}, it's been a while!",
    "Good to hear from you, {name}.",
    "Hey {name}, got a minute to chat?",
    "{name}! How was your week?",
    "Morning, {name}! Coffee in hand?",
)
GREETING_REPLIES = (
    "Hey! Good to hear from you.",
    "Hi! All good here, mostly.",
    "Hey, yes, I was just thinking about you.",
    "Hello! It's been a crazy week.",
    "Hi {name}! Perfect timing.",
)
FAREWELLS = (
    "I should get going, talk soon!",
    "Gotta run, take care {name}!",
    "Bye for now!",
    "Catch you later!",
    "Okay, I need to sleep. Night!",
    "Let's catch up again soon.",
    "Take care, {name}!",
)
INTERJECTIONS = ("Guess what!", "Okay, news.", "So, update.", "Oh, and one more thing.")
_ALT = re.compile(r"\{([^{}]*\|[^{}]*)\}")


def expand(template: str, rng: random.Random, **values: str) -> str:
    """Choose the inline alternatives ({a|b|c}), then fill the named slots."""
    text = _ALT.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    return text.format(**values) if values or "{" in text else text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# -- the generated data ------------------------------------------------------------------------
@dataclass
class Event:
    """A planted turn (evidence or decoy), placed in a session before the filler."""

    session: int
    speaker: str
    text: str
    topic: str
    evidence: bool = True
    turn: int = -1  # global index, once placed


@dataclass
class Question:
    """A question asked after the whole conversation, with its evidence turns.

    `text` is the wording asked: `paraphrased` (no content word shared with the evidence) or
    `natural` (1-3 shared). Both drafts are kept for the docs: `paraphrase`, and `natural`
    when one passed its check; `shared` holds the words a natural question shares with its
    evidence (this file's stemmer).
    """

    kind: str
    text: str
    events: list[Event]
    answer: str
    template: str
    wording: str = "paraphrased"
    paraphrase: str = ""
    paraphrase_answer: str = ""
    natural: str = ""
    natural_answer: str = ""
    shared: tuple[str, ...] = ()

    @property
    def evidence(self) -> list[int]:
        return [e.turn for e in self.events]


@dataclass
class Conversation:
    """Two speakers, dated sessions of `Message`s, and the questions to ask at the end."""

    index: int
    speakers: tuple[str, str]
    dates: list[str]
    sessions: list[list[Message]]
    questions: list[Question]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def turns(self) -> list[Message]:
        return [m for s in self.sessions for m in s]


class Generator:
    """Builds one conversation; `rng` drives the plan and the evidence, `text_rng` the filler."""

    def __init__(self, seed: int, index: int) -> None:
        self.index = index
        self.rng = random.Random(f"fmai-recall:{seed}:{index}")
        # Wordings draw from their own stream, so that the conversations, the evidence and
        # the paraphrased questions are those that `rng` alone gives.
        self.wrng = random.Random(f"fmai-recall-wording:{seed}:{index}")
        self.wording = Counter[str]()
        rng = self.rng
        self.a, self.b = rng.sample(SPEAKERS, 2)
        self.people = rng.sample(PEOPLE, len(PEOPLE))
        self.pets = rng.sample(PET_NAMES, len(PET_NAMES))
        self.check = Checker((self.a, self.b))
        self.used: dict[str, set[str]] = defaultdict(set)
        self.texts: set[str] = set()
        self.dropped = Counter[str]()
        self.rerendered = 0
        n_sessions = rng.randint(20, 30)
        day = dt.date(2022, 1, 3) + dt.timedelta(rng.randint(0, 540))
        self.dates: list[dt.date] = []
        for _ in range(n_sessions):
            self.dates.append(day)
            gap = rng.randint(1, 6) if rng.random() < 0.4 else rng.randint(7, 24)
            day += dt.timedelta(gap)
        self.n_turns = rng.randint(300, 700)
        self.target_tokens = min(25500, max(16500, int(self.n_turns * rng.uniform(36, 50))))

    # slot values ------------------------------------------------------------------------------
    def _person(self) -> str:
        return self.people.pop() if self.people else self.rng.choice(PEOPLE)

    def _item(self, bank: str, avoid: set[str] = frozenset()) -> Item:  # type: ignore[assignment]
        items = [i for i in BANKS[bank] if i.surface not in avoid]
        fresh = [i for i in items if i.surface not in self.used[bank]] or items
        item = self.rng.choice(fresh)
        self.used[bank].add(item.surface)
        return item

    def _draw(self, slots: dict[str, str], fixed: dict[str, Any]) -> dict[str, Any]:
        """Slot values: people and pet names stay fixed across re-renders, bank items don't."""
        out: dict[str, Any] = {}
        taken: dict[str, set[str]] = defaultdict(set)
        for slot, bank in slots.items():
            if bank in ("person", "petname"):
                if slot not in fixed:
                    pool = self.pets if bank == "petname" else self.people
                    fixed[slot] = pool.pop() if pool else self.rng.choice(PEOPLE)
                out[slot] = fixed[slot]
            else:
                item = self._item(bank, taken[bank])
                taken[bank].add(item.surface)
                out[slot] = item
        return out

    def _values(
        self, drawn: dict[str, Any], who: str, other: str, rng: random.Random | None = None
    ) -> dict[str, str]:
        rng = rng or self.rng
        vals = {"who": who, "other": other}
        for slot, v in drawn.items():
            if isinstance(v, Item):
                vals[slot] = v.surface
                vals[slot + "_n"] = re.sub(r"^(a|an|the|my) ", "", v.surface)
                vals[slot + "_a"] = ("an " if v.surface[0] in "aeiouAEIOU" else "a ") + v.surface
                vals[slot + "_q"] = rng.choice(v.paraphrases) if v.paraphrases else v.surface
                vals[slot + "_x"] = v.extra
                alts = [i for i in BANKS[v.bank] if i.surface != v.surface]
                alt = rng.choice(alts)
                vals[slot + "_alt"] = alt.surface
                vals[slot + "_alt_q"] = (
                    rng.choice(alt.paraphrases) if alt.paraphrases else alt.surface
                )
            else:
                vals[slot] = v
        for key in list(vals):
            vals[key + "_cap"] = _cap(vals[key])
        third = rng.choice((*THIRD, *(f"my friend {p}" for p in PEOPLE[:6])))
        vals["third"], vals["third_cap"] = third, _cap(third)
        return vals

    def _when(self) -> tuple[str, Callable[[dt.date], str], Callable[[dt.date], dt.date]]:
        return self.rng.choice(WHEN)

    def _evidence_turn(self, form: str, vals: dict[str, str], topic: str) -> str:
        """The fact sentence, sometimes with an opener and a same-topic sentence around it."""
        rng = self.rng
        fact = _cap(form.format(**vals))
        parts = []
        pad = rng.sample(FILLER[topic], 2)
        if rng.random() < 0.2:
            parts.append(rng.choice(INTERJECTIONS))
        if rng.random() < 0.3:
            parts.append(expand(pad[0], rng))
        parts.append(fact)
        if rng.random() < 0.45:
            parts.append(expand(pad[1], rng))
        elif rng.random() < 0.2:
            parts.append(rng.choice(ASKS))
        return " ".join(parts)

    # facts ------------------------------------------------------------------------------------
    def single(self, fact: Fact, who: str, session: int, kinds: list[str]) -> list[Question]:
        other = self.b if who == self.a else self.a
        fixed: dict[str, Any] = {}
        best: tuple[int, list[Question], Event | None, list[str], dict[str, Any]] = (
            -1,
            [],
            None,
            [],
            {},
        )
        for _attempt in range(12):
            drawn = self._draw(fact.slots, fixed)
            forms = fact.evidence
            if "temporal" in kinds:
                forms = tuple(f for f in forms if "{when}" in f) or forms
            form = self.rng.choice(forms)
            when = self._when()
            vals = self._values(drawn, who, other)
            vals["when"] = when[0]
            text = self._evidence_turn(form, vals, fact.topic)
            if not self._unique([text]):
                continue
            event = Event(session, who, text, fact.topic)
            made: list[Question] = []
            for kind in kinds:
                forms_q = {
                    "single-hop": fact.single,
                    "temporal": fact.temporal,
                    "speaker": fact.speaker,
                    "adversarial": fact.adversarial,
                }[kind]
                q = self._question(forms_q, drawn, who, other, [text])
                if q is None:
                    continue
                answer = self._answer(fact, kind, vals, when, session, "{when}" in form)
                made.append(Question(kind, q, [event], answer, fact.key))
            if len(made) > best[0]:
                best = (len(made), made, event, [q.kind for q in made], drawn)
            if len(made) == len(kinds):
                break
            self.rerendered += 1
        _, made, event, got, drawn = best
        for kind in kinds:
            if kind not in got:
                self.dropped[kind] += 1
        if event is None or not made:
            return []
        self.texts.add(event.text)
        self.events.append(event)
        for q in made:
            self._word(q, fact.key, drawn, who, other, [event.text], {})
            if q.kind == "adversarial":
                self._decoys(fact, q, who)
        return made

    def _question(
        self,
        forms: Sequence[str],
        drawn: dict[str, Any],
        who: str,
        other: str,
        evidence: list[str],
    ) -> str | None:
        for _ in range(8):
            vals = self._values(drawn, who, other)
            q = _cap(self.rng.choice(forms).format(**vals))
            if q not in self.qtexts and self.check.clean(q, evidence):
                self.qtexts.add(q)
                return q
        return None

    def _word(
        self,
        q: Question,
        key: str,
        drawn: dict[str, Any],
        who: str,
        other: str,
        evidence: list[str],
        extra: dict[str, str],
    ) -> None:
        """Draw the question's wording (50/50) and its natural draft (kept for the docs
        either way); a natural question whose drafts all fail stays paraphrased."""
        natural = self.wrng.random() < 0.5
        q.paraphrase, q.paraphrase_answer = q.text, q.answer
        draft = self._natural(key, q.kind, drawn, who, other, evidence, q.answer, extra)
        if draft is not None:
            q.natural, q.natural_answer, q.shared = draft
        if natural and draft is not None and q.natural not in self.qtexts:
            self.qtexts.add(q.natural)
            q.text, q.answer, q.wording = q.natural, q.natural_answer, "natural"
        elif natural:
            self.wording["natural, none passed: paraphrased"] += 1
        self.wording[q.wording] += 1

    def _natural(
        self,
        key: str,
        kind: str,
        drawn: dict[str, Any],
        who: str,
        other: str,
        evidence: list[str],
        answer: str,
        extra: dict[str, str],
    ) -> tuple[str, str, tuple[str, ...]] | None:
        """The first natural template (in a random order) that passes `Checker.natural`."""
        forms = NATURAL.get(key, {}).get(kind, ())
        vals = {**self._values(drawn, who, other, self.wrng), **extra}
        for form in self.wrng.sample(forms, len(forms)):
            text, _, alt = form.partition(" => ")
            q = _cap(text.format(**vals))
            a = alt.format(**vals) if alt else answer
            if kind in ANSWER_KINDS and a.lower() in q.lower():
                self.check.rejected["natural: gives the answer"] += 1
                self.check.rejected["natural drafts"] += 1
                continue
            if q in self.qtexts:
                continue
            shared = self.check.natural(q, evidence)
            if shared is not None:
                return q, a, tuple(shared[0])
        return None

    def _answer(
        self,
        fact: Fact,
        kind: str,
        vals: dict[str, str],
        when: tuple[str, Callable[[dt.date], str], Any],
        session: int,
        has_when: bool,
    ) -> str:
        if kind == "speaker":
            return vals["who"]
        if kind == "temporal":
            d = self.dates[session]
            return when[1](d) if has_when else fmt_date(d)
        return fact.answer.format(**vals)

    def _decoys(self, fact: Fact, question: Question, who: str) -> None:
        """3-4 turns on the same topic that use the question's words for other facts."""
        rng = self.rng
        forms = list(fact.decoys)
        rng.shuffle(forms)
        drawn = self._draw(fact.slots, {})
        qterms = set(fmai_terms(question.text)) - self.check.allowed_fmai
        for form in forms[: rng.randint(3, 4)]:
            vals = self._values(drawn, who, self.b if who == self.a else self.a)
            text = expand(form, rng, **vals)
            if rng.random() < 0.4:
                text += " " + expand(rng.choice(FILLER[fact.topic]), rng)
            speaker = rng.choice((self.a, self.b))
            session = rng.randrange(len(self.dates))
            self.decoy_share.append(bool(qterms & set(fmai_terms(text))))
            self.events.append(Event(session, speaker, text, fact.topic, evidence=False))

    def chain(self, chain: Chain, who: str) -> list[Question]:
        rng = self.rng
        other = self.b if who == self.a else self.a
        steps = chain.steps
        if chain.optional_last and rng.random() < 0.5:
            steps = steps[:-1]
        n = len(self.dates)
        fixed: dict[str, Any] = {}
        for _attempt in range(12):
            # different sessions, in order, spread out (at least 2 sessions apart when possible)
            gap = 2 if n >= 3 * len(steps) else 1
            while True:
                sessions = sorted(rng.sample(range(n), len(steps)))
                if all(b - a >= gap for a, b in zip(sessions, sessions[1:])):
                    break
            drawn = self._draw(chain.slots, fixed)
            events, whens = [], []
            for (role, forms), s in zip(steps, sessions):
                speaker = who if role == "self" else other
                vals = self._values(drawn, who, other)
                when = self._when()
                vals["when"] = when[0]
                form = rng.choice(forms)
                text = self._evidence_turn(form, vals, chain.topic)
                day = when[2](self.dates[s]) if "{when}" in form else self.dates[s]
                whens.append((day, when[1](self.dates[s]) if "{when}" in form else None, s))
                events.append(Event(s, speaker, text, chain.topic))
            texts = [e.text for e in events]
            if not self._unique(texts):
                continue
            q = self._question(chain.questions, drawn, who, other, texts)
            if q is None:
                self.rerendered += 1
                continue
            vals = self._values(drawn, who, other)
            extra = {}
            if chain.kind == "temporal":
                answer = self._duration(chain, whens, vals)
            else:
                answer = chain.answer.format(**vals)
                if chain.key == "instruments_agg":
                    answer = ", ".join(vals[f"inst{i + 1}"] for i in range(len(steps)))
                    extra["others"] = ", ".join(vals[f"inst{i + 1}"] for i in range(1, len(steps)))
            self.texts.update(texts)
            self.events.extend(events)
            question = Question(chain.kind, q, events, answer, chain.key)
            self._word(question, chain.key, drawn, who, other, texts, extra)
            return [question]
        self.dropped[chain.kind] += 1
        return []

    def _duration(self, chain: Chain, whens: list[Any], vals: dict[str, str]) -> str:
        (d1, p1, s1), (d2, p2, s2) = whens[:2]
        first = p1 or fmt_date(self.dates[s1])
        second = p2 or fmt_date(self.dates[s2])
        if chain.key == "which_first":
            return f"the journey ({first}), before the race ({second})"
        return f"about {(d2 - d1).days} days ({first} to {second})"

    # the whole conversation -------------------------------------------------------------------
    def plan(self) -> list[Question]:
        rng = self.rng
        self.events: list[Event] = []
        self.decoy_share: list[bool] = []
        self.qtexts: set[str] = set()
        speakers = (self.a, self.b)
        # Which facts go to whom (planned first, so that conflicts and speaker questions
        # are known before anything is rendered).
        pool = [(f, s) for f in FACTS for s in speakers]
        rng.shuffle(pool)
        first: dict[str, tuple[Fact, str]] = {}
        for f, s in pool:  # one instance of every template first, then the other speaker's
            first.setdefault(f.key, (f, s))
        picked = list(first.values())
        rng.shuffle(picked)
        singles = (picked + [p for p in pool if p not in picked])[: self.n_turns // 8]
        owned: dict[str, set[str]] = {s: set() for s in speakers}
        for f, s in singles:
            owned[s].add(f.key)

        def fits(key: str, who: str) -> bool:
            return not any(frozenset((key, k)) in CONFLICTS for k in owned[who])

        chains: list[tuple[Chain, str]] = []
        multi = [(c, s) for c in CHAINS if c.kind == "multi-hop" for s in speakers]
        rng.shuffle(multi)
        extra = [(c, s) for c in CHAINS if c.key in REPEATABLE_CHAINS for s in speakers]
        rng.shuffle(extra)
        for c, s in multi + extra:
            if len(chains) < self.n_turns // 20 and fits(c.key, s):
                chains.append((c, s))
                owned[s].add(c.key)
        for c in [c for c in CHAINS if c.kind == "temporal"]:
            for s in rng.sample(speakers, 2):
                if fits(c.key, s) and c.key not in owned[s]:
                    chains.append((c, s))
                    owned[s].add(c.key)
                    break
        families = {s: {FAMILY.get(k, k) for k in owned[s]} for s in speakers}
        uses = Counter(f.key for f, _ in singles)
        questions: list[Question] = []
        for c, who in chains:
            questions += self.chain(c, who)
        for fact, who in singles:
            other = self.b if who == self.a else self.a
            kinds = []
            if fact.adversarial and fact.decoys and rng.random() < 0.7:
                kinds.append("adversarial")
            elif fact.single:
                kinds.append("single-hop")
            if fact.temporal and rng.random() < 0.7:
                kinds.append("temporal")
            unique = uses[fact.key] == 1 and FAMILY.get(fact.key, fact.key) not in families[other]
            if fact.speaker and unique and rng.random() < 0.7:
                kinds.append("speaker")
            questions += self.single(fact, who, rng.randrange(len(self.dates)), kinds)
        return questions

    def _unique(self, texts: Sequence[str]) -> bool:
        """No planted text may contain another (so "in the prompt" means this turn)."""
        if len(set(texts)) < len(texts):
            return False
        return not any(t in x or x in t for t in texts for x in self.texts)

    def build(self, questions: list[Question]) -> Conversation:
        by_session: dict[int, list[Event]] = defaultdict(list)
        for e in self.events:
            by_session[e.session].append(e)
        n = len(self.dates)
        weights = [self.rng.uniform(0.6, 1.4) for _ in range(n)]
        need = [
            2 * sum(e.evidence for e in by_session[s])
            + sum(not e.evidence for e in by_session[s])
            + 4
            for s in range(n)
        ]
        free = self.n_turns - sum(need)  # the rest of the turns go where the weights say
        sizes = [need[s] + max(0, int(free * w / sum(weights))) for s, w in enumerate(weights)]
        firsts = [self.rng.random() < 0.5 for _ in range(n)]
        layouts = [self._layout(s, sizes[s], firsts[s], by_session[s]) for s in range(n)]
        counter = EchoBackend()
        planted = counter.count_tokens([Message("user", e.text) for e in self.events])
        mean = 1.6
        for _ in range(10):  # calibrate the filler length to the conversation's token target
            sessions = self._fill(layouts, mean)
            total = counter.count_tokens([m for s in sessions for m in s])
            if abs(total - self.target_tokens) < 0.03 * self.target_tokens:
                break
            mean *= max(0.3, min(3.0, (self.target_tokens - planted) / max(1, total - planted)))
        conv = Conversation(
            self.index, (self.a, self.b), [fmt_date(d) for d in self.dates], sessions, questions
        )
        self._index(conv, layouts)
        return conv

    def _layout(
        self, s: int, size: int, a_first: bool, events: list[Event]
    ) -> list[tuple[str, Event | None, str]]:
        """Speakers of each turn, with the planted events in place; ("lead"/"react"/...)."""
        rng = self.rng
        first, second = (self.a, self.b) if a_first else (self.b, self.a)
        while True:
            speakers = [first if i % 2 == 0 else second for i in range(size)]
            slots: list[Event | None] = [None] * size
            ok = True
            order = sorted(events, key=lambda e: not e.evidence)  # evidence first: room around
            for e in order:
                free = [
                    i for i in range(1, size - 1) if speakers[i] == e.speaker and slots[i] is None
                ]
                roomy = [
                    i
                    for i in free
                    if slots[i - 1] is None and (i + 1 >= size or slots[i + 1] is None)
                ]
                choice = roomy or free
                if not choice:
                    ok = False
                    break
                slots[rng.choice(choice)] = e
            if ok:
                break
            size += 4
        layout: list[tuple[str, Event | None, str]] = []
        for i in range(size):
            role = "filler"
            if i == 0:
                role = "greet"
            elif i == size - 1:
                role = "bye"
            elif (
                slots[i] is None
                and i + 1 < size
                and slots[i + 1] is not None
                and slots[i + 1].evidence
            ):
                role = "lead"
            elif slots[i] is None and slots[i - 1] is not None and slots[i - 1].evidence:
                role = "react"
            layout.append((speakers[i], slots[i], role))
        return layout

    def _fill(
        self, layouts: list[list[tuple[str, Event | None, str]]], mean: float
    ) -> list[list[Message]]:
        rng = random.Random(f"fmai-recall-filler:{self.index}:{self.a}:{self.b}")
        self._seen: Counter[str] = Counter()
        sessions = []
        for s, layout in enumerate(layouts):
            date = fmt_date(self.dates[s])
            topic = rng.choice(list(FILLER))
            out: list[Message] = []
            for i, (speaker, event, role) in enumerate(layout):
                other = self.b if speaker == self.a else self.a
                if event is not None:
                    text = event.text
                elif role == "greet":
                    text = expand(rng.choice(GREETINGS), rng, name=other)
                elif role == "bye":
                    text = expand(rng.choice(FAREWELLS), rng, name=other)
                elif i == 1:
                    text = expand(rng.choice(GREETING_REPLIES), rng, name=other)
                    text += " " + self._filler_text(rng, topic, mean * 0.6)
                elif role == "lead":
                    nxt = layout[i + 1][1]
                    assert nxt is not None
                    if rng.random() < 0.5:
                        text = rng.choice(LEAD_IN[nxt.topic])
                        if rng.random() < 0.5:
                            text = self._filler_text(rng, topic, mean * 0.5) + " " + text
                    else:
                        text = self._filler_text(rng, nxt.topic, mean)
                elif role == "react":
                    prev = layout[i - 1][1]
                    assert prev is not None
                    text = rng.choice(REACTIONS)
                    if rng.random() < 0.6:
                        text += " " + self._filler_text(rng, prev.topic, mean * 0.7)
                else:
                    if rng.random() < 0.25:
                        topic = rng.choice(list(FILLER))
                    text = self._filler_text(rng, topic, mean, glue=True)
                out.append(
                    Message(
                        "user" if speaker == self.a else "assistant",
                        text.strip(),
                        name=speaker,
                        timestamp=date,
                    )
                )
            sessions.append(out)
        return sessions

    def _sentence(self, rng: random.Random, topic: str, avoid: set[str]) -> str:
        """One filler sentence on `topic`, drawn again if this conversation used it twice."""
        for _ in range(6):
            template = rng.choice(FILLER[topic])
            text = expand(template, rng)
            if self._seen[text] < 2 and template not in avoid:
                break
        avoid.add(template)
        self._seen[text] += 1
        if rng.random() < 0.3:  # two clauses in one sentence
            template = rng.choice(FILLER[topic])
            second = expand(template, rng)
            if template not in avoid and text[-1] == "." and second[0].isupper():
                avoid.add(template)
                join = rng.choice((", and ", ", but ", "; also, ", ". Plus, ", " and "))
                text = text[:-1] + join + second[:1].lower() + second[1:]
        if rng.random() < 0.15:
            text = rng.choice(OPENERS) + text[:1].lower() + text[1:]
        return text

    def _filler_text(self, rng: random.Random, topic: str, mean: float, glue: bool = False) -> str:
        parts: list[str] = []
        avoid: set[str] = set()
        if glue and rng.random() < 0.35:
            parts.append(rng.choice(GLUE))
        k = max(0, round(rng.gauss(mean, 0.9)))
        if not parts and k == 0:
            k = 1
        for _ in range(k):
            t = topic if rng.random() < 0.65 else rng.choice(list(FILLER))
            parts.append(self._sentence(rng, t, avoid))
        if glue and rng.random() < 0.15:
            parts.append(rng.choice(ASKS))
        elif rng.random() < 0.06:
            parts.append(rng.choice(TAILS).strip())
        return " ".join(parts)

    def _index(
        self, conv: Conversation, layouts: list[list[tuple[str, Event | None, str]]]
    ) -> None:
        g = 0
        for layout in layouts:
            for _, event, _ in layout:
                if event is not None:
                    event.turn = g
                g += 1


def make_conversation(seed: int, index: int) -> tuple[Conversation, dict[str, Any]]:
    """Generate conversation `index` of `seed`; also return its generation statistics."""
    gen = Generator(seed, index)
    questions = gen.plan()
    conv = gen.build(questions)
    turns = conv.turns
    texts = [m.content for m in turns]
    # Every evidence text must be one turn, and in no other turn (so "in the prompt" is exact).
    bad = 0
    for q in questions:
        for e in q.events:
            if texts[e.turn] != e.text or sum(e.text in t for t in texts) != 1:
                bad += 1
    assert bad == 0, f"{bad} evidence turns are not unique"
    stats = {
        "drafts_rejected": gen.check.rejected["drafts"],
        "rejected_benchmark_stemmer": gen.check.rejected["benchmark stemmer"],
        "rejected_fmai_terms": gen.check.rejected["fmai terms"],
        "evidence_rerendered": gen.rerendered,
        "dropped": dict(gen.dropped),
        "decoys": len(gen.decoy_share),
        "decoys_sharing_a_question_term": sum(gen.decoy_share),
        "wording": dict(gen.wording),
        "natural_drafts_rejected": gen.check.rejected["natural drafts"],
        "natural_rejected": {
            k.removeprefix("natural: "): v
            for k, v in gen.check.rejected.items()
            if k.startswith("natural: ")
        },
    }
    conv.stats = stats
    return conv, stats


def verify(conv: Conversation) -> tuple[int, dict[str, Counter[int]]]:
    """Re-check every question against its evidence (both stemmers) by its wording; return
    the violations and, for the natural ones, how many words they share (per stemmer)."""
    check = Checker(conv.speakers)
    texts = [m.content for m in conv.turns]
    bad = 0
    shared: dict[str, Counter[int]] = {"benchmark stemmer": Counter(), "fmai terms": Counter()}
    for q in conv.questions:
        evidence = [texts[i] for i in q.evidence]
        if q.wording == "paraphrased":
            bad += not check.clean(q.text, evidence)
            continue
        got = check.natural(q.text, evidence)
        if got is None:
            bad += 1
        else:
            shared["benchmark stemmer"][len(got[0])] += 1
            shared["fmai terms"][len(got[1])] += 1
    return bad, shared


# -- baselines (independent of fmai's relevance code) ------------------------------------------
class BM25:
    """Okapi BM25 over whole turns, with this file's tokenizer."""

    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        toks = [words(d) for d in docs]
        self.lengths = [len(t) for t in toks]
        self.avgdl = statistics.fmean(self.lengths) if toks else 0.0
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, t in enumerate(toks):
            for term, tf in Counter(t).items():
                self.postings[term].append((i, tf))
        self.n = len(toks)

    def scores(self, query: str) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for term in set(words(query)):
            posting = self.postings.get(term)
            if not posting:
                continue
            idf = math.log(1 + (self.n - len(posting) + 0.5) / (len(posting) + 0.5))
            for i, tf in posting:
                norm = tf + self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avgdl)
                out[i] += idf * tf * (self.k1 + 1) / norm
        return out


def select(
    ranked: Sequence[int], costs: Sequence[int], budget: int, *, neighbours: bool = False
) -> set[int]:
    """The newest turns fill RECENT_SHARE of the budget; ranked hits (with neighbours) the rest."""
    chosen: set[int] = set()
    used = 0
    for i in range(len(costs) - 1, -1, -1):
        if used + costs[i] > RECENT_SHARE * budget:
            break
        chosen.add(i)
        used += costs[i]
    for i in ranked:
        group = [j for j in ((i - 1, i, i + 1) if neighbours else (i,)) if 0 <= j < len(costs)]
        group = [j for j in group if j not in chosen]
        cost = sum(costs[j] for j in group)
        if group and used + cost <= budget:
            chosen.update(group)
            used += cost
    return chosen


def _ranked(scores: dict[int, float]) -> list[int]:
    return sorted((i for i, s in scores.items() if s > 0), key=lambda i: (-scores[i], -i))


def _rrf(*rankings: Sequence[int]) -> list[int]:
    fused: dict[int, float] = defaultdict(float)
    for ranking in rankings:
        for r, i in enumerate(ranking, 1):
            fused[i] += 1.0 / (RRF_K + r)
    return sorted(fused, key=lambda i: (-fused[i], -i))


def budgets_for(conv: Conversation, share: float) -> int:
    return max(MAX_NEW_TOKENS + 64, int(EchoBackend().count_tokens(conv.turns) * share))


def baselines(
    conv: Conversation, share: float, embeddings: tuple[Any, Any] | None
) -> dict[str, list[bool]]:
    """Kept flags per question for the independent baselines (and the evidence-fits bound)."""
    backend = EchoBackend()
    base = backend.count_tokens([])
    turns = conv.turns
    costs = [backend.count_tokens([m]) - base for m in turns]
    index = BM25([m.content for m in turns])
    max_tokens = budgets_for(conv, share)
    out: dict[str, list[bool]] = defaultdict(list)
    for qi, q in enumerate(conv.questions):
        budget = max_tokens - MAX_NEW_TOKENS - backend.count_tokens([Message("user", q.text)])
        ev = q.evidence
        out["evidence fits"].append(sum(costs[i] for i in ev) <= budget)
        bm = _ranked(index.scores(q.text))
        for name, ranked, nb in (("bm25+recent", bm, False), ("bm25+neighbours", bm, True)):
            chosen = select(ranked, costs, budget, neighbours=nb)
            out[name].append(all(i in chosen for i in ev))
        if embeddings is not None:
            turn_vecs, q_vecs = embeddings
            sims = turn_vecs @ q_vecs[qi]
            dense = sorted(range(len(turns)), key=lambda i: (-float(sims[i]), -i))
            out["minilm"].append(all(i in select(dense, costs, budget) for i in ev))
            fused = _rrf(bm, dense)
            out["rrf(bm25, minilm)"].append(all(i in select(fused, costs, budget) for i in ev))
    return out


# -- fmai through the engine -------------------------------------------------------------------
REPLY = "Sounds good, talk soon!"


def _reply(messages: Sequence[Message]) -> str:
    """EchoBackend's reply: the echo for a summary request (a system prompt first, as
    `rolling_summary` asks), a fixed short line for a chat turn. The plain echo would copy
    the recalled block, which sits in the user turn, into the history, and an evidence turn
    could then reach the prompt through that copy.
    """
    if messages and messages[0].role == "system":
        return "echo: " + next((m.content for m in reversed(messages) if m.role == "user"), "")
    return REPLY


def run_policy(
    conv: Conversation,
    policy: str,
    share: float,
    embedder: Any = None,
    *,
    echo: bool = False,
    recall_layout: str = "fresh",
) -> tuple[list[bool], dict[str, Any]]:
    """Feed the conversation session by session, then build each question's prompt."""
    backend = EchoBackend() if echo else EchoBackend(reply=_reply)
    max_tokens = budgets_for(conv, share)
    llm = FiniteMemoryLLM(
        backend,
        policy=policy,
        max_tokens=max_tokens,
        max_new_tokens=MAX_NEW_TOKENS,
        system_prompt=None,
        max_policy_ms=None,
        embedder=embedder,
        recall_layout=recall_layout,
    )
    for session in conv.sessions:
        if session[-1].role == "user":
            llm.extend(session[:-1])
            llm.chat(session[-1].content)
        else:
            llm.extend(session)
            llm.chat(CLOSING)
    texts = [m.content for m in conv.turns]
    kept, prompt_tokens = [], []
    for q in conv.questions:
        msgs = llm.context(q.text)
        prompt = "\n".join(m.content for m in msgs)
        kept.append(all(texts[i] in prompt for i in q.evidence))
        prompt_tokens.append(backend.count_tokens(msgs))
    return kept, {"max_tokens": max_tokens, "prompt_tokens": prompt_tokens}


class MemoEmbedder:
    """Forwards to an embedder and remembers its vectors, so the same turn is embedded once
    across policies and budgets (results are unchanged, only time is saved; the policies'
    elapsed times then leave most of the embedding out). Other attributes are forwarded.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.memo: dict[str, list[float]] = {}

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if missing:
            self.memo.update(zip(missing, self.inner.embed(missing)))
        return [self.memo[t] for t in texts]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _load_cache(path: str | None) -> dict[str, list[float]]:
    """Vectors of an earlier run (`--embed-cache`): a local pickle this script wrote."""
    if not path or not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        return dict(pickle.load(f))  # a local file this script wrote: trusted


def save_cache(embedder: Any, path: str | None) -> None:
    """Write the embedder's vectors to `path` (`--embed-cache`), for the next run."""
    if path and embedder is not None:
        with open(path, "wb") as f:
            pickle.dump(embedder.memo, f)


def load_embedder(cache: str | None = None) -> Any:
    """fmai_torch.SentenceEmbedder(), or None with a printed note."""
    try:
        from fmai_torch import SentenceEmbedder  # type: ignore[attr-defined]
    except ImportError as exc:
        print(f"note: --embedder skipped, fmai_torch.SentenceEmbedder is not importable ({exc})")
        return None
    try:
        memo = MemoEmbedder(SentenceEmbedder())
    except Exception as exc:  # report any load failure and go on without it
        print(f"note: --embedder skipped, SentenceEmbedder() failed: {exc}")
        return None
    memo.memo.update(_load_cache(cache))
    return memo


def embed_conversation(embedder: Any, conv: Conversation) -> tuple[Any, Any]:
    import numpy as np

    def unit(texts: list[str]) -> Any:
        vecs = np.asarray(embedder.embed(texts), dtype=np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    return unit([m.content for m in conv.turns]), unit([q.text for q in conv.questions])


# -- report ------------------------------------------------------------------------------------
def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _shares(flags: list[bool], kinds: list[str], wordings: list[str]) -> dict[str, Any]:
    """Kept shares: overall, per wording, per type, and per wording x type."""
    row: dict[str, Any] = {"overall": _share(flags) or 0.0}
    for w in WORDINGS:
        row[w] = _share([f for f, x in zip(flags, wordings) if x == w])
    for t in TYPES:
        row[t] = _share([f for f, k in zip(flags, kinds) if k == t])
    row["kept"] = sum(flags)
    row["by_wording"] = {
        w: {
            t: _share([f for f, k, x in zip(flags, kinds, wordings) if k == t and x == w])
            for t in TYPES
        }
        for w in WORDINGS
    }
    return row


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    convs, gen_stats = [], []
    for i in range(args.conversations):
        conv, st = make_conversation(args.seed, i)
        convs.append(conv)
        gen_stats.append(st)
    violations = 0
    shared_n: dict[str, Counter[int]] = defaultdict(Counter)
    for c in convs:
        bad, shared = verify(c)
        violations += bad
        for stemmer, counts in shared.items():
            shared_n[stemmer].update(counts)
    gen_s = time.perf_counter() - start
    kinds = [q.kind for c in convs for q in c.questions]
    wordings = [q.wording for c in convs for q in c.questions]
    embedder = load_embedder(args.embed_cache) if args.embedder else None
    embeddings: list[Any] = [None] * len(convs)
    elapsed: dict[str, float] = defaultdict(float)
    if embedder is not None:
        t0 = time.perf_counter()
        embeddings = [embed_conversation(embedder, c) for c in convs]
        save_cache(embedder, args.embed_cache)
        elapsed["minilm embeddings"] += time.perf_counter() - t0
    rows: dict[str, dict[str, list[bool]]] = {}
    mean_max: dict[str, float] = {}
    for share in args.budgets:
        key = f"{share:.2f}"
        flags: dict[str, list[bool]] = defaultdict(list)
        t0 = time.perf_counter()
        for c, emb in zip(convs, embeddings):
            for name, f in baselines(c, share, emb).items():
                flags[name] += f
        elapsed["baselines"] += time.perf_counter() - t0
        mean_max[key] = statistics.fmean(budgets_for(c, share) for c in convs)
        runs = [(p, None, f"`{p}`") for p in args.policies]
        if embedder is not None:
            runs += [(p, embedder, f"`{p}` + embedder") for p in args.policies if p != "sliding"]
        for policy, emb, label in runs:
            t0 = time.perf_counter()
            for c in convs:
                kept, _ = run_policy(c, policy, share, emb, recall_layout=args.recall_layout)
                flags[label] += kept
            elapsed[label] += time.perf_counter() - t0
            if not args.json:
                print(f"  {key} {label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows[key] = flags
    # The policies embed texts of their own (the sessions' closing lines, the questions as
    # queries): keep them too, or every later run embeds them again.
    save_cache(embedder, args.embed_cache)
    turns = [len(c.turns) for c in convs]
    tokens = [EchoBackend().count_tokens(c.turns) for c in convs]
    per_type = Counter(kinds)
    per_type_wording = Counter(zip(kinds, wordings))
    evidence_n = Counter(len(q.evidence) for c in convs for q in c.questions)
    wording_stats = sum((Counter(s["wording"]) for s in gen_stats), Counter())
    natural_rejected = sum((Counter(s["natural_rejected"]) for s in gen_stats), Counter())
    report = {
        "command": shlex.join(["python", "benchmarks/recall.py", *sys.argv[1:]]),
        "seed": args.seed,
        "machine": f"{platform.platform()}, {cpu_model()}, Python {platform.python_version()}",
        "dataset": {
            "conversations": len(convs),
            "sessions": [len(c.sessions) for c in convs],
            "turns": turns,
            "tokens": tokens,
            "questions": len(kinds),
            "questions_per_type": {t: per_type[t] for t in TYPES},
            "questions_per_wording": {w: wordings.count(w) for w in WORDINGS},
            "questions_per_type_wording": {
                t: {w: per_type_wording[t, w] for w in WORDINGS} for t in TYPES
            },
            "evidence_turns_per_question": dict(sorted(evidence_n.items())),
        },
        "paraphrase": {
            "violations_after_generation": violations,
            "drafts_rejected": sum(s["drafts_rejected"] for s in gen_stats),
            "rejected_by_benchmark_stemmer": sum(
                s["rejected_benchmark_stemmer"] for s in gen_stats
            ),
            "rejected_by_fmai_terms": sum(s["rejected_fmai_terms"] for s in gen_stats),
            "evidence_rerendered": sum(s["evidence_rerendered"] for s in gen_stats),
            "questions_dropped": dict(sum((Counter(s["dropped"]) for s in gen_stats), Counter())),
            "decoys": sum(s["decoys"] for s in gen_stats),
            "decoys_sharing_a_question_term": sum(
                s["decoys_sharing_a_question_term"] for s in gen_stats
            ),
        },
        "wording": {
            "natural": wording_stats["natural"],
            "paraphrased": wording_stats["paraphrased"],
            "drawn_natural_but_no_draft_passed": wording_stats["natural, none passed: paraphrased"],
            "natural_drafts_rejected": sum(s["natural_drafts_rejected"] for s in gen_stats),
            "natural_rejected_because": dict(natural_rejected),
            "natural_shared_words": {
                stemmer: dict(sorted(counts.items())) for stemmer, counts in shared_n.items()
            },
        },
        "budgets": {
            key: {
                "mean_max_tokens": round(mean_max[key], 1),
                "rows": {name: _shares(f, kinds, wordings) for name, f in flags.items()},
            }
            for key, flags in rows.items()
        },
        "elapsed_s": {k: round(v, 1) for k, v in elapsed.items()},
        "generation_s": round(gen_s, 1),
        "total_s": round(time.perf_counter() - start, 1),
        "embedder": embedder is not None,
    }
    report["difficulty"] = difficulty(report)
    report["examples"] = examples(convs[0])
    return report


BM25_RANGE = (0.30, 0.70)  # bm25+recent overall at a 10% budget
PARAPHRASED_BM25_MAX = 0.10  # paraphrased questions must not be found by their words


def difficulty(report: dict[str, Any]) -> dict[str, Any]:
    """The self-check: the evidence must fit; at 10%, `bm25+recent` must land in BM25_RANGE
    overall (natural questions findable by their words, paraphrased ones not); at every
    budget, `bm25+recent` keeps at most PARAPHRASED_BM25_MAX of the paraphrased ones."""
    out = {}
    for key, b in report["budgets"].items():
        r = b["rows"]
        bm = r["bm25+recent"]
        lo, hi = BM25_RANGE
        out[key] = {
            "bm25+recent": bm["overall"],
            "bm25+recent natural": bm["natural"],
            "bm25+recent paraphrased": bm["paraphrased"],
            "bm25_ok": lo <= bm["overall"] <= hi if key == "0.10" else None,
            "paraphrased_ok": (bm["paraphrased"] or 0.0) <= PARAPHRASED_BM25_MAX,
            "evidence_fits": r["evidence fits"]["overall"],
            "fits_ok": r["evidence fits"]["overall"] >= 0.95,
        }
    return out


def examples(conv: Conversation) -> list[dict[str, Any]]:
    """One question of each type with its evidence and both of its wordings, for the docs
    (the one asked is `wording`; the other draft is shown for comparison)."""
    texts = [m.content for m in conv.turns]
    session_of = [conv.dates[s] for s, sess in enumerate(conv.sessions) for _ in sess]
    out = []
    for t in TYPES:
        q = next((q for q in conv.questions if q.kind == t and q.natural), None)
        if q is not None:
            out.append(
                {
                    "type": t,
                    "wording": q.wording,
                    "natural": q.natural,
                    "natural_answer": q.natural_answer,
                    "natural_shares": list(q.shared),
                    "paraphrased": q.paraphrase,
                    "paraphrased_answer": q.paraphrase_answer,
                    "evidence": [
                        f"{conv.turns[i].name} ({session_of[i]}): {texts[i]}" for i in q.evidence
                    ],
                }
            )
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def tables(report: dict[str, Any]) -> str:
    n = report["dataset"]["questions_per_type"]
    nw = report["dataset"]["questions_per_wording"]
    total = report["dataset"]["questions"]
    cols = (*WORDINGS, *TYPES)
    head = (
        f"| selection | overall (n={total}) | "
        + " | ".join(f"{c} (n={nw[c] if c in nw else n[c]})" for c in cols)
        + " |"
    )
    out = []
    for key, b in report["budgets"].items():
        out.append(
            f"**`max_tokens` = {float(key):.0%} of the conversation** "
            f"(mean {b['mean_max_tokens']:.0f} tokens)\n"
        )
        out.append(head)
        out.append("| --- | ---: | " + " | ".join("---:" for _ in cols) + " |")
        for name, r in b["rows"].items():
            label = name if name.startswith("`") else f"{name}"
            if name == "evidence fits":
                label = "evidence fits (upper bound)"
            out.append(
                f"| {label} | {_pct(r['overall'])} | " + " | ".join(_pct(r[c]) for c in cols) + " |"
            )
        out.append("")
    return "\n".join(out)


def summary_lines(report: dict[str, Any]) -> str:
    d, p = report["dataset"], report["paraphrase"]
    el = ", ".join(f"{k} {v:.0f} s" for k, v in report["elapsed_s"].items())
    lines = [
        f"{d['conversations']} conversations, {min(d['sessions'])}-{max(d['sessions'])} sessions,"
        f" {min(d['turns'])}-{max(d['turns'])} turns, {min(d['tokens'])}-{max(d['tokens'])}"
        f" tokens; {d['questions']} questions "
        + ", ".join(f"{t} {c}" for t, c in d["questions_per_type"].items()),
        f"paraphrase check: {p['drafts_rejected']} question drafts rejected and regenerated"
        f" (benchmark stemmer {p['rejected_by_benchmark_stemmer']}, fmai terms"
        f" {p['rejected_by_fmai_terms']}), {p['evidence_rerendered']} evidence turns"
        f" re-rendered, dropped {p['questions_dropped'] or 0},"
        f" {p['violations_after_generation']} violations left",
        f"decoys: {p['decoys']}, {p['decoys_sharing_a_question_term']} share a term with"
        " their question",
        _wording_line(report),
    ]
    lo, hi = BM25_RANGE
    for key, v in report["difficulty"].items():
        check = ""
        if v["bm25_ok"] is not None:
            check = f" ({'OK' if v['bm25_ok'] else 'OUT OF RANGE'}: {lo:.0%}-{hi:.0%} expected)"
        lines.append(
            f"self-check at {float(key):.0%}: bm25+recent {v['bm25+recent']:.1%}{check};"
            f" natural {_pct(v['bm25+recent natural'])}, paraphrased"
            f" {_pct(v['bm25+recent paraphrased'])}"
            f" ({'OK' if v['paraphrased_ok'] else 'TOO EASY'}:"
            f" <= {PARAPHRASED_BM25_MAX:.0%} expected); evidence fits"
            f" {v['evidence_fits']:.1%} ({'OK' if v['fits_ok'] else 'LOW'})"
        )
    lines.append(
        f"command: {report['command']}; seed {report['seed']}; machine: {report['machine']}"
    )
    lines.append(f"elapsed: {el}; total {report['total_s']:.0f} s")
    return "\n".join(lines)


def _wording_line(report: dict[str, Any]) -> str:
    w = report["wording"]
    per = report["dataset"]["questions_per_type_wording"]
    shared = w["natural_shared_words"]
    hist = "; ".join(
        f"{stemmer}: " + ", ".join(f"{k} word{'s' if int(k) > 1 else ''} {v}" for k, v in c.items())
        for stemmer, c in shared.items()
    )
    return (
        f"wording: natural {w['natural']}, paraphrased {w['paraphrased']} ("
        + ", ".join(f"{t} {c['natural']}/{c['paraphrased']}" for t, c in per.items())
        + f"); {w['natural_drafts_rejected']} natural drafts rejected"
        f" ({', '.join(f'{k} {v}' for k, v in w['natural_rejected_because'].items())}),"
        f" {w['drawn_natural_but_no_draft_passed']} drawn natural stayed paraphrased;"
        f" natural questions share with their evidence: {hist}"
    )


def fragment(report: dict[str, Any]) -> str:
    d = report["dataset"]
    n = d["questions_per_type"]
    nw = d["questions_per_wording"]
    w = report["wording"]
    ex = "\n".join(
        f"- {e['type']} (asked {e['wording']}): natural *{e['natural']}*"
        + (
            f" (expected: {e['natural_answer']})"
            if e["natural_answer"] != e["paraphrased_answer"]
            else ""
        )
        + f" / paraphrased *{e['paraphrased']}* (expected: {e['paraphrased_answer']}) ← "
        + " / ".join(f"“{t}”" for t in e["evidence"])
        for e in report["examples"]
    )
    el = ", ".join(f"{k} {v:.0f} s" for k, v in report["elapsed_s"].items())
    p = report["paraphrase"]
    lo, hi = BM25_RANGE
    diff = "; ".join(
        f"at {float(k):.0%}, `bm25+recent` keeps {v['bm25+recent']:.1%} overall"
        f" ({_pct(v['bm25+recent natural'])} of the natural questions,"
        f" {_pct(v['bm25+recent paraphrased'])} of the paraphrased ones) and the evidence fits"
        f" for {v['evidence_fits']:.1%}"
        for k, v in report["difficulty"].items()
    )
    shared = w["natural_shared_words"]["benchmark stemmer"]
    shared_txt = ", ".join(
        f"{v} share {k} word{'s' if int(k) > 1 else ''}" for k, v in shared.items()
    )
    return f"""## Recall

Does the evidence for a question about the distant past reach the prompt? The benchmark
(`benchmarks/recall.py`) generates LoCoMo-style data from a seed: {d["conversations"]}
conversations between two named people over {min(d["sessions"])}–{max(d["sessions"])} dated
sessions each ({min(d["turns"])}–{max(d["turns"])} turns, {min(d["tokens"]):,}–{max(d["tokens"]):,}
tokens), mostly chit-chat on the same topics as the facts (work, family, pets, travel, food,
health, books, sports, music, home, ...), and {d["questions"]:,} questions asked after the
whole conversation:

- **single-hop** ({n["single-hop"]}): one evidence turn.
- **multi-hop** ({n["multi-hop"]}): 2–3 evidence turns in different sessions, linked by a
  name that only the evidence gives ("I met Jess at my pottery class" … "Jess packed up and
  moved to Denver" → "Where did Caroline's friend from pottery class move to?"), or facts to
  gather ("Which musical instruments does Jon play?").
- **temporal** ({n["temporal"]}): "when" questions whose evidence says "yesterday", "last
  weekend", "two days ago"…, to be resolved against the session's date; a few ask for the
  time between two events in different sessions.
- **speaker** ({n["speaker"]}): who said it ("Who ran a charity 5k?").
- **adversarial** ({n["adversarial"]}): the question's own words are in 3–4 planted turns on
  the same topic about other facts ("What is the name of the beagle Caroline adopted?"
  against "My neighbour adopted a dog too, some kind of corgi mix").

Each question is asked in one of two **wordings**, drawn 50/50 per question from the seed
(its own random stream, so the conversations and the paraphrased questions are the same
whichever wording a question gets): {nw["natural"]} natural, {nw["paraphrased"]} paraphrased.

- **natural**: the way a user who remembers the conversation asks, with the fact's own key
  word(s): "What did Caroline name the beagle?" against "We brought home a beagle from the
  shelter last week, and Biscuit has already claimed the couch.", or "When did Melanie run
  the charity 5k?" against "I ran a charity 5k last weekend!". A natural question must share
  **1–3** content words with its evidence under both stemmers below (multi-hop: at least one
  with the first hop; the bridge name never comes from the question), and must not contain
  its expected answer: {shared_txt} (the benchmark's stemmer). It is written from
  hand-made templates per fact, tried in a random order until one passes
  ({w["natural_drafts_rejected"]:,} drafts were rejected; {w["drawn_natural_but_no_draft_passed"]}
  questions drawn natural had no passing draft and stay paraphrased).
- **paraphrased**: **no content word shared with the evidence** ("What kind of dog did
  Caroline adopt?", "When did Melanie take part in a fundraising race?"), written from
  hand-made synonym and hypernym tables (beagle → dog, pottery → ceramics, charity 5k →
  fundraising race); a draft that shares a word is rejected and drawn again
  ({p["drafts_rejected"]:,} drafts were). These are the questions of the previous version of
  this benchmark, unchanged: the wording only decides which of them are asked as they were.

Both rules are checked in code, and re-checked on the finished data
({p["violations_after_generation"]} violations), with the benchmark's own crude stemmer (and
word families) and with `fmai_core.relevance.terms`; the two speakers' names never count.
Examples from the first conversation, each question in both wordings (the one it is asked
in is named):

{ex}

Each conversation goes through `FiniteMemoryLLM` with `EchoBackend`, as an app would feed
it: speaker A is the `user`, speaker B the `assistant`, each turn a `Message` with `name`
and `timestamp` (the session date); every session is added with `llm.extend(...)` and closed
with one `llm.chat(...)`, so policies evict along the way without knowing the questions.
`max_tokens` is the share of the conversation's tokens below, `max_new_tokens=32`,
`max_policy_ms=None` (timing never changes a result), everything else default. The reply
to each `chat` is a fixed "Sounds good, talk soon!" (summaries are still `EchoBackend`'s
echo): the plain echo would copy the recalled block into the history. A question counts
only when **every** evidence turn is in `llm.context(question)` verbatim and whole.

The baselines are implemented in the benchmark, not with fmai's code, over the same turns
and budgets: `bm25+recent` is BM25 (k1 = 1.2, b = 0.75) over whole turns, with the newest
turns filling 25% of the budget and the hits by score the rest; `bm25+neighbours` takes each
hit with its previous and next turn; `sliding` is fmai's. "evidence fits" is the share of
questions whose evidence fits in the budget at all. Self-check (expected: the evidence
fits for at least 95%; `bm25+recent` overall between {lo:.0%} and {hi:.0%} at 10%, and at
most {PARAPHRASED_BM25_MAX:.0%} of the paraphrased questions): {diff}.

How to read the figures: the `natural` and `paraphrased` columns split every row by
wording, and overall is over all questions. A natural question shares a word (often a rare
one: a breed, a race, a band) with its evidence, so a lexical index finds most of the
single-turn ones; the natural column measures whether a policy turns what it can find into
prompt space, and its multi-hop part whether the later hops, which share nothing or little
with the question, come along. A paraphrased question shares no word with its evidence, so
a lexical index (BM25, or fmai's torch-free proxies) cannot rank an evidence turn on its
own words: it reaches one only through the recent window, as the neighbour of a turn that
does share a word, or, for multi-hop, through a name that another evidence turn gives.
Going further there needs a semantic signal: run with `--embedder`. Real conversations mix
the two: on the held-out conversations of issue 10, `bm25+recent` keeps 65%, between its
natural and paraphrased figures here. An embedding model, though, has it easier here than
there: the paraphrases come from small synonym and hypernym tables, which a sentence
embedder bridges well, so with `--embedder` `minilm` alone keeps most paraphrased questions,
more than it keeps of the held-out questions overall (64%); and since BM25's ranking of a
paraphrased question is noise, `rrf(bm25, minilm)` falls below `minilm` alone here, the
reverse of the held-out data (76% against 64%). Read the `--embedder` rows as optimistic,
and do not tune a fusion on them. Three more ways this data differs from real
conversations, found while working on fmai's recall (issue 10), and not fixed here:
the turn after a fact reacts in general words ("Seriously?", then chit-chat on the same
topic) where a real partner follows the thread ("A beagle! What's her name?"), so taking a
hit's neighbouring turns pays less here than on the held-out data (+9 points there);
a filler sentence leaves the session's topic one time in three, so a filler turn of several
sentences is less focused than a real turn, and its embedding more diffuse, which helps an
embedding pick out a fact turn; and most
paraphrased questions (74%) use a word the whole conversation never used, against 22% of
the natural ones (fmai's terms), which fmai's fusion reads as a sign that BM25 cannot be
sure of the query: how often real questions do so decides how much that rule helps there.
The generator was written on this seed and checked only against the wording rules and the
self-check above, never against a policy's figures; fmai's policies change, so rerun it
rather than trust old figures.

{tables(report)}
Run time: {el} (generation {report["generation_s"]:.0f} s; total {report["total_s"]:.0f} s),
seed {report["seed"]}, on {report["machine"]}, single-threaded. With `--embedder`, the rows
`minilm` (cosine of `fmai_torch.SentenceEmbedder` embeddings, the same recent quarter),
`rrf(bm25, minilm)` (reciprocal-rank fusion, k = 60) and each policy with that embedder are
added. `--json` gives every figure, with each row also split by wording × type.

```bash
pip install -e packages/fmai-core
{report["command"]}
```
"""


def tables_fragment(report: dict[str, Any]) -> str:
    """The tables alone, with the run line and the command (`--write-tables`)."""
    el = ", ".join(f"{k} {v:.0f} s" for k, v in report["elapsed_s"].items())
    return (
        tables(report)
        + f"\nRun time: {el} (total {report['total_s']:.0f} s), seed {report['seed']}, on "
        f"{report['machine']}.\n\n```bash\n{report['command']}\n```\n"
    )


def print_sample(conv: Conversation, sessions: int = 3) -> None:
    g = 0
    for s, sess in enumerate(conv.sessions[:sessions]):
        print(f"--- session {s + 1}, {conv.dates[s]}")
        for m in sess:
            print(f"[{g}] {m.name}: {m.content}")
            g += 1
    shown = [q for q in conv.questions if min(q.evidence) < g]
    print("--- questions with evidence above")
    for q in shown:
        print(f"{q.kind}/{q.wording}: {q.text} -> {q.answer} {q.evidence}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--budgets", default="0.10,0.05", help="shares of the conversation")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    parser.add_argument("--embedder", action="store_true", help="fmai_torch.SentenceEmbedder")
    parser.add_argument(
        "--embed-cache",
        metavar="PATH",
        help="keep the model's vectors in PATH (a local pickle) and reuse them on the next run",
    )
    parser.add_argument("--quick", action="store_true", help="2 conversations")
    parser.add_argument(
        "--recall-layout", choices=("fresh", "stable"), default="fresh", help="MemoryConfig's"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--write", metavar="PATH", help="write the docs fragment to PATH")
    parser.add_argument(
        "--write-tables", metavar="PATH", help="write only the tables (and command) to PATH"
    )
    parser.add_argument("--sample", type=int, metavar="I", help="print conversation I and stop")
    args = parser.parse_args()
    if args.sample is not None:
        conv, stats = make_conversation(args.seed, args.sample)
        print_sample(conv)
        print(stats)
        return
    if args.quick:
        args.conversations = 2
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for p in args.policies:
        if p not in POLICIES:
            parser.error(f"unknown policy {p!r}: use {', '.join(POLICIES)}")
    report = benchmark(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(tables(report))
        print(summary_lines(report))
    if args.write:
        Path(args.write).write_text(fragment(report), encoding="utf-8")
    if args.write_tables:
        Path(args.write_tables).write_text(tables_fragment(report), encoding="utf-8")


if __name__ == "__main__":
    main()
