"""`{% contact_scores contact %}`: the scores panel of the contact profile, with the breakdown."""

from django import template

from leadflow.scoring.selectors import score_explain

register = template.Library()


@register.inclusion_tag("web/scoring/contact_scores.html")
def contact_scores(contact):
    from leadflow.predictive.selectors import contact_probability_explain

    return {"explain": score_explain(contact=contact, limit=50), "contact": contact,
            "predictive": contact_probability_explain(contact=contact)}


@register.filter
def signed(value) -> str:
    """12 -> "+12", -5 -> "−5", 2.5 -> "+2.5"."""
    if value is None:
        return ""
    number = round(float(value), 2)
    text = f"{abs(number):g}"
    return f"+{text}" if number > 0 else (f"−{text}" if number < 0 else "0")
