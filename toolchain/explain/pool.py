"""The general description pool for TextSpan (``data/pool.txt``) and the keyword vocabulary for B2T
(``data/vocab.txt``).

Both files are generated from the word lists and templates below (written for this project) by ``generate_pool()`` /
``generate_vocab()``: plain enumeration, no randomness, so ``python -m toolchain.explain.pool`` always rewrites the
same files. Each description is one line; duplicates are dropped, first occurrence kept.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

from clip_debias.toolchain.errors import ClipDebiasError

DATA_DIR = Path(__file__).parent / "data"
POOL_FILE = DATA_DIR / "pool.txt"
VOCAB_FILE = DATA_DIR / "vocab.txt"

# ---- word lists -------------------------------------------------------------------------------------------------
OBJECTS = (
    "car", "bicycle", "motorcycle", "bus", "truck", "train", "boat", "sailboat", "canoe", "airplane", "helicopter",
    "chair", "table", "sofa", "bed", "lamp", "clock", "mirror", "window", "door", "staircase", "fence", "bench",
    "umbrella", "backpack", "suitcase", "handbag", "hat", "shoe", "glove", "scarf", "necklace", "ring", "watch",
    "cup", "bottle", "plate", "bowl", "spoon", "knife", "fork", "pot", "kettle", "basket", "box", "bag",
    "book", "newspaper", "laptop", "phone", "camera", "television", "keyboard", "guitar", "piano", "violin", "drum",
    "ball", "kite", "skateboard", "surfboard", "ski", "tent", "rope", "ladder", "hammer", "bucket", "flag",
    "candle", "vase", "painting", "statue", "fountain", "bridge", "tower", "lighthouse", "windmill", "tractor",
    "apple", "banana", "orange", "bread", "cake", "pizza", "sandwich", "flower", "tree", "leaf", "mushroom", "rock",
)
ANIMALS = (
    "dog", "puppy", "cat", "kitten", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "squirrel",
    "deer", "fox", "wolf", "bear", "lion", "tiger", "leopard", "elephant", "giraffe", "zebra", "monkey", "camel",
    "bird", "songbird", "sparrow", "robin", "crow", "parrot", "owl", "eagle", "hawk", "pigeon", "hummingbird",
    "woodpecker", "duck", "goose", "swan", "gull", "pelican", "heron", "flamingo", "penguin", "albatross",
    "fish", "shark", "dolphin", "whale", "seal", "turtle", "frog", "lizard", "snake", "crab", "butterfly",
    "bee", "spider", "insect",
)
BIRDS = ("bird", "songbird", "sparrow", "parrot", "owl", "eagle", "duck", "goose", "swan", "gull", "pelican", "heron",
         "woodpecker", "hummingbird", "penguin", "albatross")
PLACES = (
    "forest", "jungle", "bamboo forest", "meadow", "field", "farm", "garden", "park", "desert", "canyon", "mountain",
    "hill", "valley", "cliff", "cave", "glacier", "snowfield", "beach", "coast", "ocean", "sea", "lake", "river",
    "pond", "swamp", "marsh", "waterfall", "harbor", "island", "city street", "alley", "highway", "parking lot",
    "train station", "airport", "market", "shop", "restaurant", "kitchen", "living room", "bedroom", "bathroom",
    "office", "classroom", "library", "museum", "church", "stadium", "playground", "gym", "swimming pool",
    "factory", "warehouse", "construction site", "village", "suburb", "rooftop", "tunnel", "bridge", "laboratory",
    "hospital", "studio", "stage", "zoo", "aquarium",
)
BACKGROUNDS = (
    "on water", "on land", "on the sea", "on a lake", "on a river", "on a beach", "on sand", "on grass",
    "on snow", "on ice", "on rocks", "on a branch", "in a tree", "in the sky", "in the clouds", "in a forest",
    "in a bamboo forest", "in a field", "in a garden", "in a city", "in a room", "in a cage", "in the rain",
    "underwater", "in the desert", "in the mountains", "in a swamp", "near a waterfall", "in a harbor",
    "against a white background", "against a black background", "against a plain wall", "against a blue sky",
    "on a wooden table", "on a road", "on a fence", "on a rooftop", "in a field of flowers", "on a frozen lake",
)
COLOURS = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "gold",
    "silver", "beige", "turquoise", "navy", "maroon", "olive", "teal", "lavender", "cream", "dark", "bright",
    "pale", "colorful",
)
TEXTURES = (
    "wooden", "metallic", "glass", "plastic", "stone", "brick", "concrete", "marble", "fabric", "woolen", "leather",
    "furry", "feathered", "scaly", "smooth", "rough", "shiny", "matte", "striped", "spotted", "checkered", "dotted",
    "wrinkled", "cracked", "rusty", "wet", "sandy", "muddy", "icy", "grassy", "mossy", "woven", "knitted",
    "polished", "painted",
)
PEOPLE = (
    "man", "woman", "boy", "girl", "child", "baby", "teenager", "old man", "old woman", "young man", "young woman",
    "family", "couple", "crowd", "athlete", "runner", "swimmer", "cyclist", "surfer", "skier", "soldier",
    "police officer", "firefighter", "doctor", "nurse", "chef", "farmer", "fisherman", "student", "teacher",
    "musician", "dancer", "painter", "worker", "businessman", "businesswoman", "tourist", "bride", "groom", "clown",
)
PERSON_TRAITS = (
    "with blond hair", "with black hair", "with brown hair", "with red hair", "with gray hair", "with curly hair",
    "with straight hair", "with long hair", "with short hair", "with a bald head", "with a beard", "with a mustache",
    "wearing glasses", "wearing sunglasses", "wearing a hat", "wearing makeup", "wearing lipstick",
    "wearing earrings", "wearing a necklace", "wearing a tie", "wearing a suit", "wearing a dress", "wearing a uniform",
    "wearing a helmet", "with a smile", "with an open mouth", "with closed eyes", "with a serious face",
    "with pale skin", "with dark skin", "with freckles", "with rosy cheeks", "with bangs", "with a ponytail",
)
ACTIVITIES = (
    "running", "walking", "swimming", "flying", "sitting", "standing", "sleeping", "eating", "drinking", "jumping",
    "playing", "reading", "cooking", "dancing", "singing", "climbing", "fishing", "riding a bicycle", "driving",
    "smiling", "laughing", "talking on the phone", "taking a photo", "looking at the camera",
)
STYLES = (
    "a photo", "a close-up photo", "a blurry photo", "a black and white photo", "a sepia photo", "a dark photo",
    "a bright photo", "an overexposed photo", "a low resolution photo", "a grainy photo", "a cropped photo",
    "a pixelated photo", "a jpeg compressed photo", "a photo with a shallow depth of field", "a wide-angle photo",
    "an aerial photo", "a satellite image", "a drawing", "a pencil sketch", "a charcoal drawing",
    "a watercolor painting", "an oil painting", "a cartoon", "a comic strip", "an anime illustration",
    "a 3d rendering", "a video game screenshot",
    "a toy model", "a sculpture", "an origami model", "a tattoo", "an embroidery", "a mosaic", "a stained glass window",
    "a graffiti", "a logo", "an icon", "a diagram", "an infrared photo", "a thermal image", "an x-ray image",
    "a microscope image", "a vintage postcard", "a polaroid photo", "a film still", "a selfie", "a screenshot",
    "a museum photo", "a product photo", "a stock photo",
)
WEATHER = (
    "on a sunny day", "on a cloudy day", "on a rainy day", "on a foggy day", "on a snowy day", "on a windy day",
    "during a storm", "at sunrise", "at sunset", "at dusk", "at night", "at noon", "in winter", "in summer",
    "in autumn", "in spring", "under a rainbow", "under a full moon", "in harsh sunlight", "in dim light",
    "with strong shadows", "with backlighting", "under street lights", "in neon light",
)
TEXT_WORDS = (
    "stop", "open", "closed", "sale", "exit", "danger", "welcome", "hello", "love", "coffee", "hotel", "taxi",
    "police", "beach", "park", "school", "free", "new", "menu", "news",
)
TEXT_SURFACES = ("a sign", "a t-shirt", "a wall", "a poster", "a mug", "a banner", "a label", "a book cover")
SHAPES_AND_LAYOUT = (
    "a circle", "a square", "a triangle", "a spiral", "a grid pattern", "a symmetric pattern", "a repeating pattern",
    "a single object in the center", "many small objects", "an empty scene", "a cluttered scene", "a crowded scene",
    "a horizon line", "a vanishing point", "a reflection in water", "a shadow on the ground", "a silhouette",
    "a frame inside the image", "a white border", "a watermark", "a timestamp in the corner", "a split screen",
)
COUNTS = ("two", "three", "four", "five", "many", "a pair of", "a group of", "a flock of")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    """Plural of the last word of ``noun`` (only the forms our word lists need)."""
    irregular = {"mouse": "mice", "sheep": "sheep", "deer": "deer", "fish": "fish", "goose": "geese",
                 "man": "men", "woman": "women", "child": "children", "knife": "knives", "leaf": "leaves",
                 "wolf": "wolves", "person": "people"}
    head, _, last = noun.rpartition(" ")
    if last in irregular:
        out = irregular[last]
    elif last.endswith(("s", "x", "ch", "sh")):
        out = last + "es"
    elif last.endswith("y") and last[-2] not in "aeiou":
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}".strip()


def _a(noun: str) -> str:
    return f"{_article(noun)} {noun}"


def _sections() -> list[list[str]]:
    """Every section of the pool, in order."""
    every = lambda seq, k, off=0: seq[off::k]  # noqa: E731  deterministic thinning of long products
    objects, animals, people = list(OBJECTS), list(ANIMALS), list(PEOPLE)
    return [
        # single concepts
        [f"a photo of {_a(w)}." for w in objects + animals],
        [f"a photo of {_a(p)}." for p in people],
        [f"image of {_a(p)}." for p in PLACES],
        [f"a photo taken in {_a(p)}." for p in PLACES],
        [f"a photo taken {b}." for b in BACKGROUNDS],
        [f"{s} of {_a(p)}." for s, p in every(list(product(STYLES, PLACES)), 7)],
        [f"{s}." for s in STYLES],
        [f"a photo taken {w}." for w in WEATHER],
        [f"an image with {s}." for s in SHAPES_AND_LAYOUT],
        # colours and textures
        [f"a photo dominated by {c} colors." for c in COLOURS],
        [f"a {c} background." for c in COLOURS],
        [f"{_a(c)} {o}." for c, o in every(list(product(COLOURS, objects)), 4, 1)],
        [f"{_a(t)} texture." for t in TEXTURES],
        [f"a close-up of {_a(t)} surface." for t in TEXTURES],
        [f"{_a(t)} {o}." for t, o in every(list(product(TEXTURES, objects)), 6, 2)],
        # animals in places and backgrounds
        [f"a photo of {_a(a)} {b}." for a, b in every(list(product(animals, BACKGROUNDS)), 3) if a not in BIRDS],
        [f"a photo of {_a(a)} {b}." for a, b in product(BIRDS, BACKGROUNDS)],
        [f"{_a(c)} {a}." for c, a in every(list(product(COLOURS, animals)), 5, 3)],
        [f"a photo of {_a(a)} {act}." for a, act in every(list(product(animals, ACTIVITIES[:12])), 3)],
        [f"{n} {_plural(a)}." for n, a in every(list(product(COUNTS, animals)), 2)],
        # people
        [f"a photo of {_a(p)} {t}." for p, t in every(list(product(people, PERSON_TRAITS)), 3, 1)],
        [f"a photo of {_a(p)} {act}." for p, act in every(list(product(people, ACTIVITIES)), 4, 2)],
        [f"a portrait of {_a(p)} {w}." for p, w in every(list(product(people[:12], WEATHER)), 4)],
        [f"a photo of {_a(p)} in {_a(pl)}." for p, pl in every(list(product(people, PLACES)), 9, 4)],
        # text in images
        [f"an image with the word '{w}' written on it." for w in TEXT_WORDS],
        [f"{s} with the text '{w}'." for s, w in every(list(product(TEXT_SURFACES, TEXT_WORDS)), 2)],
        ["a photo with a caption.", "a handwritten note.", "a page of printed text.", "a license plate.",
         "a street sign.", "a photo with subtitles.", "a menu board.", "a price tag.", "a barcode.", "a qr code.",
         "numbers painted on a wall.", "a photo with a date stamp.", "letters of the alphabet.",
         "a map with labels.", "a chart with numbers."],
        # objects in places, weather
        [f"a photo of {_a(o)} in {_a(p)}." for o, p in every(list(product(objects, PLACES)), 11, 5)],
        [f"a photo of {_a(p)} {w}." for p, w in every(list(product(PLACES, WEATHER)), 5, 1)],
    ]


def generate_pool() -> list[str]:
    """The description pool: every section's lines, deduplicated ignoring case (first occurrence kept)."""
    first: dict[str, str] = {}
    for line in (line for section in _sections() for line in section):
        first.setdefault(line.lower(), line)
    return list(first.values())


