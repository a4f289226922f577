"""A small English sentence generator (our own word lists and templates) for synthetic training speech.

Why a grammar and not random words: the CTC model learns spelling from the text, and a little sentence
structure makes the synthetic speech prosody (espeak-ng phrasing) closer to real read speech.
Everything is deterministic given the ``random.Random`` passed in.
"""
from __future__ import annotations

import random
import re

NAMES = """anna ben carla david emma frank grace henry isabel jack kate leo maria nick olivia peter rachel sam
tina victor walter zoe alice bob charles diana edward fiona george helen ian julia kevin laura martin nora
oscar paula quentin rose simon thomas ursula vincent wendy xavier yvonne arthur betty clara daniel ellen felix
harold irene james lucy""".split()

PEOPLE = """teacher doctor farmer driver baker sailor student neighbor captain soldier painter writer singer
nurse lawyer child boy girl woman man friend brother sister mother father uncle aunt cousin king queen
prince princess stranger guard pilot miner hunter fisherman merchant servant gardener professor judge
engineer clerk officer traveler visitor poet actor dancer player builder carpenter""".split()

THINGS = """book table chair door window letter box bag coat hat shoe glove ring key lamp clock bottle cup
plate knife spoon fork bowl basket bucket rope ladder wheel hammer nail brush pencil paper map picture
photograph newspaper magazine ticket coin stone rock shell feather leaf branch flower seed apple orange
lemon potato carrot onion bread cheese butter cake pie soup milk coffee tea water juice egg sugar salt
pepper rice meat fish chicken horse dog cat bird cow sheep goat pig mouse rabbit fox wolf bear deer duck
goose owl frog snake bee butterfly blanket pillow candle mirror piano guitar violin drum bell whistle
radio camera computer telephone engine train truck car bicycle boat ship wagon carriage sword shield
arrow bow crown jewel treasure chest umbrella wallet purse notebook envelope parcel gift toy ball kite
puzzle game song story poem message answer question secret promise plan idea dream problem reason
mistake lesson chance choice habit memory journey adventure accident holiday birthday wedding dinner
breakfast lunch supper meal party meeting letter record report list note sign signal voice noise sound
silence light shadow fire smoke cloud storm rain snow wind thunder lightning sunshine moon star sky""".split()

PLACES = """house garden kitchen bedroom cellar attic library school church market village city town farm
field forest river lake mountain valley hill island beach harbor station airport hospital museum castle
tower bridge road street corner park office factory shop bakery hotel restaurant theater prison palace
desert jungle cave meadow orchard barn stable yard hall courtroom classroom laboratory garage cottage""".split()

ADJECTIVES = """big small little large tiny huge old new young ancient modern good bad great fine poor rich
happy sad angry calm quiet loud busy lazy brave afraid proud kind cruel gentle wild tame clever foolish
wise strange famous simple plain pretty ugly beautiful lovely nice dark bright pale heavy light warm cold
hot cool wet dry clean dirty empty full sharp soft hard smooth rough sweet bitter sour fresh early late
quick slow tall short long wide narrow deep thin thick strong weak broken hidden golden silver wooden
green blue red yellow white black brown gray purple pink orange careful careless honest polite rude tired
hungry thirsty lonely lucky curious nervous patient serious silly funny gloomy cheerful certain secret
public private noisy peaceful dangerous safe useful useless important common rare special ordinary
perfect terrible wonderful""".split()

ADVERBS = """quickly slowly quietly loudly carefully happily sadly suddenly finally early late often always
never sometimes rarely gently softly clearly easily gladly nearly really almost already again together
alone outside inside upstairs downstairs abroad everywhere nowhere somewhere soon today tomorrow yesterday
tonight twice once""".split()

