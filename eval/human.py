"""Human evaluation: blinded side-by-side sheets out, ratings in. Pure apart from the file
readers.

An evaluation's `human` section answers its conversations with the candidate and the baseline
and makes a sheet of items (`blind`): each item a conversation and two answers, A and B, the
order drawn per item from the system's randomness, no adapter named. The key (which side is the
candidate, and the judge's outcome on the pair) stays on the server. Raters score each answer
from 1 to 5 and may prefer one ("A", "B" or "tie"); the sheet's HTML page (`sheet_html`, one
self-contained file) writes their ratings as JSONL, one `{"item", "a", "b", "preference",
"rater"}` per line, which comes back as an upload and is imported into the job.

`score_human` gives, per side, the mean rating with its Student-t interval (`human_score`, the
checklist's "> 4.0 / 5"), the candidate's win rate from the preferences (`human_win_rate`: wins
plus half the ties), and how often the judge agrees with the raters' preferences
(`human_judge_agreement`), with Cohen's kappa (scikit-learn) in the report.
"""

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Literal

from eval.intervals import Mean
from eval.prompts import PromptSetError, jsonl_rows
from eval.rubric import Conversation
from eval.winrate import Outcome

HUMAN_DIR = "human"
"""The sheet, its key and the imported ratings, in the job's directory."""
SHEET_JSONL, SHEET_HTML, KEY_JSON, RATINGS_DIR = "sheet.jsonl", "sheet.html", "key.json", "ratings"
RATINGS = tuple(range(1, 6))
SCALE = (1.0, 5.0)
MAX_RATER_CHARS = 64
MAX_RATINGS = 100_000
Preference = Literal["A", "B", "tie"]
PREFERENCES: tuple[Preference, ...] = ("A", "B", "tie")


@dataclass(frozen=True)
class Item:
    """One blinded pair as raters see it."""

    id: str
    conversation: tuple[dict[str, str], ...]
    reference: str
    a: str
    b: str


@dataclass(frozen=True)
class KeyEntry:
    """What the sheet hides about an item."""

    candidate_first: bool
    """The candidate's answer is A."""
    judged: Outcome | None
    """The judge's outcome for the candidate (None: no verdict)."""


def blind(
    conversations: Sequence[Conversation],
    candidate: Sequence[str],
    baseline: Sequence[str],
    judged: Sequence[Outcome | None],
    draw: random.Random | None = None,
) -> tuple[list[Item], dict[str, KeyEntry]]:
    """The items of a sheet and their key: each item's order drawn by `draw` (the system's
    randomness unless a test gives its own: an order that a seed could reproduce would not be
    blind to whoever knows the seed)."""
    draw = draw or random.SystemRandom()
    items, key = [], {}
    for index, (conversation, mine, theirs, outcome) in enumerate(
        zip(conversations, candidate, baseline, judged, strict=True), start=1
    ):
        item_id = f"item-{index:03d}"
        first = draw.random() < 0.5
        a, b = (mine, theirs) if first else (theirs, mine)
        items.append(Item(item_id, conversation.messages, conversation.reference, a, b))
        key[item_id] = KeyEntry(first, outcome)
    return items, key


def key_json(key: dict[str, KeyEntry]) -> str:
    """The key as the server keeps it."""
    return json.dumps(
        {i: {"candidate_first": e.candidate_first, "judged": e.judged.name if e.judged else None}
         for i, e in key.items()}
    )  # fmt: skip


