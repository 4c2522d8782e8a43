"""The one table: each path, its reference, the ratio, latencies and the verdict."""

from dataclasses import dataclass


@dataclass
class Row:
    key: str
    path: str
    reference: str = ""
    value: str = ""
    ref_value: str = ""
    ratio: str = ""
    p50: str = ""
    p99: str = ""
    target: str = ""
    verdict: str = "INFO"
    note: str = ""


COLUMNS = (
    ("row", "key"),
    ("path", "path"),
    ("value", "value"),
    ("reference", "reference"),
    ("ref value", "ref_value"),
    ("ratio", "ratio"),
    ("p50 ms", "p50"),
    ("p99 ms", "p99"),
    ("target", "target"),
    ("result", "verdict"),
    ("note", "note"),
)


def rate(rps: float) -> str:
    return f"{rps:,.0f}/s"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def pair_ms(subject: float | None, reference: float | None) -> str:
    """`subject (reference)` latencies in one cell."""
    if reference is None:
        return ms(subject)
    return f"{ms(subject)} ({ms(reference)})"


def markdown(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(str(getattr(row, attr))) for _, attr in COLUMNS) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.verdict] = counts.get(row.verdict, 0) + 1
    return ", ".join(f"{count} {verdict}" for verdict, count in sorted(counts.items()))
