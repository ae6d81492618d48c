"""Totals with labels that are not ASCII."""


def add(a, b):
    return a + b


def report(a, b):
    label = "数据 😀"; total = add(a, b)
    return f"{label}: {total}"


GREETING = "héllo wörld ✓"