def read_key(path: Path) -> dict[str, KeyEntry]:
    """A key that `key_json` wrote."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    return {
        i: KeyEntry(e["candidate_first"], Outcome[e["judged"]] if e["judged"] else None)
        for i, e in entries.items()
    }


def sheet_jsonl(items: Sequence[Item]) -> str:
    """The items as JSONL: {"item", "conversation", "reference", "a", "b"} per line."""
    return "".join(
        json.dumps({"item": i.id, "conversation": list(i.conversation), "reference": i.reference,
                    "a": i.a, "b": i.b}, ensure_ascii=False) + "\n"
        for i in items
    )  # fmt: skip


_SHEET_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222}
.item{border:1px solid #ccc;padding:8px 12px;margin:1em 0}.turn{margin:4px 0}
.answers{display:flex;gap:12px}.answers>div{flex:1;border-top:1px solid #eee}
pre{white-space:pre-wrap;background:#f8f8f8;padding:6px;margin:4px 0}
"""
# Builds the ratings file from the form: no network, no external files; answers are text.
_SHEET_SCRIPT = """
function ratings(){const rater=document.getElementById('rater').value.trim();const lines=[];
for(const item of document.querySelectorAll('.item')){const id=item.dataset.item;
const pick=n=>{const c=item.querySelector('input[name="'+id+'-'+n+'"]:checked');
return c?c.value:''};
const a=pick('a'),b=pick('b'),p=pick('p');if(!a||!b)continue;
const row={item:id,a:Number(a),b:Number(b)};if(p)row.preference=p;if(rater)row.rater=rater;
lines.push(JSON.stringify(row));}
const blob=new Blob([lines.join('\\n')+'\\n'],{type:'application/x-ndjson'});
const link=document.createElement('a');link.href=URL.createObjectURL(blob);
link.download='ratings.jsonl';link.click();
document.getElementById('count').textContent=lines.length+' items rated';}
"""


def _choices(name: str, values: Sequence[str]) -> str:
    return " ".join(
        f'<label><input type="radio" name="{escape(name)}" value="{escape(v)}"> {escape(v)}</label>'
        for v in values
    )


def sheet_html(items: Sequence[Item], title: str) -> str:
    """A self-contained page: each item's conversation and answers A and B, a 1-5 score for
    each answer and a preference, and a button that saves the ratings as JSONL."""
    scores = [str(r) for r in RATINGS]
    blocks = []
    for item in items:
        turns = "".join(
            f'<div class="turn"><b>{escape(t["role"])}</b><pre>{escape(t["content"])}</pre></div>'
            for t in item.conversation
        )
        reference = (
            f"<p>Reference:</p><pre>{escape(item.reference)}</pre>" if item.reference else ""
        )
        answers = "".join(
            f"<div><p><b>Answer {side.upper()}</b></p><pre>{escape(text)}</pre>"
            f"<p>Score 1-5: {_choices(f'{item.id}-{side}', scores)}</p></div>"
            for side, text in (("a", item.a), ("b", item.b))
        )
        blocks.append(
            f'<div class="item" data-item="{escape(item.id)}"><h3>{escape(item.id)}</h3>{turns}'
            f'{reference}<div class="answers">{answers}</div>'
            f"<p>Better answer: {_choices(f'{item.id}-p', PREFERENCES)}</p></div>"
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_SHEET_STYLE}</style><script>{_SHEET_SCRIPT}</script></head><body>"
        f"<h1>{escape(title)}</h1><p>Score each answer from 1 (very poor) to 5 (excellent) on "
        "its own, then say which is better. Answers are in random order.</p>"
        f"{''.join(blocks)}<p>Rater: <input id='rater' maxlength='{MAX_RATER_CHARS}'> "
        "<button onclick='ratings()'>Save ratings.jsonl</button> <span id='count'></span></p>"
        "</body></html>"
    )


@dataclass(frozen=True)
class Rating:
    """One rater's scores of one item."""

    item: str
    a: int
    b: int
    preference: Preference | None
    rater: str


