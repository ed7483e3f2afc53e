"""Units after a number that leave its value alone: `12 \\text{ cm}`, `160 square feet`, `18 eggs`.

Only words on a fixed list are stripped. A word that is not on it stays part of the answer, so a
tail that changes the value (`5 hundred`, `3 squared`, `2 i`, `5 pi`, `3 x`) or hedges it
(`5 \\text{ or more}`, `5 \\text{ is not right}`) can never be read as the bare number. Single
letters are never units here (`m`, `s`, `g` are as often variables as metres, seconds and
grams), nor are `i`, `e` or `pi`, which are numbers; `m/s` and `km/h` are units as a whole.
"""

from __future__ import annotations

import re

# Measures and currencies, singular and plural (a trailing "s" or "es" is also accepted).
_MEASURES = """
    mm cm dm km metre meter kilometre kilometer centimetre centimeter millimetre millimeter
    micrometer micron nanometer nm pm um angstrom inch inches foot feet ft yard yd mile mi
    acre hectare sqft liter litre ml milliliter millilitre gallon gal quart pint cup tablespoon
    teaspoon tbsp tsp ounce oz pound lb lbs kg kilogram gram mg milligram ton tonne
    second sec secs minute min mins hour hr hrs day week month year yr yrs decade century
    centuries millisecond ms microsecond nanosecond
    dollar cent euro rupee yen pence penny pennies
    degree deg radian rad arcsec arcsecond arcmin arcminute
    mph kmh kph mps fps rpm
    unit point percentile
    calorie kcal cal joule kj watt kw kwh volt ampere amp ohm kelvin celsius fahrenheit
    ev kev mev gev hz khz mhz ghz erg pc parsec kpc mpc au lyr gyr myr amu mol mole atm pa kpa
    photon atom molecule magnitude bit byte kb mb gb tb
"""
# Things counted in word problems (GSM8K answers such as "91 trees", "480 people").
_COUNTED = """
    people person student child children kid boy girl man men woman women adult baby friend
    customer guest employee worker member parent player teacher passenger visitor
    apple orange banana lemon strawberry berry berries tomato potato vegetable fruit
    egg cookie cupcake cake pie pizza slice piece muffin brownie donut doughnut pancake candy
    candies chocolate sandwich meal serving bar bottle can jar box boxes bag pack case crate
    container basket plate glass cup
    book page notebook pencil pen crayon sticker stamp card letter word question song movie
    episode game ticket vote goal lap trip step round photo picture painting gift toy doll ball
    balloon bead button marble coin nickel dime bill shell seashell stone brick block
    tree flower rose plant seed leaf leaves animal dog cat bird fish chicken duck cow goat sheep
    pig horse frog turtle insect ant bug pet
    car bike bicycle truck bus wheel tire seat chair table room floor house building shirt sock
    shoe item object
"""
_UNITS = frozenset(_MEASURES.split() + _COUNTED.split())
# Compound units that are one token after the spaces are removed.
_COMPOUNDS = frozenset({"m/s", "km/s", "km/h", "m/s^2", "cm^2", "cm^3", "m^2", "m^3", "ft^2"})
# Words that only qualify a unit: "square feet", "sq units", "cubic meters", "miles per hour".
_MODIFIERS = frozenset({"square", "sq", "cubic", "cu"})
_POWERS = frozenset({"squared", "cubed"})
_PER = frozenset({"per", "/"})
# A single letter is a unit only after "/" or "per", as in "km/s"; alone ("5 m") it stays.
_DENOMINATORS = frozenset({"s", "h", "m", "g", "l"})

