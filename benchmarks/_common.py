"""Helpers shared by the benchmarks: the machine's CPU model and a seeded chit-chat generator.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this module is importable as
`_common` from any of them without touching `sys.path`. It depends on fmai-core only.

`make_conversation` builds the seeded multi-session chit-chat with planted facts that
`policy_cost.py` times the policies on (the generator of the first recall benchmark, kept
as it was so that the policy-cost figures stay comparable across runs).
"""

from __future__ import annotations

import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmai_core import Message

__all__ = ["Conversation", "Probe", "cpu_model", "free_port", "make_conversation", "wait_until_up"]


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    """A TCP port free on loopback now (for a server the benchmark starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(
    proc: Any, url: str, seconds: float, poll: float = 0.05, log: Path | None = None
) -> None:
    """Wait until `url` answers 2xx (a server's health route), while `proc` runs.

    Raises:
        RuntimeError: the process exited, or `seconds` passed; with the end of `log`.
    """
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}): {tail}")
            raise RuntimeError(f"the server did not start within {seconds:g} s: {tail}")
        time.sleep(poll)


# -- a seeded chit-chat conversation with planted facts ----------------------------------------
NAMES = "Ada Bruno Carmen Dmitri Elif Farah Goran Hana Ines Jonas Kiri Luca Mira Nadia Omar".split()
CITIES = "Porto Tartu Ghent Oaxaca Bergen Kyoto Lviv Perth Cusco Tromso Leeds Split".split()
DESSERTS = "tiramisu baklava pavlova flan cheesecake mochi churros".split()
ALLERGENS = "penicillin peanuts shellfish latex sesame pollen".split()
INSTRUMENTS = "cello banjo oboe harp accordion ukulele".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday".split()

# (fact template with slots, question asked at the end)
FACTS = [
    ("By the way, my sister is called {name}.", "What is my sister's name?"),
    ("My dentist appointment is on {weekday} at {hour}:30.", "When is my dentist appointment?"),
    ("The code for my bike lock is {code}.", "What was the code for my bike lock?"),
    ("I grew up in {city}, a long time ago.", "Where did I grow up?"),
    ("My favourite dessert is {dessert}.", "What is my favourite dessert?"),
    ("I'm allergic to {allergen}, so keep that in mind.", "What am I allergic to?"),
    ("My flight to {city} leaves from gate {gate}.", "Which gate does my flight leave from?"),
    ("Our landlord's name is {name}.", "What's the name of our landlord?"),
    ("I parked the car on level {level} of the garage.", "On which level did I park the car?"),
    (
        "I started taking {instrument} lessons last spring.",
        "Which instrument am I taking lessons for?",
    ),
    ("The wifi password at the cabin is {password}.", "What is the wifi password at the cabin?"),
    (
        "My colleague {name} is moving to {city} next month.",
        "Which colleague is moving, and where?",
    ),
]

# One per fact (same order): shares the question's words, not its answer.
DISTRACTORS = [
    "My neighbour's sister just started at a new school.",
    "The dentist down the street has terrible reviews.",
    "My old bike lock broke last winter, so I bought a new one.",
    "My cousin grew up on a farm with goats.",
    "I tried a new dessert recipe, but it flopped.",
    "My coworker is allergic to cats, poor thing.",
    "The flight attendants at the gate were very friendly last time.",
    "The landlord finally fixed the heater.",
    "Someone parked their car across the garage door again.",
    "Swimming lessons for kids are expensive around here.",
    "I always forget the wifi password at the office.",
    "My colleague keeps taking my stapler and says he is moving desks.",
]

TOPICS: dict[str, list[str]] = {
    "weather": "rain sunshine forecast umbrella storm humidity breeze clouds frost".split(),
    "cooking": "recipe garlic oven pasta sauce basil dough skillet soup spices".split(),
    "movies": "film director sequel trailer cinema plot actor soundtrack premiere scene".split(),
    "travel": "itinerary hostel passport luggage museum train beach ferry map hike".split(),
    "work": "meeting deadline manager report spreadsheet client project email office".split(),
    "sports": "match goal coach league season striker tennis marathon referee training".split(),
    "music": "album concert guitar playlist chorus drummer vinyl lyrics band festival".split(),
    "books": "novel chapter author library poetry mystery paperback series plot twist".split(),
    "tech": "laptop update battery keyboard router software phone charger screen backup".split(),
    "garden": "tomatoes seeds compost roses soil weeds lawn tulips shovel watering".split(),
    "pets": "dog cat leash vet kitten treats walk puppy aquarium parrot".split(),
    "fitness": "gym yoga stretching protein squats cardio treadmill swim cycling steps".split(),
    "money": "savings rent invoice taxes mortgage discount pension receipts bank loan".split(),
}
USER_LINES = [
    "I've been thinking about the {a} and the {b} lately.",
    "Do you have any tips about {a}? The {b} part always confuses me.",
    "Yesterday the {a} was a mess, and then the {b} made it worse.",
    "Honestly, {a} is the best part of my week, especially with {b}.",
    "My friend keeps talking about {a} and {b}, should I care?",
    "What do you think about {a} compared to {b}?",
    "I finally sorted out the {a}, next up is the {b}.",
]
ASSISTANT_LINES = [
    "That sounds reasonable. With {a}, it helps to plan around the {b} first.",
    "Many people find {a} tricky. Try breaking the {b} into small steps.",
    "Good question! The {a} matters more than the {b} in most cases.",
    "I'd start with the {a}. The {b} can wait until next week.",
    "That's a common experience with {a}; the {b} usually gets easier with practice.",
]
ACKS = [
    "Got it, I'll keep that in mind.",
    "Thanks for telling me.",
    "Noted!",
    "Okay, good to know.",
]


@dataclass(frozen=True)
class Probe:
    """A planted fact and its question."""

    question: str
    evidence: str
    position: str  # "early", "middle" or "late"
    kind: int


@dataclass(frozen=True)
class Conversation:
    """Sessions of messages, and the probes to ask at the end."""

    sessions: list[list[Message]]
    probes: list[Probe]

    @property
    def messages(self) -> list[Message]:
        """All messages, in order."""
        return [m for s in self.sessions for m in s]


def _slots(rng: random.Random) -> dict[str, str]:
    return {
        "name": rng.choice(NAMES),
        "city": rng.choice(CITIES),
        "dessert": rng.choice(DESSERTS),
        "allergen": rng.choice(ALLERGENS),
        "instrument": rng.choice(INSTRUMENTS),
        "weekday": rng.choice(WEEKDAYS),
        "hour": str(rng.randint(8, 17)),
        "code": str(rng.randint(1000, 9999)),
        "gate": f"{rng.choice('ABCDE')}{rng.randint(2, 40)}",
        "level": str(rng.randint(2, 9)),
        "password": f"{rng.choice(['maple', 'otter', 'comet', 'basil'])}{rng.randint(10, 99)}",
    }


def _filler(rng: random.Random, role: str) -> str:
    words = TOPICS[rng.choice(list(TOPICS))]
    a, b = rng.sample(words, 2)
    lines = USER_LINES if role == "user" else ASSISTANT_LINES
    text = rng.choice(lines).format(a=a, b=b)
    if rng.random() < 0.3:  # a second sentence, sometimes on another topic
        words = TOPICS[rng.choice(list(TOPICS))]
        a, b = rng.sample(words, 2)
        text += " " + rng.choice(lines).format(a=a, b=b)
    return text


def make_conversation(
    seed: int, *, sessions: int = 6, turns: int = 25, distractors: int = 0
) -> Conversation:
    """Build a conversation of `sessions x turns` user/assistant exchanges with 12 facts.

    Facts are spread over early (first 20%), middle (40-60%) and late (last 20%) positions,
    four each, and some are tucked into a longer message between filler sentences. With
    `distractors`, each fact also gets that many user messages anywhere in the conversation
    that share its question's words but not its answer (e.g. "My cousin grew up on a farm"
    against "Where did I grow up?").
    """
    rng = random.Random(seed)
    total = sessions * turns
    kinds = list(range(len(FACTS)))
    rng.shuffle(kinds)
    spots: dict[int, tuple[int, str]] = {}
    bands = {"early": (0.02, 0.2), "middle": (0.4, 0.6), "late": (0.8, 0.95)}
    for j, kind in enumerate(kinds):
        band = ("early", "middle", "late")[j % 3]
        lo, hi = bands[band]
        turn = rng.randint(int(lo * total), int(hi * total))
        while turn in spots:
            turn += 1
        spots[turn] = (kind, band)
    decoys: dict[int, int] = {}
    placer = random.Random(seed * 7919 + 1)
    free = [t for t in range(total) if t not in spots]
    for kind in range(len(FACTS)):
        for turn in placer.sample(free, distractors):
            free.remove(turn)
            decoys[turn] = kind
    out_sessions: list[list[Message]] = []
    probes: list[Probe] = []
    for s in range(sessions):
        messages: list[Message] = []
        for t in range(turns):
            turn = s * turns + t
            if turn in spots:
                kind, band = spots[turn]
                template, question = FACTS[kind]
                fact = template.format(**_slots(rng))
                text = fact
                if rng.random() < 0.5:
                    text = _filler(rng, "user") + " " + fact
                messages += [Message("user", text), Message("assistant", rng.choice(ACKS))]
                probes.append(Probe(question, fact, band, kind))
            elif turn in decoys:
                decoy = DISTRACTORS[decoys[turn]]
                if rng.random() < 0.5:
                    decoy = _filler(rng, "user") + " " + decoy
                messages += [
                    Message("user", decoy),
                    Message("assistant", _filler(rng, "assistant")),
                ]
            else:
                messages += [
                    Message("user", _filler(rng, "user")),
                    Message("assistant", _filler(rng, "assistant")),
                ]
        out_sessions.append(messages)
    return Conversation(out_sessions, probes)