def _rating_of(row: Any, where: str, items: set[str] | None) -> Rating:
    if not isinstance(row, dict):
        raise PromptSetError(f"{where}: not a JSON object")
    if unknown := sorted(set(row) - {"item", "a", "b", "preference", "rater"}):
        raise PromptSetError(f"{where}: unknown fields {unknown[:5]}")
    item = row.get("item")
    if not isinstance(item, str) or (items is not None and item not in items):
        raise PromptSetError(f"{where} item: {str(item)[:40]!r} is not an item of this sheet")
    for side in ("a", "b"):
        if type(row.get(side)) is not int or row[side] not in RATINGS:
            raise PromptSetError(f"{where} {side}: {str(row.get(side))[:20]!r} is not 1 to 5")
    preference = row.get("preference")
    if preference is not None and preference not in PREFERENCES:
        raise PromptSetError(f"{where} preference: {str(preference)[:20]!r} is not A, B or tie")
    rater = row.get("rater", "")
    if not isinstance(rater, str) or len(rater) > MAX_RATER_CHARS:
        raise PromptSetError(f"{where} rater: a name of at most {MAX_RATER_CHARS} characters")
    return Rating(item, row["a"], row["b"], preference, rater)


def read_ratings(path: Path, items: set[str] | None = None) -> list[Rating]:
    """The ratings of a file, checked line by line (against the sheet's `items` when given).

    Raises:
        PromptSetError: naming the file, line and field of the first problem.
    """
    ratings = []
    for where, row in jsonl_rows(path):
        ratings.append(_rating_of(row, where, items))
        if len(ratings) > MAX_RATINGS:
            raise PromptSetError(f"{path.name}: more than {MAX_RATINGS} ratings")
    if not ratings:
        raise PromptSetError(f"{path.name}: no ratings")
    return ratings


@dataclass(frozen=True)
class HumanReport:
    """What the raters said of the candidate and the baseline."""

    candidate: Mean
    baseline: Mean
    win_rate: float | None
    """From the preferences; None when no rating gave one."""
    agreement: float | None
    """Share of preferences matching the judge's outcome; None when none can be compared."""
    kappa: float | None
    """Cohen's kappa of the same pairs; None where it is undefined (one label only)."""
    ratings: int
    raters: int

    def values(self) -> tuple[dict[str, float], dict[str, float]]:
        """The gate-readable values of the candidate and of the baseline."""
        own = {"human_score": self.candidate.value, "human_score_lower": self.candidate.lower}
        if self.win_rate is not None:
            own["human_win_rate"] = self.win_rate
        if self.agreement is not None:
            own["human_judge_agreement"] = self.agreement
        return own, {"human_score": self.baseline.value, "human_score_lower": self.baseline.lower}

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "candidate": vars(self.candidate), "baseline": vars(self.baseline),
            "win_rate": self.win_rate, "judge_agreement": self.agreement, "kappa": self.kappa,
            "ratings": self.ratings, "raters": self.raters,
        }  # fmt: skip


def _outcome(preference: Preference, candidate_first: bool) -> Outcome:
    if preference == "tie":
        return Outcome.TIE
    return Outcome.WIN if (preference == "A") == candidate_first else Outcome.LOSS


def score_human(ratings: Sequence[Rating], key: dict[str, KeyEntry]) -> HumanReport:
    """The raters' scores of each side, the candidate's win rate and the judge's agreement."""
    from sklearn.metrics import cohen_kappa_score  # type: ignore[import-untyped]

    mine, theirs, outcomes, pairs = [], [], [], []
    for rating in ratings:
        entry = key[rating.item]
        first, second = (rating.a, rating.b) if entry.candidate_first else (rating.b, rating.a)
        mine.append(first)
        theirs.append(second)
        if rating.preference is not None:
            outcome = _outcome(rating.preference, entry.candidate_first)
            outcomes.append(outcome.value)
            if entry.judged is not None:
                pairs.append((outcome.name, entry.judged.name))
    agreement = sum(h == j for h, j in pairs) / len(pairs) if pairs else None
    kappa = None
    if len({label for pair in pairs for label in pair}) > 1:
        humans, judge = zip(*pairs, strict=True)
        kappa = float(cohen_kappa_score(humans, judge))
    return HumanReport(
        candidate=Mean.of(mine, SCALE),
        baseline=Mean.of(theirs, SCALE),
        win_rate=sum(outcomes) / len(outcomes) if outcomes else None,
        agreement=agreement,
        kappa=kappa,
        ratings=len(ratings),
        raters=len({r.rater for r in ratings}),
    )
