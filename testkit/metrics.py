"""Reading a Prometheus text exposition, as a scraper would."""

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named `name` (a full sample name: `…_total`, `…_count`), with its labels."""
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    return sum(
        amount
        for found, amount in samples(text, name)
        if all(found.get(key) == wanted for key, wanted in labels.items())
    )


def label_values(text: str, name: str, label: str) -> set[str]:
    return {found[label] for found, _ in samples(text, name) if label in found}
