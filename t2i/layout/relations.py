"""Relation triplets of a prompt, the inputs of LayoutLLM's relation module.

The original parses the prompt with SceneGraphParser (``sng_parser``, spaCy) and encodes each
``"subject relation object"`` (lemmatised heads) with the CLIP text encoder. ``scene_graph`` does that (the
package and its spaCy model are optional dependencies, imported only then); ``shapes`` reads the Shapes
grammar directly ("a small red circle to the left of a blue square", "The red circle is above the blue
square.") and keeps colour and shape ("red circle to the left of blue square"). Both return each triplet once,
in prompt order (the original's inference adds a literal ``"PAD"`` and every triplet twice: a bug, not kept).
"""
from __future__ import annotations

import re

from t2i.data.shapes import COUNT_WORDS, PALETTE, RELATION_WORDS, SHAPES

_OBJECT = (rf"(?:a|an|the|{'|'.join(COUNT_WORDS.values())})\s+(?:(?:small|large)\s+)?({'|'.join(PALETTE)})\s+"
           rf"({'|'.join(SHAPES)})s?")
_RELATION = re.compile(rf"{_OBJECT}\s+(?:is\s+)?({'|'.join(RELATION_WORDS.values())})\s+{_OBJECT}", re.IGNORECASE)


def shapes_relations(prompt: str) -> list[str]:
    """``"<colour> <shape> <relation> <colour> <shape>"`` for every relation the Shapes grammar states."""
    found = [f"{c1} {s1} {rel} {c2} {s2}".lower() for c1, s1, rel, c2, s2 in _RELATION.findall(prompt)]
    return list(dict.fromkeys(found))


def scene_graph_relations(prompt: str) -> list[str]:
    """``"<subject> <relation> <object>"`` from SceneGraphParser, as the original builds them."""
    try:
        import sng_parser
    except ImportError:
        raise ImportError("plan.relations scene_graph needs SceneGraphParser and a spaCy English model: "
                          "pip install SceneGraphParser spacy && python -m spacy download en_core_web_sm") from None
    graph = sng_parser.parse(prompt)
    entities = graph["entities"]
    found = [f"{entities[r['subject']]['lemma_head']} {r['relation']} {entities[r['object']]['lemma_head']}"
             for r in graph["relations"]]
    return list(dict.fromkeys(found))


RELATION_PARSERS = {"shapes": shapes_relations, "scene_graph": scene_graph_relations}
