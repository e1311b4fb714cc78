"""Reviewed keyword vocabulary: words in file and folder names -> ``sound_event`` and ``sound_category`` labels.

Game and toy packages name their recordings ("BarkGrowl.ogg", "default_gravel_footstep.2.ogg", "breakglass03.ogg").
A name is cut into lower-case tokens (camelCase, separators and digits split it), and the tokens are looked up in
``TERMS``: a table written by hand after reading every file name of the §1b packages.  Matching is on whole tokens
and whole token sequences, never on substrings, so "barb1" is not a bark and "catapult" is not a cat.  A name whose
tokens hit no entry gets no label; the caller skips that clip.

Footsteps are the one combinatorial case: a footstep word ("footstep", "step") plus a surface word gives
"footsteps on gravel"; a footstep folder plus a surface file name ("footsteps/gravel1.ogg") gives the same.

Categories are the coarse groups of the label vocabulary: animal, water, weather, vehicle, footsteps, impact,
fire, human, household, mechanical, weapon, alarm, tool.  "alarm" also holds other signals people attend to
(bells, whistles, horns, sirens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["EVENTS", "TERMS", "SURFACES", "SKIP_WORDS", "EVENT_MERGES", "SoundLabel", "tokens", "lookup",
           "event_label", "canonical_event", "near_duplicate_key", "is_event", "FOOTSTEP_EVENTS"]

CATEGORIES = (
    "animal", "water", "weather", "vehicle", "footsteps", "impact", "fire", "human", "household", "mechanical",
    "weapon", "alarm", "tool",
)

# Every sound_event the vocabulary can produce, with its sound_category.  Names follow AudioSet where it has one.
EVENTS: dict[str, str] = {
    # animals
    "dog bark": "animal", "growl": "animal", "wolf howl": "animal", "cat meow": "animal", "cow moo": "animal",
    "sheep bleat": "animal", "goat bleat": "animal", "pig oink": "animal", "horse neigh": "animal",
    "horse galloping": "animal", "donkey bray": "animal", "chicken clucking": "animal", "rooster crow": "animal",
    "turkey gobble": "animal", "duck quack": "animal", "goose honk": "animal", "owl hoot": "animal",
    "crow caw": "animal", "cuckoo call": "animal", "seagull": "animal", "bird call": "animal",
    "birds chirping": "animal",
    "hawk screech": "animal", "frogs croaking": "animal", "bee buzz": "animal", "mosquito buzz": "animal",
    "crickets": "animal", "lion roar": "animal", "tiger roar": "animal", "elephant trumpet": "animal",
    "monkey": "animal", "gorilla": "animal", "dolphin": "animal", "whale song": "animal", "sea lion bark": "animal",
    "bear growl": "animal", "fox bark": "animal", "hyena laugh": "animal", "mouse squeak": "animal",
    "camel grunt": "animal", "deer call": "animal", "bat squeak": "animal", "snake hiss": "animal",
    "penguin call": "animal", "peacock call": "animal", "coyote howl": "animal",
    # people (non-speech)
    "cough": "human", "sneeze": "human", "laughter": "human", "screaming": "human", "baby crying": "human",
    "crying": "human", "snoring": "human", "kiss": "human", "slap": "human", "burping": "human", "vomiting": "human",
    "slurp": "human", "finger snapping": "human", "applause": "human", "clapping": "human", "crowd cheering": "human",
    "crowd noise": "human", "booing": "human", "grunting in pain": "human", "man grunting in pain": "human",
    "woman grunting in pain": "human", "man screaming": "human", "woman screaming": "human",
    "heartbeat": "human", "breathing": "human", "whistling": "human", "marching": "footsteps",
    # water and weather
    "water": "water", "running water": "water", "water drip": "water", "water splash": "water", "bubbling": "water",
    "ocean waves": "water", "waterfall": "water", "fountain": "water", "toilet flush": "water",
    "rain": "weather", "thunder": "weather", "wind": "weather",
    # fire and explosions
    "fire crackling": "fire", "fireworks": "fire", "explosion": "impact",
    # weapons
    "gunshot": "weapon", "machine gun": "weapon", "cannon fire": "weapon", "sword clash": "weapon",
    "bow and arrow": "weapon", "knife": "weapon", "gun reload": "weapon", "rocket launch": "weapon",
    "whoosh": "weapon", "flamethrower": "weapon", "falling bomb": "weapon", "whip crack": "impact",
    "bullet impact": "impact", "spear thrust": "weapon", "sling shot": "weapon",
    # impacts and breaking
    "glass breaking": "impact", "wood breaking": "impact", "metal crash": "impact", "crash": "impact",
    "thud": "impact", "wood impact": "impact", "rock impact": "impact", "metal clank": "impact", "smash": "impact",
    "glass clink": "impact", "arrow impact": "impact", "tree falling": "impact",
    # doors
    "door opening": "household", "door closing": "household", "door creak": "household", "door": "household",
    "doorbell": "alarm",
    # household and objects
    "vacuum cleaner": "household", "washing machine": "household", "kettle": "household",
    "squeaky toy": "household", "clock ticking": "household", "typing on keyboard": "household",
    "typewriter": "household", "zipper": "household", "sewing machine": "household", "camera shutter": "mechanical",
    "scissors": "household", "coins jingling": "household", "dice rolling": "household", "paper tearing": "household",
    "paper rustling": "household", "pop": "household", "drinking": "human", "rustling leaves": "household",
    # tools and work
    "hammering": "tool", "anvil": "tool", "sawing": "tool", "wood chopping": "tool", "digging": "tool",
    "pickaxe": "tool", "ratchet": "tool",
    # vehicles
    "car passing": "vehicle", "car horn": "vehicle", "motorcycle": "vehicle", "engine": "vehicle",
    "helicopter": "vehicle", "airplane": "vehicle", "jet aircraft": "vehicle", "train": "vehicle",
    "tractor": "vehicle", "tire skid": "vehicle", "bicycle": "vehicle", "traffic": "vehicle",
    # signals
    "siren": "alarm", "alarm": "alarm", "bell": "alarm", "whistle": "alarm", "morse code": "alarm",
    "sonar ping": "alarm", "telephone ringing": "alarm",
    # machines
    "machinery": "mechanical", "factory noise": "mechanical", "steam hiss": "mechanical",
    "electric sparks": "mechanical",
    "electrical hum": "mechanical", "static noise": "mechanical", "pump": "mechanical",
    "ventilation fan": "mechanical", "creaking": "mechanical", "rattle": "mechanical",
    # footsteps without a surface
    "footsteps": "footsteps",
}

# Near-duplicate labels, reviewed: another extractor's wording of an event above -> the event's name here.
# Applied wherever a record is made (``event_label`` here, ``recordings._make_record``), so one sound is one class
# across the whole corpus.  Only wordings of the same sound are merged; a more specific class is not merged into a
# general one ("man screaming" stays apart from "screaming", "fire whoosh" from "whoosh").
EVENT_MERGES: dict[str, str] = {
    "grunt of pain": "grunting in pain",   # wesnoth
    "death scream": "screaming",           # wesnoth: the "-die-" cries of people
    "chicken cluck": "chicken clucking",   # gcompris
    "horse gallop": "horse galloping",     # wesnoth
    "finger snap": "finger snapping",      # sonic-pi, lmms, hydrogen
    "frog croak": "frogs croaking",        # gcompris
    "burp": "burping",                     # sonic-pi
    "coins": "coins jingling",             # wesnoth, gcompris
    "splash": "water splash",              # wesnoth
}


def canonical_event(event: str) -> str:
    """The vocabulary's name for ``event`` (``EVENT_MERGES``); other names pass unchanged."""
    return EVENT_MERGES.get(event, event)