_WRAPPERS = r"\\(?:text|textrm|textit|textbf|mathrm|mathit|mbox|rm|operatorname)"
# One token at the end of an answer: a wrapped phrase, a bare word, "/", `\cdot`, an exponent,
# or spacing. Used right to left, so that "2x cm" yields "cm" and stops at "x".
_TAIL_TOKEN_RE = re.compile(
    r"(?:" + _WRAPPERS + r"\s*\{([^{}]*)\}"  # group 1: a wrapped phrase
    r"|\{\s*([A-Za-z/ ~.]*)\}"  # group 2: a braced bare word, as in "{cm}^{-1}"
    r"|([A-Za-z]+\.?|/|\\cdot)"  # group 3: a word, "/" or \cdot
    r"|(\^\s*\{?\s*-?\d\s*\}?)"  # group 4: an exponent
    r"|(?:\s|~|\\[ ,;:!])+"  # spacing
    r")$"
)
_WORD_RE = re.compile(r"[A-Za-z]+|/")
_OPERATORS = ("+", "-", "=", "/", "^", "_", "\\cdot", "\\times", "{", "(", ",")


def _is_unit_word(word: str) -> bool:
    word = word.lower().rstrip(".")
    if word in _UNITS:
        return True
    return any(word.endswith(end) and word[: -len(end)] in _UNITS for end in ("es", "s"))


def _loose(word: str) -> bool:
    """Whether a word may appear in a unit phrase at all."""
    lowered = word.lower().rstrip(".")
    return (
        lowered in _PER
        or lowered in _MODIFIERS
        or lowered in _POWERS
        or lowered in _DENOMINATORS
        or lowered in _COMPOUNDS
        or _is_unit_word(lowered)
    )


def _is_unit_phrase(words: list[str]) -> bool:
    """Whether the words of a tail, left to right, are a unit: at least one unit word, every
    word a unit, a modifier, "per" or a power, and no dangling "per" or modifier."""
    if "".join(words).lower() in _COMPOUNDS:
        return True
    if not words or words[0] in _PER:
        return False
    saw_unit = False
    previous = ""
    for word in words:
        lowered = word.lower().rstrip(".")
        if lowered in _PER:
            if not saw_unit:
                return False  # "5 /s" is 5/s, a different value
        elif lowered in _MODIFIERS:
            pass
        elif lowered in _POWERS:
            if not _is_unit_word(previous):
                return False  # "3 squared" is 9
        elif _is_unit_word(lowered) or lowered in _COMPOUNDS:
            saw_unit = True
        elif not (previous in _PER and lowered in _DENOMINATORS):
            return False
        previous = lowered
    return saw_unit and previous not in _PER | _MODIFIERS


def _tail_tokens(answer: str) -> list[tuple[int, list[str]]]:
    """(start index, words) of the tokens at the end of `answer` that may belong to a unit,
    left to right; spacing and exponents are kept as tokens without words."""
    tokens = []
    end = len(answer)
    while end > 0:
        match = _TAIL_TOKEN_RE.search(answer, max(0, end - 200), end)
        if match is None:
            break
        phrase = match.group(1) if match.group(1) is not None else match.group(2)
        if phrase is not None:
            compact = "".join(phrase.replace("~", " ").split()).lower()
            words = [compact] if compact in _COMPOUNDS else _WORD_RE.findall(phrase)
        elif match.group(3) is not None:
            words = ["/" if match.group(3) == "\\cdot" else match.group(3)]
        else:
            words = []  # an exponent or spacing
        if not all(_loose(word) for word in words):
            break
        tokens.append((match.start(), words))
        end = match.start()
    return tokens[::-1]


def strip_unit(answer: str) -> str:
    """`answer` without a trailing unit phrase (see the module docstring), or unchanged.

    The phrase is the whole run of unit-like words at the end ("5 per hour" keeps its "per",
    so it is left as written). What remains must be non-empty and not end in an operator, so
    `\\text{cm}` alone and `5 \\times \\text{ cm}` are kept. Linear in the answer's length.
    """
    tokens = [(start, words) for start, words in _tail_tokens(answer) if words]
    if not tokens or not _is_unit_phrase([word for _, words in tokens for word in words]):
        return answer
    value = answer[: tokens[0][0]].rstrip()
    return value if value and not value.endswith(_OPERATORS) else answer