# (base, past) ; third person and -ing forms are derived by rule.
VERBS = [tuple(p.split("/")) if "/" in p else (p, "") for p in """ask/asked bring/brought build/built buy/bought
call/called carry/carried catch/caught change/changed clean/cleaned close/closed count/counted cover/covered
cut/cut draw/drew drop/dropped eat/ate fill/filled find/found fix/fixed follow/followed forget/forgot
get/got give/gave hide/hid hold/held hear/heard help/helped keep/kept kick/kicked know/knew lift/lifted
like/liked love/loved make/made mark/marked meet/met miss/missed move/moved need/needed open/opened
paint/painted pass/passed pay/paid pick/picked place/placed play/played pull/pulled push/pushed put/put
read/read remember/remembered sell/sold send/sent show/showed steal/stole take/took teach/taught tell/told
throw/threw touch/touched try/tried turn/turned use/used visit/visited want/wanted wash/washed watch/watched
wear/wore win/won write/wrote lose/lost borrow/borrowed carve/carved chase/chased check/checked collect/collected
deliver/delivered describe/described enjoy/enjoyed explain/explained guard/guarded join/joined leave/left
mend/mended order/ordered pack/packed polish/polished prepare/prepared protect/protected reach/reached
repair/repaired return/returned save/saved search/searched study/studied test/tested thank/thanked
trust/trusted warn/warned weigh/weighed wrap/wrapped""".split()]

INTRANSITIVE = [tuple(p.split("/")) for p in """arrive/arrived laugh/laughed cry/cried sleep/slept run/ran
walk/walked swim/swam sing/sang dance/danced wait/waited smile/smiled shout/shouted whisper/whispered
listen/listened work/worked rest/rested travel/traveled fall/fell sit/sat stand/stood speak/spoke
return/returned disappear/disappeared agree/agreed hurry/hurried breathe/breathed climb/climbed
jump/jumped fly/flew rise/rose begin/began finish/finished stay/stayed grow/grew shine/shone
wake/woke pray/prayed complain/complained knock/knocked""".split()]

NUMBERS = """two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty
hundred""".split()
TIMES = """in the morning|at night|after dinner|before noon|on monday|on tuesday|on wednesday|on thursday|
on friday|on saturday|on sunday|in january|in february|in march|in april|in may|in june|in july|
in august|in september|in october|in november|in december|last week|next year|every day|at dawn|
at midnight|in the evening|after school|during the storm|before the war|at half past seven""".replace(
    "\n", "").split("|")
PREPS = "in on under behind near beside above below inside across through toward into from".split()
PRONOUNS = [("i", "me", "my"), ("you", "you", "your"), ("he", "him", "his"), ("she", "her", "her"),
            ("we", "us", "our"), ("they", "them", "their")]
DETS = ["the", "a", "this", "that", "my", "your", "his", "her", "our", "their", "every", "one"]
PLURAL_DETS = ["the", "these", "those", "some", "many", "few", "all the", "our", "their"]
SAY = ["said", "thought", "knew", "heard", "believed", "told us", "explained", "wrote", "promised"]
CONTRACTIONS = ["i'm", "it's", "don't", "can't", "won't", "didn't", "isn't", "wasn't", "that's",
                "there's", "we're", "they're", "you'll", "she's", "he's", "let's", "couldn't"]
IRREGULAR_PLURAL = {"child": "children", "man": "men", "woman": "women", "mouse": "mice", "goose": "geese",
                    "sheep": "sheep", "deer": "deer", "fish": "fish", "fisherman": "fishermen",
                    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "shelf": "shelves"}


def plural(n: str) -> str:
    if n in IRREGULAR_PLURAL:
        return IRREGULAR_PLURAL[n]
    if re.search(r"(s|x|z|ch|sh)$", n):
        return n + "es"
    if re.search(r"[^aeiou]y$", n):
        return n[:-1] + "ies"
    return n + "s"