_STOP = {"of", "in", "on", "a", "an", "the", "with", "being", "by"}


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2]:  # "snapp" (snapping) -> "snap"
        word = word[:-1]
    return word


def near_duplicate_key(event: str) -> tuple[str, ...]:
    """Words of a label without inflection and small words: "grunt of pain" and "grunting in pain" share a key.

    Two labels of the vocabulary with the same key are wordings of one sound; the tests check there are none.
    """
    return tuple(sorted({_stem(t) for t in tokens(event) if t not in _STOP}))


# Surface word -> the words used in "footsteps on <surface>".
SURFACES: dict[str, str] = {
    "carpet": "carpet", "dirt": "dirt", "mud": "dirt", "grass": "grass", "gravel": "gravel", "metal": "metal",
    "sand": "sand", "snow": "snow", "stone": "stone", "concrete": "concrete", "hard": "stone", "tile": "tile",
    "linoleum": "tile", "wood": "wood", "ice": "ice", "glass": "glass",
}
WATER_SURFACES = {"water", "splash"}  # -> "footsteps in water"
FOOTSTEP_WORDS = {"footstep", "footsteps", "step", "steps"}  # not "walk": units and vehicles "walk" too
# The footsteps classes the surfaces make (category "footsteps"): what a reviewed table may name too.
FOOTSTEP_EVENTS = {f"footsteps on {s}" for s in SURFACES.values()} | {"footsteps in water"}