def generate_vocab() -> list[str]:
    """The default B2T keyword vocabulary: the word lists' entries, deduplicated."""
    words = OBJECTS + ANIMALS + PLACES + COLOURS + TEXTURES + PEOPLE + ACTIVITIES + BACKGROUNDS + WEATHER
    return list(dict.fromkeys(_bare(w) for w in words))


def _bare(phrase: str) -> str:
    """'on a frozen lake' -> 'frozen lake': drop leading prepositions and articles."""
    skip = {"on", "in", "at", "near", "against", "under", "during", "with", "a", "an", "the"}
    words = phrase.split()
    while len(words) > 1 and words[0] in skip:
        words = words[1:]
    return " ".join(words)


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty, non-comment (``#``) lines of a UTF-8 text file, stripped and deduplicated; one clear line if the
    file is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise ClipDebiasError(f"{path}: {what} file not found (expected one entry per line)")
    try:
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ClipDebiasError(f"{path}: cannot read {what} file ({e})") from e
    out = list(dict.fromkeys(s for s in lines if s and not s.startswith("#")))
    if not out:
        raise ClipDebiasError(f"{path}: {what} file has no entries (expected one per line)")
    return out


# Models with a vocabulary of their own: model name -> (description pool, keyword vocabulary), used when no file is
# given. The bias-lab models' text towers know only the lab's captions (classes, backgrounds, objects), so the general
# pool's descriptions say nothing about their heads.
LAB_DATA = Path(__file__).resolve().parent.parent / "lab"
MODEL_POOLS: dict[str, tuple[Path, Path]] = {name: (LAB_DATA / "pool.txt", LAB_DATA / "vocab.txt")
                                             for name in ("clipdebias-lab", "clipdebias-lab2")}


def pool_label(path: Path) -> str:
    """How a shipped file is recorded: ``pool.txt`` (the general one), ``lab/pool.txt`` (a model's own)."""
    return path.name if path.parent == DATA_DIR else f"{path.parent.name}/{path.name}"


def default_pool(model: str | None = None) -> Path:
    """The pool used when none is given: ``model``'s own (``MODEL_POOLS``), else the general one."""
    return MODEL_POOLS[model][0] if model in MODEL_POOLS else POOL_FILE


def default_vocab(model: str | None = None) -> Path:
    """The vocabulary used when none is given: ``model``'s own (``MODEL_POOLS``), else the general one."""
    return MODEL_POOLS[model][1] if model in MODEL_POOLS else VOCAB_FILE


def load_pool(path: str | Path | None = None, model: str | None = None) -> list[str]:
    """Descriptions from ``path`` (one per line), or the shipped pool for ``model`` (``default_pool``)."""
    return read_lines(path if path is not None else default_pool(model), "description pool")


def load_vocab(path: str | Path | None = None, model: str | None = None) -> list[str]:
    """Keywords from ``path`` (one per line), or the shipped vocabulary for ``model`` (``default_vocab``)."""
    return read_lines(path if path is not None else default_vocab(model), "vocabulary")


def write_data(folder: Path = DATA_DIR) -> tuple[Path, Path]:
    """(Re)write ``pool.txt`` and ``vocab.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "# generated by toolchain/explain/pool.py; do not edit by hand\n"
    pool, vocab = folder / POOL_FILE.name, folder / VOCAB_FILE.name
    pool.write_text(header + "\n".join(generate_pool()) + "\n", encoding="utf-8")
    vocab.write_text(header + "\n".join(generate_vocab()) + "\n", encoding="utf-8")
    return pool, vocab


if __name__ == "__main__":
    for p in write_data():
        print(f"wrote {p}: {len(read_lines(p, p.stem))} lines")