def third(v: str) -> str:
    if v in ("have",):
        return "has"
    if re.search(r"(s|x|z|ch|sh|o)$", v):
        return v + "es"
    if re.search(r"[^aeiou]y$", v):
        return v[:-1] + "ies"
    return v + "s"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class Grammar:
    """Random sentence templates over the word lists above."""

    def __init__(self, rng: random.Random):
        self.r = rng

    def c(self, seq):
        return self.r.choice(seq)

    def noun(self) -> str:
        return self.c(THINGS) if self.r.random() < 0.7 else self.c(PEOPLE)

    def np(self, subject: bool = False) -> str:
        r = self.r.random()
        if r < 0.15:
            return self.c(NAMES)
        if r < 0.25:
            return self.c(PRONOUNS)[0 if subject else 1]
        n = self.noun()
        if r < 0.40:
            return f"{self.c(PLURAL_DETS)} {self.adj_opt()}{plural(n)}"
        if r < 0.48:
            return f"{self.c(NUMBERS)} {self.adj_opt()}{plural(n)}"
        d = self.c(DETS)
        a = self.adj_opt()
        if d == "a":
            d = article((a or n))
        return f"{d} {a}{n}"

    def adj_opt(self) -> str:
        return (self.c(ADJECTIVES) + " ") if self.r.random() < 0.45 else ""

    def place(self) -> str:
        return f"{self.c(PREPS)} the {self.adj_opt()}{self.c(PLACES)}"

    def vp_past(self) -> str:
        if self.r.random() < 0.7:
            base, past = self.c(VERBS)
            return f"{past} {self.np()}"
        return self.c(INTRANSITIVE)[1]

    def clause(self) -> str:
        s = self.np(subject=True)
        t = self.r.random()
        if t < 0.45:
            vp = self.vp_past()
        elif t < 0.6:
            base, _ = self.c(VERBS)
            vp = f"{self.c(['will', 'can', 'must', 'should', 'might', 'could', 'would'])} {base} {self.np()}"
        elif t < 0.75:
            base, _ = self.c(VERBS)
            vp = f"{self.c(['wanted to', 'tried to', 'forgot to', 'had to', 'decided to', 'began to'])} {base} {self.np()}"
        elif t < 0.88:
            vp = f"{self.c(['was', 'seemed', 'looked', 'felt', 'became'])} {self.c(ADVERBS[:6]) + ' ' if self.r.random() < 0.2 else ''}{self.c(ADJECTIVES)}"
        else:
            base, _ = self.c(INTRANSITIVE)
            subj_third = not s.startswith(("i ", "you", "we", "they")) and s not in ("i", "you", "we", "they")
            vp = third(base) if subj_third and not re.match(r"^(the|these|those|some|many|few|all|our|their|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|hundred) .*s$", s) else base
        tail = ""
        u = self.r.random()
        if u < 0.3:
            tail = " " + self.place()
        elif u < 0.45:
            tail = " " + self.c(TIMES)
        elif u < 0.55:
            tail = " " + self.c(ADVERBS)
        return f"{s} {vp}{tail}"

    def sentence(self) -> str:
        t = self.r.random()
        if t < 0.45:
            out = self.clause()
        elif t < 0.6:
            out = f"{self.clause()} {self.c(['and', 'but', 'because', 'so', 'while', 'when', 'although'])} {self.clause()}"
        elif t < 0.7:
            out = f"{self.c(NAMES)} {self.c(SAY)} that {self.clause()}"
        elif t < 0.78:
            out = f"{self.c(CONTRACTIONS)} {self.clause()}"
        elif t < 0.86:
            w = self.c(["where", "why", "when", "how"])
            out = f"{w} did {self.np(subject=True)} {self.c(VERBS)[0]} {self.np()}"
        elif t < 0.93:
            out = f"there {self.c(['was', 'is'])} {article(x := self.c(ADJECTIVES))} {x} {self.noun()} {self.place()}"
        else:
            out = f"{self.c(TIMES)} {self.clause()}"
        return re.sub(r"\s+", " ", out).strip()


def vocabulary() -> set[str]:
    """All words the grammar can emit (for reporting / optional lexicon snapping)."""
    words: set[str] = set()
    for lst in (NAMES, PEOPLE, THINGS, PLACES, ADJECTIVES, ADVERBS, NUMBERS, PREPS, DETS, SAY, CONTRACTIONS):
        for item in lst:
            words.update(item.split())
    for base, past in VERBS + INTRANSITIVE:
        words.update([base, past, third(base)])
    for n in THINGS + PEOPLE:
        words.add(plural(n))
    for t in TIMES:
        words.update(t.split())
    for p in PRONOUNS:
        words.update(p)
    words.update(PLURAL_DETS[4].split() + "an was is seemed looked felt became will can must should might could would "
                 "wanted tried forgot had decided began to and but because so while when although that where why "
                 "how did there".split())
    return words


def emitted_words() -> set[str]:
    """Every word `Grammar.sentence` can produce. (`vocabulary()` above omits a few determiners; it is kept
    unchanged because the synthesized KWS _unknown_ word split depends on it.)"""
    return vocabulary() | {w for d in PLURAL_DETS for w in d.split()}