# Token sequence (space-joined) -> sound_event.  Compounds that games write as one word ("breakglass",
# "catmeow") are listed as they are written.  Reviewed against every name in the packages of data-sources §1b.
TERMS: dict[str, str | None] = {
    # dogs, wolves, cats
    "dog": "dog bark", "dogs": "dog bark", "bark": "dog bark", "barks": "dog bark", "barking": "dog bark",
    "growl": "growl", "snarl": "growl",
    "wolf": "wolf howl", "howl": "wolf howl", "wolfhowl": "wolf howl",
    "cat": "cat meow", "meow": "cat meow", "catmeow": "cat meow", "kitten": "cat meow", "blackcat": "cat meow",
    # farm animals
    "cow": "cow moo", "cows": "cow moo", "moo": "cow moo", "calf": "cow moo", "bull": "cow moo",
    "bison": "cow moo", "yak": "cow moo",
    "sheep": "sheep bleat", "lamb": "sheep bleat", "ram": "sheep bleat", "goat": "goat bleat",
    "mountaingoat": "goat bleat",
    "pig": "pig oink", "pigs": "pig oink", "sow": "pig oink", "oink": "pig oink",
    "horse": "horse neigh", "pony": "horse neigh", "foal": "horse neigh", "neigh": "horse neigh",
    "horsegallop": "horse galloping", "gallop": "horse galloping", "galloping": "horse galloping",
    "horses galloping": "horse galloping", "horse gallop": "horse galloping",
    "donkey": "donkey bray",
    # birds
    "chicken": "chicken clucking", "hen": "chicken clucking", "rooster": "rooster crow", "turkey": "turkey gobble",
    "duck": "duck quack", "drake": "duck quack", "quack": "duck quack", "goose": "goose honk",
    "gander": "goose honk", "owl": "owl hoot", "eagle owl": "owl hoot", "crow": "crow caw", "cuckoo": "cuckoo call",
    "gull": "seagull", "seagull": "seagull",
    "bird": "birds chirping", "birds": "birds chirping", "birdchirp": "birds chirping",
    "blackbird": "birds chirping", "lark": "birds chirping", "sparrow": "birds chirping", "chirp": "birds chirping",
    "pheasant": "bird call",
    "quail": "bird call", "heron": "bird call", "stork": "bird call", "vulture": "bird call",
    "guinea fowl": "bird call", "wood grouse": "bird call", "pelican": "bird call", "flamingo": "bird call",
    "albatross": "bird call", "emu": "bird call",
    "hawk": "hawk screech", "penguin": "penguin call",
    # small animals and insects
    "frog": "frogs croaking", "frogs": "frogs croaking",
    "bee": "bee buzz", "bees": "bee buzz", "beesting": "bee buzz", "hornet": "bee buzz", "wasp": "bee buzz",
    "mosquito": "mosquito buzz",
    "cricket": "crickets", "crickets": "crickets", "grasshopper": "crickets",
    # wild animals
    "lion": "lion roar", "tiger": "tiger roar", "elephant": "elephant trumpet",
    "monkey": "monkey", "chimp": "monkey", "chimpanzee": "monkey", "gorilla": "gorilla",
    "dolphin": "dolphin", "whale": "whale song", "orca": "whale song",
    "sea lion": "sea lion bark", "sealion": "sea lion bark", "bear": "bear growl", "fox": "fox bark",
    "hyena": "hyena laugh", "mouse": "mouse squeak", "camel": "camel grunt", "dromedary": "camel grunt",
    "deer": "deer call", "doe": "deer call", "caribou": "deer call", "moose": "deer call",
    "bat": "bat squeak", "bats": "bat squeak", "snake": "snake hiss", "python": "snake hiss",
    "aesculapian snake": "snake hiss",
    # people
    "cough": "cough", "sneeze": "sneeze",
    "laugh": "laughter", "laughs": "laughter", "laughter": "laughter", "snicker": "laughter",
    "scream": "screaming", "screams": "screaming", "screaming": "screaming", "yell": "screaming",
    "babycry": "baby crying", "baby cry": "baby crying", "cry": "crying",
    "snore": "snoring", "kiss": "kiss", "slap": "slap", "belch": "burping", "burp": "burping", "puke": "vomiting",
    "slurp": "slurp", "fingersnap": "finger snapping", "finger snap": "finger snapping",
    "hand clap": "clapping", "party noise": "crowd noise",
    "applause": "applause", "handclap": "clapping", "clap": "clapping",
    "cheering": "crowd cheering", "cheeringloop": "crowd cheering", "people cheering": "crowd cheering",
    "partynoise": "crowd noise", "crowd": "crowd noise", "boou": "booing",
    "hurt": "grunting in pain", "pain": "grunting in pain", "ouch": "grunting in pain", "death": "screaming",
    "maledeath": "man screaming", "civmaledeath": "man screaming", "femaledeath": "woman screaming",
    "civfemdeath": "woman screaming", "civfemscream": "woman screaming", "malehurt": "man grunting in pain",
    "civmalehurt": "man grunting in pain", "femalehurt": "woman grunting in pain",
    "heartbeat": "heartbeat", "breath": "breathing", "breathing": "breathing", "drink": "drinking",
    "marching": "marching", "boots landing": "marching",
    # water
    "water": "water", "waterrunning": "running water", "water running": "running water",
    "waterdrop": "water drip", "drip": "water drip", "drip drop": "water drip", "water drop": "water drip",
    "splash": "water splash", "plunge": "water splash", "water impact": "water splash", "bubbles": "bubbling",
    "oceanwaves": "ocean waves", "waves": "ocean waves",
    "splash and waves": "ocean waves", "waterfall": "waterfall", "waterfontain": "fountain",
    "fountain": "fountain", "toilet": "toilet flush", "flush": "toilet flush",
    # weather
    "rain": "rain", "thunder": "thunder", "lightning": "thunder", "lightningbolt": "thunder", "wind": "wind",
    "arcticwind": "wind", "cavewind": "wind",
    # fire
    "fire": "fire crackling", "firesoft": "fire crackling", "smallfire": "fire crackling",
    "fire small": "fire crackling", "fire large": "fire crackling", "fireworks": "fireworks",
    # explosions and weapons
    "explosion": "explosion", "explosions": "explosion", "explode": "explosion", "exp": "explosion",
    "bombdrop": "falling bomb", "falling bomb": "falling bomb", "falling bombs": "falling bomb",
    "gunshot": "gunshot", "shotgun": "gunshot", "pistol": "gunshot", "rifle": "gunshot", "smg": "gunshot",
    "sniper": "gunshot", "bullet": "gunshot", "musket": "gunshot", "musket volley": "gunshot",
    "infantry being shot": "gunshot",
    "bullet chaingun": "machine gun", "bullet hmg": "machine gun",
    "machinegun": "machine gun", "machine gun": "machine gun", "chaingun": "machine gun", "hmg": "machine gun",
    "cannon": "cannon fire", "cannons": "cannon fire", "artillery": "cannon fire", "battleship volley": "cannon fire",
    "sword": "sword clash", "swords": "sword clash", "swordslice": "sword clash", "sword fighting": "sword clash",
    "swordstaff": "sword clash",
    "arrow": "bow and arrow", "bow": "bow and arrow",
    "knife": "knife", "whip": "whip crack",
    "reload": "gun reload", "rocket": "rocket launch", "rockets launched": "rocket launch",
    "whoosh": "whoosh", "swoosh": "whoosh", "highwhoosh": "whoosh", "lowwhoosh": "whoosh", "midwhoosh": "whoosh",
    "movewhoosh": "whoosh", "weaponswing": "whoosh", "weaponswinghigh": "whoosh", "flame whoosh": "whoosh",
    "weapon swing": "whoosh", "sword fly": "whoosh",
    "flamer": "flamethrower",
    # impacts
    "breakglass": "glass breaking", "break glass": "glass breaking", "breakwood": "wood breaking",
    "breakmetal": "metal crash", "crash": "crash", "thud": "thud", "heavyimpact": "thud",
    "crate hit": "wood impact", "woodhit": "wood impact", "stone hit": "rock impact", "clank": "metal clank",
    "metalhit": "metal clank", "smash": "smash", "clink": "glass clink",
    "heavy impact": "thud", "metal hit": "metal clank", "wood hit": "wood impact", "bullet impact": "bullet impact",
    "bullet bodyimpact": "bullet impact",
    # doors
    "door open": "door opening", "door close": "door closing", "doorclose": "door closing",
    "doorcreak": "door creak", "door creak": "door creak", "creak low": "door creak", "open close": "door",
    "fencegate open": "door opening", "fencegate close": "door closing",
    "door bell": "doorbell", "doorbell": "doorbell",
    # household and objects
    "vacuum cleaner": "vacuum cleaner", "washing machine": "washing machine", "kettle": "kettle",
    "rubberduck": "squeaky toy", "clock": "clock ticking", "watch": "clock ticking",
    "typing": "typing on keyboard", "keyboard": "typing on keyboard", "typewriter": "typewriter",
    "type writer": "typewriter", "zipper": "zipper", "sewingmachine": "sewing machine",
    "sewing machine": "sewing machine", "camera": "camera shutter", "scissors": "scissors", "coins": "coins jingling",
    "dice": "dice rolling", "paper being ripped": "paper tearing", "newspaper": "paper rustling", "pop": "pop",
    "bushrustle": "rustling leaves", "bush rustle": "rustling leaves",
    # tools
    "hammer": "hammering", "mallet": "hammering", "anvil": "anvil", "saw": "sawing", "sawing wood": "sawing",
    "ratchet": "ratchet", "dig": "digging", "dug": "digging",
    # vehicles
    "carpassing": "car passing", "car passing": "car passing", "carhorn": "car horn", "car horn": "car horn",
    "motorcyclepassing": "motorcycle", "motorcycle": "motorcycle", "engine": "engine", "motor engine": "engine",
    "diesel": "engine", "helicopter": "helicopter", "apache": "helicopter", "airplane": "airplane",
    "humanflyby": "jet aircraft",
    "cessna": "airplane", "flyby": "jet aircraft", "air flyby": "jet aircraft", "jet": "jet aircraft",
    "train": "train", "tractor": "tractor", "excavator": "engine",
    "skid": "tire skid", "snowskid": "tire skid", "brake": "tire skid", "bicycle": "bicycle",
    "citysounds": "traffic",
    # signals
    "siren": "siren", "firetruck": "siren", "fire truck": "siren", "policecar": "siren", "air raid alarm": "siren",
    "alarm": "alarm",
    "sub diving alarm": "alarm", "radiation alert": "alarm",
    "bell": "bell", "bells": "bell", "belltoll": "bell", "bell toll": "bell", "whistle": "whistle",
    "fischiocorto": "whistle", "fischiolungo": "whistle", "morse code": "morse code",
    "naval sonar ping": "sonar ping",
    # machines
    "machine": "machinery", "machinery": "machinery", "factoryloop": "factory noise",
    "industrial noise": "factory noise", "steam": "steam hiss", "sparks": "electric sparks", "hum": "electrical hum",
    "tv static": "static noise", "minepump": "pump", "ventilation": "ventilation fan", "creak": "creaking",
    "rattle": "rattle",
    # Known names whose shorter parts would mislead: no label.
    "wind turbine": None, "paper airplane": None, "rocking horse": None, "security camera": None,
    "fire extinguish": None, "fire flint": None, "lasercannon fire": None, "cavalry saber charge": None,
    "water rescue": None,
}

# Cries whose class names say who cries when the file name does ("Scream-female" -> "woman screaming").
GENDERED = {"screaming", "grunting in pain"}
GENDER_WORDS = {"male": "man", "man": "man", "female": "woman", "woman": "woman", "fem": "woman"}

# Words that make a name unusable whatever else it says: speech, music, musical instruments, interface sounds,
# and science-fiction or fantasy sources ("alien") whose sounds are invented.
SKIP_WORDS = {
    "music", "song", "anthem", "fanfare", "overture", "theme", "voice", "vocals", "speech", "desc", "intro",
    "menu", "beep", "click", "ack", "select", "sel", "taunt", "announcer", "jingle", "drum", "drums", "drumroll",
    "drumming", "cymbal", "cymbals", "alien", "laser", "plasma",
}


@dataclass(frozen=True)
class SoundLabel:
    event: str
    category: str

    def labels(self) -> dict[str, str]:
        return {"sound_event": self.event, "sound_category": self.category}


def is_event(event: str) -> bool:
    """True for a class of the vocabulary: an ``EVENTS`` entry or a footsteps-on-surface class."""
    return event in EVENTS or event in FOOTSTEP_EVENTS


def event_label(event: str) -> SoundLabel:
    event = canonical_event(event)
    if event in FOOTSTEP_EVENTS:
        return SoundLabel(event, "footsteps")
    return SoundLabel(event, EVENTS[event])


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def tokens(name: str) -> list[str]:
    """Lower-case word tokens of a file or folder name: camelCase, separators and digits split words."""
    name = _CAMEL.sub(" ", name)
    return [t for t in re.split(r"[^a-zA-Z]+", name.lower()) if t]


def _phrase_match(toks: list[str]) -> str | None:
    """Event of the leftmost, longest token sequence found in TERMS (None when that entry says "no label")."""
    for i in range(len(toks)):
        for n in (4, 3, 2, 1):
            phrase = " ".join(toks[i : i + n]) if i + n <= len(toks) else None
            if phrase in TERMS:
                return TERMS[phrase]
    return None


def _footsteps(toks: list[str], context: list[str]) -> str | None:
    in_name = bool(FOOTSTEP_WORDS & set(toks))
    in_folder = bool(FOOTSTEP_WORDS & set(context))
    if not (in_name or in_folder):
        return None
    for t in toks:
        if t in SURFACES:
            return f"footsteps on {SURFACES[t]}"
        if t in WATER_SURFACES:
            return "footsteps in water"
    # "footsteps/crouch.ogg" is not a footstep; "Footsteps-1.wav" is.
    return "footsteps" if in_name else None


def lookup(name: str, context: tuple[str, ...] | list[str] = ()) -> SoundLabel | None:
    """Label for a file called ``name`` (a stem or a description) inside folders ``context``; None if unknown.

    The name decides; folder names only supply the footsteps context.  Names with a speech, music or
    interface word (``SKIP_WORDS``) get None even if they also name a sound.
    """
    toks = tokens(name)
    ctx = [t for c in context for t in tokens(c)]
    if SKIP_WORDS & set(toks):
        return None
    event = _footsteps(toks, ctx) or _phrase_match(toks)
    if event is None:
        return None
    if event.startswith("footsteps "):
        return SoundLabel(event, "footsteps")
    if event in GENDERED:  # "Scream-female", "malehurt02" are gendered classes, as the other extractors name them
        gender = next((GENDER_WORDS[t] for t in toks if t in GENDER_WORDS), None)
        if gender:
            event = f"{gender} {event}"
    return event_label(event)
